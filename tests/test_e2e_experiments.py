"""End-to-end tests of the experiment workflows, with the real git, dvc and a real sqlite MLflow store,
each command typed exactly as a user types it: `dvc exp run -S lr=0.0002`, the diffs against HEAD,
DVC's run cache, the queue with parallel workers, and bad parameters (refused by DVC, or stopped by
the stages before any work).

Full pipeline runs are slow (about a minute each on 2 CPU cores), so one repository lives through a
whole history once (`history` below) and three tests each check one workflow of it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from project_repo import PROJECT, ProjectRepo, committed_params_text, copy_repo
from servers import free_port

from anime_dcgan.tracking import flatten

UPSTREAM_STAGES = {"download", "preprocess", "fid_reference", "attribute_classifier"}
TRAIN_AND_AFTER = {"train", "generate", "evaluate"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUEUE_TIMEOUT_S = 600
QUEUE_POLL_S = 5
MARKER_KEY = "e2e_code_marker"
# appended to the second queued experiment's src/anime_dcgan/training/loop.py: wraps the public train() so
# that its summary (metrics/train.json) carries a marker that only this version of the code writes
MARKER_CODE = f'''

_train_without_marker = train


def train(params, images_path, outputs, *args, **kwargs):
    import json

    summary = {{**_train_without_marker(params, images_path, outputs, *args, **kwargs), "{MARKER_KEY}": "second"}}
    outputs.summary_json.write_text(json.dumps(summary))
    return summary
'''


# --- reading what the tools print and record ------------------------------------------------------

def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def stages_unchanged(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))


def stages_restored_from_run_cache(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' is cached - skipping run, checking out outputs", output))


def name_in(pattern: str, output: str) -> str | None:
    match = re.search(pattern, output)
    return match.group(1) if match else None


def experiments(repo: ProjectRepo) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json`: every experiment's row (params, metrics) by experiment name."""
    found = {}
    for baseline in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def row_params(row: dict[str, Any]) -> dict[str, Any]:
    return row["params"]["params.yaml"]["data"]


def row_metrics(row: dict[str, Any], path: str) -> dict[str, Any]:
    return row["metrics"][path]["data"]


def mlflow_runs(repo: ProjectRepo) -> dict[str, Any]:
    """Every run of the repository's MLflow store, by run id (none while the store does not exist:
    opening it would create it)."""
    if not (repo.root / "mlflow.db").exists():
        return {}
    client = repo.mlflow()
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    return {run.info.run_id: run for run in client.search_runs(experiment_ids)}


def queue_statuses(repo: ProjectRepo, names: list[str]) -> dict[str, str]:
    """Each named task's status in `dvc queue status` (Queued, Running, Success, Failed...)."""
    statuses = {}
    for line in repo.dvc("queue", "status").stdout.splitlines():
        words = line.split()
        if len(words) >= 4 and words[1] in names:
            statuses[words[1]] = words[-1]
    return statuses


