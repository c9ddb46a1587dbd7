"""The fan-out recipe of cluster/, proven on one machine: many experiments on many machines, each task
running cluster/run_experiment.sh (clone, `dvc exp run --pull`, `dvc exp push --run-cache`) and
logging to one MLflow server backed by PostgreSQL.

Here the machines are folders: a bare git remote holding the tiny project, a local folder as the DVC
remote, a real PostgreSQL started for the test (skipped where it cannot start), a real `mlflow
server` on 127.0.0.1 started by cluster/mlflow_server.sh, two workers one after the other with
different learning rates, and a third clone that pulls both experiments.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from project_repo import PROJECT, ProjectRepo, make_project_repo, repo_env
from servers import free_port, start_in_session, stop_group, wait_for_http, wait_until
from test_e2e_experiments import (
    PNG_SIGNATURE,
    TRAIN_AND_AFTER,
    UPSTREAM_STAGES,
    experiments,
    output_of,
    row_metrics,
    row_params,
    stages_restored_from_run_cache,
    stages_run,
)

from anime_dcgan.tracking import EXPERIMENT_NAME, REGISTERED_MODEL

pytestmark = pytest.mark.e2e

RUN_EXPERIMENT = PROJECT / "cluster/run_experiment.sh"
MLFLOW_SERVER = PROJECT / "cluster/mlflow_server.sh"
POSTGRES_START_S = 60
SERVER_START_S = 180     # a busy 2-core machine starts uvicorn slowly (and MLflow migrates the empty database)
WORKER_TIMEOUT_S = 900
# experiment name -> lr; the second worker runs after the first, so it can reuse the first's stage runs
WORKERS = {"fanout-lr-0001": 0.0001, "fanout-lr-0004": 0.0004}
# the ids and set sizes of metrics/eval.json are tags of the run, not its metrics
NOT_SCORES = {"mlflow_run_id", "mlflow_model_id", "fid_samples", "reference_images"}


# --- PostgreSQL, started for the test --------------------------------------------------------------

def postgres_bindir() -> Path | None:
    """The folder of the server's programs (initdb, postgres, pg_ctl, pg_isready, createdb): where the
    initdb on PATH leads (maybe a link), or Debian's /usr/lib/postgresql/<major>/bin, the newest."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    installed = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    return max(installed, key=lambda bindir: int(bindir.parent.name), default=None)


