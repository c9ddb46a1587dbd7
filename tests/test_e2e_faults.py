"""Faults met by a real `dvc repro`: a training process SIGKILLed midway, Ctrl-C and SIGTERM in each
data/training stage, a download cut midway or serving a damaged or unexpected file, and an MLflow
tracking server that does not answer.

Each case runs the real pipeline in a tiny project repository (tests/project_repo.py) and checks what
a user would meet next: what is left on disk, what `dvc status` says, whether a rerun completes, and
how the MLflow run was ended.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from http_fixtures import HttpTestServer
from PIL import Image
from project_repo import ProjectRepo, copy_repo, make_project_repo
from servers import free_port, log_tail, signal_group, start_in_session, stopped_on_failure, wait_until

from anime_dcgan.paths import CHECKPOINT_ROOT, DOWNLOAD_CACHE
from anime_dcgan.training.checkpoint import CHECKPOINT_GLOB, load_checkpoint

pytestmark = pytest.mark.e2e

# Long enough to act while the stage works (one thread: about 100 steps/s here), short enough to rerun.
TRAINING = {"steps": 400, "checkpoint_every": 20, "log_every": 10, "sample_every": 100}
# Enough synthetic faces for the download (~15 s) and preprocess (~1 s) stages to be caught at work;
# two workers whatever the machine, so a many-core machine does not finish them before the signal.
INTERRUPTIBLE_DATA = {"synthetic_count": 2500, "workers": 2}
STAGE_TIMEOUT_S = 600
STOP_TIMEOUT_S = 30  # from the signal to the exit of every process; a stage stops in a few seconds
# names of the temporary files and folders the stages write before renaming (util/io.py, data/fetch.py)
TEMPORARY_NAME = re.compile(r"\.tmp-\d+$|\.partial$|\.old$|\.part$")
# where nothing a later stage reads lives: git and DVC internals, the caches that are meant to outlive
# an interruption (partial downloads, checkpoints), the MLflow store
NOT_READ_BY_STAGES = {".git", ".dvc", ".cache", "mlruns"}


# -- helpers ----------------------------------------------------------------------------------------

def start_dvc(repo: ProjectRepo, log_path: Path, *args: str) -> subprocess.Popen:
    """`dvc <args>` in the background, leading its own process group (as a terminal's foreground job)."""
    return start_in_session(["dvc", *args], repo.root, repo.env, log_path)


def stage_outputs(repo: ProjectRepo, stage: str) -> list[Path]:
    """The outs, metrics and plots files dvc.yaml declares for `stage`."""
    declared = yaml.safe_load((repo.root / "dvc.yaml").read_text())["stages"][stage]
    outputs = [*declared.get("outs", []), *declared.get("metrics", []), *declared.get("plots", [])]
    # an entry is a path, or {path: options} (cache: false)
    return [repo.root / (output if isinstance(output, str) else next(iter(output))) for output in outputs]


def files_in(path: Path) -> list[Path]:
    if path.is_dir():
        return [child for child in path.rglob("*") if child.is_file()]
    return [path] if path.exists() else []


def entries(folder: Path, pattern: str = "*") -> list[Path]:
    """The entries of `folder` matching `pattern`; none while the folder does not exist (DVC removes a
    stage's outputs just before running it, so a folder may vanish under our feet)."""
    try:
        return list(folder.glob(pattern))
    except FileNotFoundError:
        return []


def non_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def temporaries(repo: ProjectRepo) -> list[Path]:
    """Temporary files or folders anywhere a stage could read them."""
    found = []
    for path in repo.root.iterdir():
        if path.name in NOT_READ_BY_STAGES:
            continue
        candidates = [path, *path.rglob("*")] if path.is_dir() else [path]
        found += [candidate for candidate in candidates if TEMPORARY_NAME.search(candidate.name)]
    return found


def dvc_status(repo: ProjectRepo, *stages: str) -> dict:
    """{stage: what changed} for the stages that are not up to date (all stages when none are named)."""
    return json.loads(repo.dvc("status", "--json", *stages).stdout)


def find_stage_process(dvc_process: subprocess.Popen, script: str) -> psutil.Process:
    """The `python stages/<name>.py` that DVC started (not the shell around it)."""
    for process in psutil.Process(dvc_process.pid).children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if len(command) >= 2 and Path(command[0]).name.startswith("python") and command[1] == script:
            return process
    raise AssertionError(f"no `python {script}` under dvc (pid {dvc_process.pid})")


def checkpoint_files(repo: ProjectRepo) -> list[Path]:
    return entries(repo.root / CHECKPOINT_ROOT, f"*/{CHECKPOINT_GLOB}")


def read_checkpoint(repo: ProjectRepo) -> dict:
    (folder,) = {path.parent for path in checkpoint_files(repo)}
    return load_checkpoint(folder)


def state_dicts(repo: ProjectRepo) -> dict[str, dict[str, torch.Tensor]]:
    return {name: torch.load(repo.root / "models" / name, weights_only=True)["state_dict"]
            for name in ("generator.pt", "generator_ema.pt", "discriminator.pt")}


def runs_of(repo: ProjectRepo) -> list:
    client = repo.mlflow()
    return client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> ProjectRepo:
    """A tiny project with TRAINING's settings whose download and preprocess stages ran: copies of
    it start at the train stage."""
    repo = make_project_repo(tmp_path_factory.mktemp("faults") / "template", **TRAINING)
    repo.dvc("repro", "preprocess")
    return repo


def copy_of(template: ProjectRepo, root: Path) -> ProjectRepo:
    return copy_repo(template, root)


# -- a: SIGKILL during training ---------------------------------------------------------------------

def test_a_sigkilled_training_resumes_and_ends_exactly_like_an_uninterrupted_run(preprocessed: ProjectRepo,
                                                                                  tmp_path: Path) -> None:
    killed, uninterrupted = copy_of(preprocessed, tmp_path / "killed"), copy_of(preprocessed, tmp_path / "whole")
    steps, every = TRAINING["steps"], TRAINING["checkpoint_every"]
    # the reference run trains alongside (one thread each: the two cores are shared, not oversubscribed)
    reference_log, attempt_log = tmp_path / "uninterrupted.log", tmp_path / "killed-attempt.log"
    with stopped_on_failure(start_dvc(uninterrupted, reference_log, "repro", "train")) as reference, \
            stopped_on_failure(start_dvc(killed, attempt_log, "repro", "train")) as attempt:
        wait_until(lambda: bool(checkpoint_files(killed)), STAGE_TIMEOUT_S, "the first checkpoint", attempt,
                   attempt_log)
        find_stage_process(attempt, "stages/train.py").kill()  # SIGKILL: no handler runs, nothing is cleaned up
        assert attempt.wait(timeout=60) != 0
        shown = [int(count) for count in re.findall(rf"\b(\d+)/{steps} \[", attempt_log.read_text(errors="replace"))]
        assert shown and max(shown) < steps, f"the training was not killed midway:\n{log_tail(attempt_log)}"
        saved = read_checkpoint(killed)
        killed_run_id = saved["mlflow_run_id"]
        assert killed.mlflow().get_run(killed_run_id).info.status == "RUNNING"  # nobody could end it
        assert not (killed.root / "models").exists()

        killed.dvc("repro", "train")
        assert reference.wait(timeout=STAGE_TIMEOUT_S) == 0, log_tail(reference_log)

    summary = killed.json("metrics/train.json")
    resumed = summary["resumed_from_step"]
    assert resumed == saved["step"] > 0
    assert resumed % every == 0
    assert max(shown) - resumed <= every, "more than checkpoint_every steps were lost"
    assert not checkpoint_files(killed), "a finished run removes its checkpoint"

    client = killed.mlflow()
    assert client.get_run(killed_run_id).info.status == "KILLED"
    resumed_run = client.get_run(summary["mlflow_run_id"])
    assert resumed_run.info.status == "FINISHED"
    assert resumed_run.data.tags["anime_dcgan.resumed_from_run"] == killed_run_id
    assert resumed_run.data.tags["anime_dcgan.resumed_from_step"] == str(resumed)
    # the resumed run carries the whole loss curve, also the part trained before the kill
    history = client.get_metric_history(resumed_run.info.run_id, "loss_g")
    assert [point.step for point in history] == list(range(TRAINING["log_every"], steps + 1, TRAINING["log_every"]))

    assert uninterrupted.json("metrics/train.json")["resumed_from_step"] == 0
    # CPU fp32: resuming restores every weight, optimiser moment and RNG state, so nothing differs
    ours, theirs = state_dicts(killed), state_dicts(uninterrupted)
    for name in ours:
        assert ours[name].keys() == theirs[name].keys()
        for key in ours[name]:
            assert torch.equal(ours[name][key], theirs[name][key]), f"{name}: {key} differs"
    assert (killed.root / "metrics/losses.csv").read_text() == (uninterrupted.root / "metrics/losses.csv").read_text()
    grids = sorted(path.name for path in (uninterrupted.root / "progress").iterdir())
    assert sorted(path.name for path in (killed.root / "progress").iterdir()) == grids
    for name in grids:
        assert (killed.root / "progress" / name).read_bytes() == (uninterrupted.root / "progress" / name).read_bytes()


# -- b: Ctrl-C and SIGTERM in each stage ------------------------------------------------------------

def download_in_progress(repo: ProjectRepo) -> bool:
    return bool(entries(repo.root / "data/.raw.partial/images"))  # data/fetch.py fills data/raw here, then renames


def preprocess_in_progress(repo: ProjectRepo) -> bool:
    # rows reach the manifest (io.atomic_path's temporary) once the decoding workers run: a signal sent
    # earlier, while the pool forks them, can be lost in CPython's at-fork hooks
    return any(non_empty(path) for path in entries(repo.root / "data/processed", ".manifest.csv.tmp-*"))


def training_in_progress(repo: ProjectRepo) -> bool:
    return bool(checkpoint_files(repo))


IN_PROGRESS = {"download": download_in_progress, "preprocess": preprocess_in_progress, "train": training_in_progress}
UPSTREAM = {"download": set(), "preprocess": {"download"}, "train": {"download", "preprocess"}}


def interrupt_stage(repo: ProjectRepo, stage: str, signum: int, log_path: Path, times: int = 1) -> None:
    """`dvc repro <stage>`, and `signum` to its whole process group once the stage is at work (`times`
    signals 20 ms apart, as from a user who presses Ctrl-C again); every process must then exit."""
    with stopped_on_failure(start_dvc(repo, log_path, "repro", stage)) as process:
        wait_until(lambda: IN_PROGRESS[stage](repo), STAGE_TIMEOUT_S, f"the {stage} stage to be at work", process,
                   log_path)
        group = signal_group(process, signum)
        for _ in range(times - 1):
            time.sleep(0.02)
            os.killpg(process.pid, signum)
        # the stage's processes first; dvc itself is waited for through Popen, which must reap it
        _, alive = psutil.wait_procs([member for member in group if member.pid != process.pid],
                                     timeout=STOP_TIMEOUT_S)
        try:
            process.wait(timeout=5 if alive else STOP_TIMEOUT_S)  # dvc waits for a hung stage forever
        except subprocess.TimeoutExpired:
            alive.append(psutil.Process(process.pid))
        assert not alive, (f"{len(alive)} processes still running {STOP_TIMEOUT_S} s after {times} "
                           f"{signal.Signals(signum).name}: pids {[member.pid for member in alive]}\n"
                           f"{log_tail(log_path)}")
    assert process.returncode != 0, log_tail(log_path)
    reason = "interrupted" if signum == signal.SIGINT else "received signal SIGTERM"
    assert f"{stage}: {reason}; stopped, no partial output was left behind" in log_path.read_text(errors="replace"), \
        log_tail(log_path)


def assert_nothing_half_written(repo: ProjectRepo, stage: str) -> None:
    for output in stage_outputs(repo, stage):
        assert not files_in(output), f"{stage} left {files_in(output)[:3]} after an interruption"
    assert not temporaries(repo), f"{stage} left temporaries: {temporaries(repo)}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_stage_leaves_no_partial_output_and_reruns(signum: int, tmp_path: Path) -> None:
    repo = make_project_repo(tmp_path / "repo", data=INTERRUPTIBLE_DATA, **TRAINING)
    for stage in ("download", "preprocess", "train"):
        log_path = tmp_path / f"{stage}.log"
        interrupt_stage(repo, stage, signum, log_path)

        assert_nothing_half_written(repo, stage)
        changed = dvc_status(repo)
        assert stage in changed, f"dvc status does not show {stage} as changed: {changed}"
        assert not UPSTREAM[stage] & changed.keys(), f"interrupting {stage} changed its inputs: {changed}"
        if stage == "train":
            (run,) = runs_of(repo)
            assert run.info.status == "KILLED"

        repo.dvc("repro", stage)
        assert dvc_status(repo, stage) == {}
        assert all(files_in(output) for output in stage_outputs(repo, stage))

    summary = repo.json("metrics/train.json")
    assert summary["resumed_from_step"] > 0  # the interrupted run's checkpoint was kept and resumed
    assert repo.mlflow().get_run(summary["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize("stage", ["download", "train"])
def test_ctrl_c_pressed_twice_still_stops_the_stage_cleanly(stage: str, preprocessed: ProjectRepo,
                                                           tmp_path: Path) -> None:
    if stage == "download":
        repo = make_project_repo(tmp_path / "repo", data=INTERRUPTIBLE_DATA)
    else:
        repo = copy_of(preprocessed, tmp_path / "repo")

    interrupt_stage(repo, stage, signal.SIGINT, tmp_path / f"{stage}.log", times=2)

    assert_nothing_half_written(repo, stage)


# -- c: downloads cut midway, damaged or unexpected -------------------------------------------------

def faces_zip(count: int = 12, size: int = 96) -> tuple[bytes, dict[str, bytes]]:
    """A stored (uncompressed) zip of `count` noise PNGs: about 330 kB, several download chunks."""
    rng = np.random.default_rng(0)
    members = {}
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        members[f"faces/{index:03d}.png"] = buffer.getvalue()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zip_file:
        for name, content in members.items():
            zip_file.writestr(name, content)
    return archive.getvalue(), members


def repo_downloading(tmp_path: Path, url: str, sha256: str | None = None) -> ProjectRepo:
    return make_project_repo(tmp_path / "repo", data={"source": url, "sha256": sha256})


def assert_no_raw_data(repo: ProjectRepo) -> None:
    assert not (repo.root / "data/raw").exists()
    assert not temporaries(repo), temporaries(repo)


def test_a_download_cut_midway_resumes_with_a_range_request(http_server: HttpTestServer, tmp_path: Path) -> None:
    archive, members = faces_zip()
    (http_server.root / "faces.zip").write_bytes(archive)
    cut_at = len(archive) // 2
    http_server.cut_after("/faces.zip", cut_at)
    repo = repo_downloading(tmp_path, http_server.url("faces.zip"), hashlib.sha256(archive).hexdigest())

    repo.dvc("repro", "download")

    gets = [request for request in http_server.requests_for("/faces.zip") if request.method == "GET"]
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    resumed_from = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= cut_at  # whole chunks written before the cut are kept, not fetched again
    raw_images = repo.root / "data/raw/images"
    assert {path.relative_to(raw_images).as_posix(): path.read_bytes()
            for path in raw_images.rglob("*") if path.is_file()} == members
    assert dvc_status(repo, "download") == {}


def test_a_corrupt_archive_fails_naming_the_file_and_what_to_do(http_server: HttpTestServer, tmp_path: Path) -> None:
    archive, _ = faces_zip()
    (http_server.root / "faces.zip").write_bytes(archive[: len(archive) // 2])  # what a cut proxy serves
    repo = repo_downloading(tmp_path, http_server.url("faces.zip"))

    result = repo.dvc("repro", "download", check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    message = next(line for line in output.splitlines() if "faces.zip" in line and "not a readable" in line)
    assert "corrupt or truncated" in message and "run again" in message
    cached = Path(re.search(r"(/\S+-faces\.zip):", message).group(1))
    assert cached.is_relative_to(repo.root / DOWNLOAD_CACHE) and not cached.exists(), "the bad copy is deleted"
    assert_no_raw_data(repo)


def test_a_wrong_checksum_fails_naming_the_file_and_what_to_do(http_server: HttpTestServer, tmp_path: Path) -> None:
    archive, _ = faces_zip()
    (http_server.root / "faces.zip").write_bytes(archive)
    expected = hashlib.sha256(b"another file").hexdigest()
    repo = repo_downloading(tmp_path, http_server.url("faces.zip"), expected)

    result = repo.dvc("repro", "download", check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    message = next(line for line in output.splitlines() if "checksum mismatch" in line)
    assert http_server.url("faces.zip") in message
    assert expected in message and hashlib.sha256(archive).hexdigest() in message
    assert "data.sha256" in message
    assert not [path for path in (repo.root / DOWNLOAD_CACHE).iterdir() if not path.name.endswith(".lock")], \
        "the file that failed its checksum must not stay in the download cache"
    assert_no_raw_data(repo)


# -- d: an MLflow tracking server that does not answer ----------------------------------------------

@pytest.fixture(params=["refused", "silent"])
def dead_tracking_uri(request: pytest.FixtureRequest) -> Iterator[str]:
    """refused: nothing listens on the port. silent: a socket accepts connections but never answers
    (a hung server, or a firewall that holds the connection)."""
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}"
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_an_unreachable_tracking_server_stops_training_at_once(preprocessed: ProjectRepo, dead_tracking_uri: str,
                                                               tmp_path: Path) -> None:
    repo = copy_of(preprocessed, tmp_path / "repo")

    started = time.monotonic()
    result = repo.dvc("repro", "train", check=False, env={"MLFLOW_TRACKING_URI": dead_tracking_uri})
    seconds = time.monotonic() - started

    assert result.returncode != 0
    assert seconds < 30, f"took {seconds:.0f} s to give up"
    assert "Traceback" not in result.stderr
    message = next(line for line in result.stderr.splitlines() if dead_tracking_uri in line)
    assert "MLFLOW_TRACKING_URI" in message and "does not answer" in message
    assert "Start the server, or unset MLFLOW_TRACKING_URI" in result.stderr
    assert not (repo.root / "models").exists()
    assert not (repo.root / "mlflow.db").exists(), "no run may be logged elsewhere instead"
    assert not (repo.root / CHECKPOINT_ROOT).exists()