def wait_for_queue(repo: ProjectRepo, names: list[str]) -> dict[str, str]:
    """Poll `dvc queue status` until every named task ended, or QUEUE_TIMEOUT_S passed."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        statuses = queue_statuses(repo, names)
        if all(statuses.get(name) in ("Success", "Failed") for name in names) or time.monotonic() > deadline:
            return statuses
        time.sleep(QUEUE_POLL_S)


def readme_parameter_table() -> dict[str, str]:
    """README.md's parameter table: {key: default as written}, from rows like "| `lr` | 0.00015 | ... |"."""
    text = (PROJECT / "README.md").read_text()
    section = re.search(r"^## Parameters\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Parameters' section"
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", section.group(1), re.MULTILINE)
    assert rows, "README.md's '## Parameters' section has no table rows like '| `lr` | 0.00015 | ... |'"
    return dict(rows)


def user_files(root: Path) -> list[Path]:
    """Files and folders of a repository outside git's and DVC's own and Python's bytecode caches."""
    return [path.relative_to(root) for path in root.rglob("*")
            if not {".git", ".dvc", "__pycache__"} & set(path.relative_to(root).parts)]


def png_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG file"
    return data


# --- one repository's history: a queue, an experiment, another one, then the first one again --------

@dataclass
class WorkspaceExperiment:
    """One `dvc exp run` typed in the workspace, and what it left there and in the MLflow store."""
    result: subprocess.CompletedProcess
    name: str | None
    train_summary: dict[str, Any] | None   # metrics/train.json right after it
    evaluation: dict[str, Any] | None      # metrics/eval.json right after it
    runs_before: set[str]
    runs_after: set[str]

    @property
    def output(self) -> str:
        return output_of(self.result)


@dataclass
class ExperimentHistory:
    repo: ProjectRepo
    lr_committed: float
    queued: dict[str, float]             # experiment name -> lr, in queueing order
    status_after_queueing: str           # `git status --porcelain` once the code was restored
    queue_statuses: dict[str, str]
    queue_logs: str                      # `dvc queue logs` of the tasks that did not succeed
    temporary_workspaces_left: list[Path]
    first: WorkspaceExperiment           # -S lr=0.0002
    applied: subprocess.CompletedProcess  # `dvc exp apply` of the queued lr=0.0001 experiment
    repeated: WorkspaceExperiment        # -S lr=0.0002 again


def run_workspace_experiment(repo: ProjectRepo, override: str) -> WorkspaceExperiment:
    runs_before = set(mlflow_runs(repo))
    result = repo.run("dvc", "exp", "run", "-S", override, check=False)
    done = result.returncode == 0
    return WorkspaceExperiment(
        result, name_in(r"Reproducing experiment '([^']+)'", output_of(result)),
        repo.json("metrics/train.json") if done else None, repo.json("metrics/eval.json") if done else None,
        runs_before, set(mlflow_runs(repo)))


def dash_s(overrides: list[str]) -> list[str]:
    """["lr=0.1", "seed=1"] -> ["-S", "lr=0.1", "-S", "seed=1"]"""
    return [argument for override in overrides for argument in ("-S", override)]


def queue_experiment(repo: ProjectRepo, *overrides: str) -> str:
    output = output_of(repo.run("dvc", "exp", "run", "--queue", *dash_s(list(overrides))))
    name = name_in(r"Queued experiment '([^']+)' for future execution", output)
    assert name, f"dvc did not queue the experiment:\n{output}"
    return name


def queue_two_code_versions(repo: ProjectRepo) -> dict[str, float]:
    """Queue lr=0.0001 with the committed code, then lr=0.0003 with a training/loop.py that marks its
    summary, then restore the committed code."""
    train_module = repo.root / "src/anime_dcgan/training/loop.py"
    committed_code = train_module.read_text()
    first = queue_experiment(repo, "lr=0.0001")
    train_module.write_text(committed_code + MARKER_CODE)
    try:
        second = queue_experiment(repo, "lr=0.0003")
    finally:
        train_module.write_text(committed_code)
    return {first: 0.0001, second: 0.0003}


@pytest.fixture(scope="module")
def history(_reproduced_template: ProjectRepo, tmp_path_factory: pytest.TempPathFactory) -> ExperimentHistory:
    """A reproduced repository through: two experiments queued with different code and run by two
    workers into an empty MLflow store; `dvc exp run -S lr=0.0002`; `dvc exp apply` of the queued
    lr=0.0001 experiment; `dvc exp run -S lr=0.0002` again. Records what each step did; the tests
    judge it."""
    repo = copy_repo(_reproduced_template, tmp_path_factory.mktemp("experiments") / "repo")
    lr_committed = repo.params()["lr"]

    queued = queue_two_code_versions(repo)
    status_after_queueing = repo.git("status", "--porcelain").stdout
    try:
        repo.dvc("queue", "start", "-j", "2")
        statuses = wait_for_queue(repo, list(queued))
    finally:
        repo.dvc("queue", "stop", "--kill", check=False)  # no worker outlives the test
    queue_logs = "\n".join(f"--- dvc queue logs {name}\n" + output_of(repo.dvc("queue", "logs", name, check=False))
                           for name in queued if statuses.get(name) != "Success")
    temporary_workspaces_left = list((repo.root / ".dvc/tmp/exps").glob("tmp*"))

    first = run_workspace_experiment(repo, "lr=0.0002")
    committed_code_experiment = next(name for name, lr in queued.items() if lr == 0.0001)
    applied = repo.run("dvc", "exp", "apply", committed_code_experiment, check=False)
    repeated = run_workspace_experiment(repo, "lr=0.0002")
    return ExperimentHistory(repo, lr_committed, queued, status_after_queueing, statuses, queue_logs,
                             temporary_workspaces_left, first, applied, repeated)


# --- the tests ------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_exp_run_set_param_reruns_training_and_records_the_experiment(history: ExperimentHistory, tmp_path: Path):
    repo, first = history.repo, history.first
    assert set(yaml.safe_load((repo.root / "dvc.yaml").read_text())["stages"]) == UPSTREAM_STAGES | TRAIN_AND_AFTER
    assert first.result.returncode == 0, first.output[-4000:]
    assert stages_run(first.output) == TRAIN_AND_AFTER, first.output[-3000:]
    assert stages_unchanged(first.output) == UPSTREAM_STAGES, first.output[-3000:]

    # its row in `dvc exp show`: lr, the metrics files the stages wrote, the MLflow run id
    row = experiments(repo)[first.name]
    assert row_params(row)["lr"] == 0.0002
    assert row_metrics(row, "metrics/train.json") == first.train_summary
    assert row_metrics(row, "metrics/eval.json") == first.evaluation
    run_id = first.train_summary["mlflow_run_id"]
    assert first.evaluation["mlflow_run_id"] == run_id  # generate and evaluate logged into the training run
    assert first.runs_after - first.runs_before == {run_id}
    run = repo.mlflow().get_run(run_id)
    # lr moves both networks: the discriminator at lr, the generator at lr x lr_g_scale
    assert (run.data.params["lr"], run.data.params["lr_discriminator"]) == ("0.0002", "0.0002")
    assert float(run.data.params["lr_generator"]) == 0.0002 * float(run.data.params["lr_g_scale"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == first.name

    # what changed and what it did, between HEAD and the experiment
    params_diff = json.loads(repo.dvc("params", "diff", "HEAD", first.name, "--json").stdout)
    assert set(params_diff["params.yaml"]) == {"lr"}, params_diff
    assert params_diff["params.yaml"]["lr"]["old"] == history.lr_committed
    assert params_diff["params.yaml"]["lr"]["new"] == 0.0002
    metrics_diff = json.loads(repo.dvc("metrics", "diff", "HEAD", first.name, "--json").stdout)
    assert metrics_diff["metrics/train.json"]["mlflow_run_id"]["new"] == run_id
    assert metrics_diff["metrics/train.json"]["final_loss_g"]["new"] == first.train_summary["final_loss_g"]
    assert metrics_diff["metrics/eval.json"]["mlflow_run_id"]["new"] == run_id
    plots = tmp_path / "plots"
    repo.dvc("plots", "diff", "HEAD", first.name, "-o", str(plots))
    html = (plots / "index.html").read_text()
    assert re.search(r'id\s*=\s*"losses"', html), "no loss plot in dvc plots diff's HTML"
    assert re.search(r'id\s*=\s*"fid_during_training"', html), "no FID-by-step plot in dvc plots diff's HTML"
    for revision in ("HEAD", first.name):
        assert f'"rev": "{revision}"' in html, f"the loss plot has no curve of {revision}"
    grids = [source for source in re.findall(r'<img src="([^"]+)"', html) if "samples_grid" in source]
    assert len(grids) == 2, grids
    assert any("HEAD" in grid for grid in grids) and any(first.name in grid for grid in grids), grids
    assert png_bytes(plots / grids[0]) != png_bytes(plots / grids[1]), "both sample grids are the same picture"


@pytest.mark.e2e
def test_repeated_experiment_is_restored_from_run_cache_and_names_the_run_that_made_it(history: ExperimentHistory):
    repo, first, repeated = history.repo, history.first, history.repeated
    assert first.result.returncode == 0, first.output[-4000:]
    assert history.applied.returncode == 0, output_of(history.applied)
    assert repeated.result.returncode == 0, repeated.output[-4000:]
    assert stages_restored_from_run_cache(repeated.output) == TRAIN_AND_AFTER, (
        "dvc exp run -S lr=0.0002, after another experiment was applied to the workspace, did not restore "
        f"train/generate/evaluate from DVC's run cache; it ran {sorted(stages_run(repeated.output))}:\n"
        f"{repeated.output[-3000:]}")
    assert not stages_run(repeated.output)

    # nothing ran, so nothing new in MLflow: the restored files name the run that produced them
    run_id = first.train_summary["mlflow_run_id"]
    assert repeated.runs_after == repeated.runs_before, "the restored experiment created MLflow runs"
    assert repeated.train_summary["mlflow_run_id"] == run_id
    assert row_metrics(experiments(repo)[repeated.name], "metrics/train.json")["mlflow_run_id"] == run_id
    run = repo.mlflow().get_run(run_id)
    assert run.info.status == "FINISHED"
    current_params = {key: str(value) for key, value in flatten(repo.params()).items()}
    assert {key: run.data.params.get(key) for key in current_params} == current_params
    assert repeated.evaluation["mlflow_run_id"] == run_id
    # the ids, and the set sizes (tags of the run, not metrics), are not among the run's metrics
    not_scores = {"mlflow_run_id", "mlflow_model_id", "fid_samples", "reference_images"}
    scores = {key: value for key, value in repeated.evaluation.items() if key not in not_scores}
    assert {f"evaluate.{key}" for key in ("fid_samples", "reference_images")} <= set(run.data.tags)
    assert {key: run.data.metrics.get(key) for key in scores} == pytest.approx(scores, nan_ok=True)


@pytest.mark.e2e
def test_queued_experiments_run_in_parallel_with_their_own_code_into_one_store(history: ExperimentHistory,
                                                                              tmp_path: Path):
    repo = history.repo
    assert history.status_after_queueing == "", "queueing left the workspace changed"
    assert history.queue_statuses == dict.fromkeys(history.queued, "Success"), \
        f"{history.queue_statuses}\n{history.queue_logs}"
    assert history.temporary_workspaces_left == [], "the queue's temporary workspaces were not removed"

    # each ran the code it was queued with
    rows = experiments(repo)
    summaries = {name: row_metrics(rows[name], "metrics/train.json") for name in history.queued}
    for name, lr in history.queued.items():
        assert row_params(rows[name])["lr"] == lr
        if lr == 0.0001:
            assert MARKER_KEY not in summaries[name], "the first experiment ran code changed after it was queued"
        else:
            assert summaries[name].get(MARKER_KEY) == "second", "the second experiment did not run its own code"

    # both in the main repository's store (through DVC_ROOT), finished (no sqlite schema race),
    # their artifacts readable now that the temporary workspaces are gone
    assert [path for path in repo.root.rglob("mlflow.db") if path != repo.root / "mlflow.db"] == []
    client = repo.mlflow()
    steps, sample_every = repo.params()["steps"], repo.params()["sample_every"]
    for name, lr in history.queued.items():
        run = client.get_run(summaries[name]["mlflow_run_id"])
        assert run.info.status == "FINISHED", f"{name}: run {run.info.run_id} is {run.info.status}"
        assert run.info.run_name == name
        assert run.data.params["lr"] == str(lr)
        assert run.info.artifact_uri.startswith((repo.root / "mlruns").as_uri()), run.info.artifact_uri
        artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / name)))
        assert {"models", "images", "samples", "report"} <= {path.name for path in artifacts.iterdir()}
        assert (artifacts / "models/generator_ema.pt").stat().st_size > 0
        progress_grids = sorted((artifacts / "images").glob("progress*.png"))
        assert len(progress_grids) == steps // sample_every + 1  # and the untrained one, step 0
        for picture in (*progress_grids, artifacts / "samples/grid.png"):
            png_bytes(picture)
        assert "<html" in (artifacts / "report/index.html").read_text().lower()