def as_postgres_user(folder: Path) -> list[str]:
    """The command prefix that runs the server's programs: as root (which postgres refuses to run
    as) the `postgres` system user, made owner of `folder`; otherwise none."""
    if os.geteuid() != 0:
        return []
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and there is no runuser to run PostgreSQL as the `postgres` user")
    os.chown(folder, account.pw_uid, account.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    """A database `mlflow` on a PostgreSQL of its own, on a free port of 127.0.0.1 (trust
    authentication: it listens there only), stopped and removed at the end."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    # outside pytest's temporary folders: they are private to their owner, and the server may run as
    # another user; the socket folder also has to stay within the 107 characters of a socket path
    folder = Path(tempfile.mkdtemp(prefix="anime-dcgan-pg-"))
    try:
        user_prefix = as_postgres_user(folder)
        data, log = folder / "data", folder / "postgres.log"
        # a throwaway database: no fsync (-F, --no-sync)
        init = subprocess.run([*user_prefix, str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust",
                               "-E", "UTF8", "--no-locale", "--no-sync"], capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            pytest.skip(f"initdb could not create a PostgreSQL cluster: {(init.stderr or init.stdout).strip()[-500:]}")
        port = free_port()
        server = start_in_session([*user_prefix, str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                   "-p", str(port), "-k", str(folder), "-F"], folder, dict(os.environ), log)
        try:
            def ready() -> bool:
                return subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                                      timeout=30).returncode == 0
            try:
                wait_until(ready, POSTGRES_START_S, f"PostgreSQL on 127.0.0.1:{port}", server, log, poll_s=0.25)
            except AssertionError as exc:
                pytest.skip(f"PostgreSQL did not start: {exc}")
            subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
                           check=True, capture_output=True, timeout=60)
            yield f"postgresql+psycopg://mlflow@127.0.0.1:{port}/mlflow"  # the driver of the dev extra
        finally:
            # a fast shutdown: it does not wait for clients that are still connected
            subprocess.run([*user_prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=120)
            stop_group(server)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(its URL, its artifact folder): the shared server, started as the README says, by cluster/mlflow_server.sh."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = folder / "artifacts", folder / "server.log"
    port = free_port()
    env = {**repo_env(folder), "MLFLOW_BACKEND_STORE_URI": postgres_uri, "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts)}
    server = start_in_session([str(MLFLOW_SERVER), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              folder, env, log)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", SERVER_START_S, server, log)
        yield f"http://127.0.0.1:{port}", artifacts
    finally:
        stop_group(server)


# --- the fan-out: a remote, two workers, a collector -----------------------------------------------

@dataclass
class Worker:
    result: subprocess.CompletedProcess
    scratch: Path   # its TMPDIR
    clone: Path | None  # ANIME_DCGAN_WORKDIR, when given

    @property
    def output(self) -> str:
        return output_of(self.result)


@dataclass
class FanOut:
    server_uri: str
    server_artifacts: Path
    steps: int
    sample_every: int
    workers: dict[str, Worker]   # by experiment name, in the order they ran
    collector: ProjectRepo       # a clone of the remote that pulled both experiments
    rows: dict[str, dict[str, Any]]  # its `dvc exp show`, by experiment name


def worker_env(root: Path, server_uri: str, **variables: str) -> dict[str, str]:
    """What a scheduler's task gets: the shared server and an existing environment (this one)."""
    home = root / "home"
    home.mkdir(parents=True)
    return {**repo_env(home), "MLFLOW_TRACKING_URI": server_uri, "ANIME_DCGAN_VENV": sys.prefix, **variables}


def run_worker(root: Path, git_url: str, rev: str, name: str, lr: float, server_uri: str,
               keep_clone: bool) -> Worker:
    scratch = root / "tmp"
    scratch.mkdir(parents=True)
    clone = root / "clone" if keep_clone else None
    env = worker_env(root, server_uri, TMPDIR=str(scratch), **({"ANIME_DCGAN_WORKDIR": str(clone)} if clone else {}))
    result = subprocess.run([str(RUN_EXPERIMENT), git_url, rev, name, "-S", f"lr={lr}"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    return Worker(result, scratch, clone)


@pytest.fixture(scope="module")
def fanout(mlflow_server: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> FanOut:
    server_uri, server_artifacts = mlflow_server
    root = tmp_path_factory.mktemp("fanout")
    author = make_project_repo(root / "author")
    author.dvc("remote", "add", "-d", "storage", str(root / "dvc-storage"))
    author.git("add", ".dvc/config")
    author.git("commit", "-q", "-m", "Add the shared DVC remote")
    origin = root / "origin.git"
    author.git("init", "-q", "--bare", "-b", "main", str(origin))
    author.git("push", "-q", str(origin), "main")
    rev = author.git("rev-parse", "HEAD").stdout.strip()

    # the first worker in a scratch folder of its own, the second in a folder it is given (and keeps)
    workers = {name: run_worker(root / f"worker-{index}", str(origin), rev, name, lr, server_uri, keep_clone=index == 2)
               for index, (name, lr) in enumerate(WORKERS.items(), start=1)}

    collector_root = root / "collector"
    author.git("clone", "-q", str(origin), str(collector_root))
    (root / "collector-home").mkdir()
    collector = ProjectRepo(collector_root, repo_env(root / "collector-home"))
    rows = {}
    if all(worker.result.returncode == 0 for worker in workers.values()):
        collector.dvc("exp", "pull", "origin", *WORKERS)
        rows = experiments(collector)
    params = author.params()
    return FanOut(server_uri, server_artifacts, params["steps"], params["sample_every"], workers, collector, rows)


def assert_workers_succeeded(fanout: FanOut) -> None:
    for name, worker in fanout.workers.items():
        assert worker.result.returncode == 0, f"worker {name} failed:\n{worker.output[-4000:]}"


# --- the tests ------------------------------------------------------------------------------------

def test_a_third_clone_pulls_both_experiments_with_their_metrics_and_outputs(fanout: FanOut) -> None:
    assert_workers_succeeded(fanout)
    rows = fanout.rows
    assert set(WORKERS) <= set(rows), f"dvc exp show lists {sorted(rows)}"
    for name, lr in WORKERS.items():
        assert row_params(rows[name])["lr"] == lr
        evaluation = row_metrics(rows[name], "metrics/eval.json")
        assert evaluation["fid_8"] > 0 and evaluation["mlflow_run_id"], evaluation
        assert row_metrics(rows[name], "metrics/train.json")["mlflow_run_id"] == evaluation["mlflow_run_id"]
    # the kept clone of the second worker, and its experiment as the collector pulled it: the same
    # results, and the outputs came through the DVC remote
    name, kept = list(WORKERS)[1], fanout.workers[list(WORKERS)[1]].clone
    assert row_metrics(rows[name], "metrics/eval.json") == json.loads((kept / "metrics/eval.json").read_text())
    fanout.collector.dvc("exp", "apply", name)
    assert ((fanout.collector.root / "models/generator_ema.pt").read_bytes()
            == (kept / "models/generator_ema.pt").read_bytes())


def test_the_shared_server_holds_both_runs_with_params_metrics_images_and_models(fanout: FanOut,
                                                                                tmp_path: Path) -> None:
    assert_workers_succeeded(fanout)
    client = MlflowClient(tracking_uri=fanout.server_uri, registry_uri=fanout.server_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None, f"no experiment {EXPERIMENT_NAME} on the server"
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(WORKERS), "the server should hold exactly one run per experiment"

    for name, lr in WORKERS.items():
        run = runs[name]
        evaluation: dict[str, Any] = row_metrics(fanout.rows[name], "metrics/eval.json")
        assert run.info.run_id == evaluation["mlflow_run_id"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["dvc.exp_name"] == name
        assert (run.data.params["lr"], run.data.params["steps"]) == (str(lr), str(fanout.steps))
        scores = {key: value for key, value in evaluation.items() if key not in NOT_SCORES}
        assert {key: run.data.metrics.get(key) for key in scores} == pytest.approx(scores, nan_ok=True)

        # artifacts went through the server into its store, not onto the workers' disks
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        stored = fanout.server_artifacts / run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
        assert (stored / "models/generator_ema.pt").stat().st_size > 0
        grids = [artifact.path for artifact in client.list_artifacts(run.info.run_id, "images")
                 if artifact.path.endswith(".png") and not artifact.path.endswith("+compressed.png")]
        assert len(grids) == fanout.steps // fanout.sample_every + 1, grids  # and the untrained one, step 0
        grid = Path(client.download_artifacts(run.info.run_id, grids[-1], str(tmp_path / name)))
        assert grid.read_bytes().startswith(PNG_SIGNATURE)
        assert "generator_ema.pt" in {Path(artifact.path).name
                                      for artifact in client.list_artifacts(run.info.run_id, "models")}

        # the generator model of the run, and its registered version
        model = client.get_logged_model(evaluation["mlflow_model_id"])
        assert model.source_run_id == run.info.run_id
        assert "MLmodel" in {artifact.path for artifact in client.list_logged_model_artifacts(model.model_id)}
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert sorted(version.run_id for version in versions) == sorted(run.info.run_id for run in runs.values())


def test_the_second_worker_restores_the_data_stages_from_the_remotes_run_cache(fanout: FanOut) -> None:
    assert_workers_succeeded(fanout)
    first, second = fanout.workers.values()
    assert stages_run(first.output) == UPSTREAM_STAGES | TRAIN_AND_AFTER, first.output[-3000:]
    # its own learning rate: trained, sampled and evaluated; the rest is the first worker's
    assert stages_run(second.output) == TRAIN_AND_AFTER, second.output[-3000:]
    assert stages_restored_from_run_cache(second.output) == UPSTREAM_STAGES, second.output[-3000:]


def test_the_worker_cleans_its_scratch_folder_and_keeps_a_given_one(fanout: FanOut) -> None:
    assert_workers_succeeded(fanout)
    first, second = fanout.workers.values()
    clone = Path(re.search(r"cloning .* into (\S+)", first.output)[1])
    assert clone.parent == first.scratch and not clone.exists(), f"the first worker left {clone} behind"
    assert not list(second.scratch.glob("anime-dcgan-*")), "the second worker cloned into a scratch folder"
    assert (second.clone / "dvc.lock").is_file()


@pytest.mark.parametrize("tracking_uri", [None, "sqlite:///mlflow.db"], ids=["unset", "sqlite"])
def test_the_worker_refuses_to_run_without_a_shared_server(tracking_uri: str | None, tmp_path: Path) -> None:
    env = worker_env(tmp_path, tracking_uri or "", TMPDIR=str(tmp_path))
    if tracking_uri is None:
        del env["MLFLOW_TRACKING_URI"]
    before = set(tmp_path.iterdir())

    result = subprocess.run([str(RUN_EXPERIMENT), str(tmp_path / "no-such-repo.git"), "main", "exp", "-S", "lr=0.1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "MLFLOW_TRACKING_URI" in line and "shared" in line, line
    assert set(tmp_path.iterdir()) == before, "it cloned before checking"


def test_the_server_script_refuses_an_sqlite_store(tmp_path: Path) -> None:
    env = {**repo_env(tmp_path), "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts")}
    result = subprocess.run([str(MLFLOW_SERVER)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "mlflow_server.sh: MLFLOW_BACKEND_STORE_URI must be a postgresql:// database shared by the machines, not sqlite"]
    assert not (tmp_path / "mlflow.db").exists()