@pytest.mark.e2e
def test_unknown_key_is_refused_by_dvc_and_nothing_runs(project_repo: ProjectRepo):
    repo = project_repo
    params_before = (repo.root / "params.yaml").read_bytes()

    result = repo.run("dvc", "exp", "run", "-S", "lrr=0.1", check=False)

    output = output_of(result)
    assert result.returncode != 0
    assert "lrr" in result.stderr and "Could not override" in result.stderr, output
    assert not stages_run(output)
    assert (repo.root / "params.yaml").read_bytes() == params_before
    assert repo.git("status", "--porcelain").stdout == ""
    assert repo.dvc("exp", "list", "--name-only").stdout.strip() == ""
    assert not (repo.root / "data/raw").exists()


@pytest.mark.e2e
def test_out_of_range_value_stops_the_train_stage_before_training(reproduced_repo: ProjectRepo):
    repo = reproduced_repo
    checkpoints = repo.root / ".cache/checkpoints"  # training state folders, one per run identity
    checkpoints_before = sorted(checkpoints.rglob("*"))

    result = repo.run("dvc", "exp", "run", "-S", "lr=-1", check=False)

    output = output_of(result)
    assert result.returncode != 0
    assert "train: error: params.yaml is invalid" in output, output[-3000:]
    assert "lr: Input should be greater than 0 (got -1)" in output, output[-3000:]
    assert stages_run(output) == {"train"}
    assert stages_unchanged(output) == UPSTREAM_STAGES
    # before any work: no MLflow store opened, no checkpoint folder, no experiment recorded
    assert not (repo.root / "mlflow.db").exists()
    assert sorted(checkpoints.rglob("*")) == checkpoints_before
    assert repo.dvc("exp", "list", "--name-only").stdout.strip() == ""


@pytest.mark.e2e
def test_every_readme_parameter_can_be_set_with_dash_s(project_repo: ProjectRepo):
    repo = project_repo
    table = readme_parameter_table()
    project_params = flatten(yaml.safe_load(committed_params_text()))
    assert set(table) == set(project_params), (
        "README.md's parameter table and params.yaml disagree: "
        f"only in README {sorted(set(table) - set(project_params))}, "
        f"only in params.yaml {sorted(set(project_params) - set(table))}")

    # every key set at once to its README default, as a user types it: DVC parses and checks each
    overrides = [f"{key}={default}" for key, default in table.items()]
    refused = repo.run("dvc", "exp", "run", "--queue", *dash_s([*overrides, "lrr=0.1"]), check=False)
    assert refused.returncode != 0 and "lrr" in refused.stderr, output_of(refused)
    assert experiments(repo) == {}, "the refused command queued an experiment"

    name = queue_experiment(repo, *overrides)
    try:
        # DVC typed every value as params.yaml holds it (numbers, null, strings); README's defaults are the file's
        assert flatten(row_params(experiments(repo)[name])) == project_params
    finally:
        repo.dvc("queue", "remove", "--queued")
    assert repo.git("status", "--porcelain").stdout == ""


@pytest.mark.e2e
@pytest.mark.parametrize("bad, expected_message", [
    ({"lrr": 0.1}, "lrr: unknown key (value 0.1); did you mean 'lr'?"),
    ({"steps": "many"}, "steps: Input should be a valid integer, unable to parse string as an integer (got 'many')"),
    ({"data": {"image_size": 48}}, "data.image_size: must be a power of two (16, 32, 64, 128 or 256) (got 48)"),
], ids=["unknown-key", "wrong-type", "out-of-range"])
def test_invalid_params_yaml_stops_repro_at_the_first_stage(project_repo: ProjectRepo, bad: dict[str, Any],
                                                           expected_message: str):
    repo = project_repo
    repo.set_params(**bad)
    files_before = set(user_files(repo.root))

    result = repo.run("dvc", "repro", check=False)

    output = output_of(result)
    assert result.returncode != 0
    assert stages_run(output) == {"download"}, output
    assert "download: error: params.yaml is invalid:" in output and expected_message in output, output
    written = set(user_files(repo.root)) - files_before
    assert written == set(), f"dvc repro wrote {sorted(map(str, written))} before failing"
    assert not (repo.root / "dvc.lock").exists()


@pytest.mark.e2e
def test_the_readme_line_after_a_failed_experiment_restores_the_workspace(reproduced_repo: ProjectRepo):
    repo = reproduced_repo
    # preprocess reruns (a new min_size), then train fails (its tracking server is down): dvc.lock
    # changed, train's outputs removed
    result = repo.run("dvc", "exp", "run", "-S", "data.min_size=8", "-S", "steps=8", check=False,
                      env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode != 0 and "does not answer" in result.stderr
    left = repo.git("status", "--porcelain").stdout
    assert all(name in left for name in ("params.yaml", "dvc.lock", "metrics/train.json")), left

    [recovery] = re.findall(r"^    (git checkout HEAD -- .+)$", (PROJECT / "README.md").read_text(), re.MULTILINE)
    repo.run("bash", "-c", recovery)

    assert repo.git("status", "--porcelain").stdout == ""
    assert "Data and pipelines are up to date" in repo.dvc("status").stdout
    assert (repo.root / "models/generator_ema.pt").is_file() and (repo.root / "metrics/losses.csv").is_file()


def test_a_two_point_sweep_runs_in_two_workers_is_grouped_in_mlflow_and_ranked_by_the_leaderboard(
        reproduced_repo: ProjectRepo):
    """The README's sweep: Hydra's comma syntax queues the Cartesian product (2 x 1 here)."""
    repo = reproduced_repo
    queued = output_of(repo.dvc("exp", "run", "--queue", "-S", "lr=0.0001,0.0004", "-S", "label_noise=0.1"))
    names = re.findall(r"Queued experiment '([^']+)'", queued)
    assert len(names) == 2, queued
    try:
        repo.dvc("queue", "start", "-j", "2")
        statuses = wait_for_queue(repo, names)
    finally:
        repo.dvc("queue", "stop", "--kill", check=False)
    assert statuses == dict.fromkeys(names, "Success"), "\n".join(
        output_of(repo.dvc("queue", "logs", name, check=False)) for name in names)
    rows = experiments(repo)
    assert {(row_params(rows[name])["lr"], row_params(rows[name])["label_noise"]) for name in names} == {
        (0.0001, 0.1), (0.0004, 0.1)}

    # MLflow: the README's search lists exactly the sweep's two training runs, each named by its experiment
    baseline = repo.git("rev-parse", "HEAD").stdout.strip()
    client = repo.mlflow()
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    swept = client.search_runs(experiment_ids, f"tags.`dvc.baseline_rev` = '{baseline}'")
    assert sorted(run.data.tags["dvc.exp_name"] for run in swept) == sorted(names)
    assert sorted(run.info.run_name for run in swept) == sorted(names)
    assert {run.info.status for run in swept} == {"FINISHED"}

    # an experiment's name is a --model: its committed models/, from the DVC cache
    first = next(run for run in swept if run.data.tags["dvc.exp_name"] == names[0])
    by_name = repo.run("anime-dcgan", "sample", "--model", names[0], "--seeds", "3,9", "--grid", "by-name.png")
    by_run = repo.run("anime-dcgan", "sample", "--model", f"runs:/{first.info.run_id}/models", "--seeds", "3,9",
                      "--grid", "by-run.png")
    assert by_name.returncode == by_run.returncode == 0
    assert (repo.root / "by-name.png").read_bytes() == (repo.root / "by-run.png").read_bytes()

    # the leaderboard: one line per experiment, sorted by FID, without the ids and constants
    keep = re.search(r"^LEADERBOARD_COLUMNS := (.*)$", (PROJECT / "Makefile").read_text(), re.MULTILINE)[1]
    board = repo.dvc("exp", "show", "--csv", "--sort-by", "metrics/eval.json:fid_8", "--sort-order", "asc",
                     "--drop", ".*", "--keep", keep.replace("$$", "$")).stdout
    header, *lines = board.splitlines()
    columns = header.split(",")
    assert "fid_8" in columns and "lr" in columns
    assert not {"mlflow_run_id", "mlflow_model_id", "fid_samples", "collapse_warning"} & set(columns)
    ranked = [(row.split(",")[columns.index("Experiment")], float(row.split(",")[columns.index("fid_8")]))
              for row in lines if row.split(",")[columns.index("Experiment")] in names]
    assert len(ranked) == 2 and ranked[0][1] <= ranked[1][1]

    # outputs not in the cache: one line saying how to fetch them
    shutil.rmtree(repo.root / ".dvc/cache")
    missing = repo.run("anime-dcgan", "sample", "--model", names[0], "--seeds", "3", "--grid", "x.png", check=False)
    assert missing.returncode != 0 and f"dvc exp pull <remote> {names[0]}" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
