"""The train stage when its MLflow store fails: a real `mlflow server` stopped by its PID mid-training,
and an sqlite store locked by another real process before and during training."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from servers import free_port, log_tail, start_in_session, stop_group, wait_for_http, wait_until
from test_train import REPO, make_workspace

from anime_dcgan.tracking import EXPERIMENT_NAME, Tracker
from anime_dcgan.training import checkpoint as ckpt

SERVER_START_S = 180     # a busy 2-core machine starts uvicorn slowly
LONGER = {"steps": 400, "log_every": 10, "sample_every": 20, "checkpoint_every": 20}
LOGGED_STEPS = list(range(10, 401, 10))
GRID_STEPS = set(range(0, 401, 20))


def stage_env(**variables: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1", **variables}


def start_train(root: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    return start_in_session([sys.executable, str(REPO / "stages/train.py")], root, env, log)


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process)
        raise AssertionError(f"the stage did not end:\n{log_tail(log)}") from None
    return log.read_text()


def latest_step(root: Path) -> int:
    return max((ckpt.latest_step(folder) or 0 for folder in (root / ".cache/checkpoints").glob("*")), default=0)


class MlflowServer:
    """`mlflow server` over its own sqlite store and artifact folder, started and stopped by its PID."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.folder / f"server-{time.monotonic_ns()}.log"
        self.process = start_in_session(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"], self.folder, dict(os.environ), log)
        wait_for_http(f"{self.uri}/health", SERVER_START_S, self.process, log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process)

    def runs(self) -> list:
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture
def mlflow_server(tmp_path: Path):
    server = MlflowServer(tmp_path / "server")
    server.start()
    yield server
    server.stop()


def logged_run_with_metrics(server: MlflowServer) -> bool:
    return any(run.data.metrics for run in server.runs())


def grid_steps(client: MlflowClient, run_id: str) -> set[int]:
    """The steps of the progress grids logged with log_image (artifacts images/progress+step+<n>+...png,
    each with a +compressed thumbnail); a grid logged twice would make the counts differ."""
    names = [artifact.path for artifact in client.list_artifacts(run_id, "images")
             if artifact.path.endswith(".png") and not artifact.path.endswith("+compressed.png")]
    steps = [int(name.split("+step+")[1].split("+")[0]) for name in names]
    assert len(steps) == len(set(steps)), f"a grid was logged twice: {sorted(steps)}"
    return set(steps)


def train_until_the_server_stops(tmp_path: Path, server: MlflowServer, env: dict[str, str]
                                 ) -> tuple[Path, Path, subprocess.Popen]:
    """A training logging to `server`, which is stopped once the first metrics reached it:
    (workspace, log, the stage's process)."""
    root = make_workspace(tmp_path / "ws", **LONGER)
    log = tmp_path / "train.log"
    stage = start_train(root, log, env)
    wait_until(lambda: logged_run_with_metrics(server), 120, "the first metrics on the server", stage, log)
    server.stop()
    return root, log, stage


def test_a_server_stopped_mid_training_loses_nothing_training_goes_on_and_all_is_sent_when_it_returns(
        tmp_path: Path, mlflow_server: MlflowServer) -> None:
    # MLflow's retry settings are left as the project sets them (one call gives up within about a minute)
    root, log, stage = train_until_the_server_stops(
        tmp_path, mlflow_server, stage_env(MLFLOW_TRACKING_URI=mlflow_server.uri, ANIME_DCGAN_TRACKING_WAIT_S="300"))
    # training goes on while the server is gone, up to its final checkpoint
    wait_until(lambda: latest_step(root) == 400, 180, "the final checkpoint", stage, log, poll_s=0.2)
    assert "training goes on" in log.read_text()
    mlflow_server.start()  # same store, same port
    output = finish(stage, log)

    assert stage.returncode == 0, output
    assert "Traceback" not in output
    warning = next(line for line in output.splitlines() if "stopped answering" in line)
    assert mlflow_server.uri in warning
    assert "MLflow answers again" in output
    [run] = mlflow_server.runs()  # one run: no restart, no stand-in
    assert run.info.status == "FINISHED"
    client = MlflowClient(mlflow_server.uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_g")] == LOGGED_STEPS  # each once
    assert grid_steps(client, run.info.run_id) == GRID_STEPS
    assert (root / "models/generator_ema.pt").is_file()


def test_a_server_gone_for_good_stops_the_stage_in_bounded_time_and_the_rerun_only_exports(
        tmp_path: Path, mlflow_server: MlflowServer) -> None:
    env = stage_env(MLFLOW_TRACKING_URI=mlflow_server.uri, ANIME_DCGAN_TRACKING_WAIT_S="5")
    root, log, stage = train_until_the_server_stops(tmp_path, mlflow_server, env)
    stopped = time.monotonic()
    output = finish(stage, log)
    seconds = time.monotonic() - stopped

    assert stage.returncode == 1
    assert seconds < 60, f"took {seconds:.0f} s to give up"
    assert "Traceback" not in output
    [error] = [line for line in output.splitlines() if "error:" in line]
    assert mlflow_server.uri in error and "stopped answering" in error
    assert "kept at step 400" in error and "rerun when the store answers" in error
    assert not (root / "models").exists(), "a stage that cannot log writes no outputs"
    assert latest_step(root) == 400

    mlflow_server.start()
    rerun_log = tmp_path / "rerun.log"
    rerun = start_train(root, rerun_log, env)
    output = finish(rerun, rerun_log)
    assert rerun.returncode == 0, output
    assert "resuming at step 400 of 400" in output
    runs = {run.info.status: run for run in mlflow_server.runs()}
    assert sorted(runs) == ["FINISHED", "KILLED"]  # none left RUNNING
    assert "had died without ending the run" in runs["KILLED"].data.tags["anime_dcgan.ended_by"]
    assert runs["FINISHED"].data.tags["anime_dcgan.resumed_from_run"] == runs["KILLED"].info.run_id
    client = MlflowClient(mlflow_server.uri)
    assert [m.step for m in client.get_metric_history(runs["FINISHED"].info.run_id, "loss_g")] == LOGGED_STEPS
    assert (root / "models/generator_ema.pt").is_file()


# -- an sqlite store locked by another process -------------------------------------------------------

def hold_lock(db: Path, seconds: float, log: Path) -> subprocess.Popen:
    """Another process holding an exclusive lock on the store (as a backup or a long UI query would)."""
    script = ("import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
              "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2]))")
    holder = start_in_session([sys.executable, "-c", script, str(db), str(seconds)], db.parent, dict(os.environ), log)
    wait_until(lambda: "locked" in log.read_text(), 30, "the lock", holder, log)
    return holder


def store_is_locked(db: Path) -> bool:
    try:
        with sqlite3.connect(db, timeout=0) as connection:
            connection.execute("BEGIN IMMEDIATE")
            connection.rollback()
        return False
    except sqlite3.OperationalError:
        return True


def statuses(root: Path) -> list[str]:
    tracker = Tracker(root)
    return [run.info.status for run in tracker.client.search_runs([tracker.experiment_id])]


def test_a_store_locked_at_the_start_is_waited_for_saying_who_holds_it(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    Tracker(root)  # the store exists
    holder = hold_lock(root / "mlflow.db", 12, tmp_path / "holder.log")  # past the stage's start-up
    log = tmp_path / "train.log"
    stage = start_train(root, log, stage_env())
    output = finish(stage, log)
    holder.wait(timeout=30)

    assert stage.returncode == 0, output
    notice = next(line for line in output.splitlines() if "is locked" in line)
    assert str(root / "mlflow.db") in notice and f"pid {holder.pid}" in notice and "waiting up to 60 s" in notice
    assert statuses(root) == ["FINISHED"]


def test_a_store_locked_for_good_fails_the_stage_with_one_line_naming_the_file_and_the_holder(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    Tracker(root)
    holder = hold_lock(root / "mlflow.db", 600, tmp_path / "holder.log")
    try:
        log = tmp_path / "train.log"
        stage = start_train(root, log, stage_env(ANIME_DCGAN_TRACKING_WAIT_S="1"))
        output = finish(stage, log)
    finally:
        stop_group(holder)

    assert stage.returncode == 1
    assert "Traceback" not in output and "sqlalchemy" not in output
    [error] = [line for line in output.splitlines() if "error:" in line]
    assert f"{root / 'mlflow.db'} stayed locked" in error and f"pid {holder.pid}" in error
    assert not (root / "models").exists()
    assert "RUNNING" not in statuses(root)


def test_a_store_locked_during_training_is_caught_up_once_released(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", **LONGER)
    log = tmp_path / "train.log"
    stage = start_train(root, log, stage_env(ANIME_DCGAN_TRACKING_WAIT_S="1"))
    wait_until(lambda: latest_step(root) >= 20, 120, "the first checkpoint", stage, log)
    # MLflow's own busy wait (20 s) and ours (1 s) pass, then training goes on while the lock is held
    holder = hold_lock(root / "mlflow.db", 30, tmp_path / "holder.log")
    wait_until(lambda: "training goes on" in log.read_text(), 120, "the outage warning", stage, log, poll_s=0.2)
    assert store_is_locked(root / "mlflow.db")
    output = finish(stage, log)
    holder.wait(timeout=60)

    assert stage.returncode == 0, output
    assert "Traceback" not in output
    warning = next(line for line in output.splitlines() if "training goes on" in line)
    assert f"MLflow store {root / 'mlflow.db'}" in warning and "locked" in warning and f"pid {holder.pid}" in warning
    tracker = Tracker(root)
    [run] = tracker.client.search_runs([tracker.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "loss_g")] == LOGGED_STEPS
    assert grid_steps(MlflowClient(tracker.uri), run.info.run_id) == GRID_STEPS


def test_ctrl_c_during_an_outage_still_ends_the_stage_at_once(tmp_path: Path, mlflow_server: MlflowServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root, log, stage = train_until_the_server_stops(
        tmp_path, mlflow_server, stage_env(MLFLOW_TRACKING_URI=mlflow_server.uri, ANIME_DCGAN_TRACKING_WAIT_S="300"))
    wait_until(lambda: latest_step(root) == 400, 180, "the final checkpoint", stage, log, poll_s=0.2)
    os.killpg(stage.pid, signal.SIGINT)
    interrupted = time.monotonic()
    output = finish(stage, log, timeout=60)
    assert time.monotonic() - interrupted < 15
    assert stage.returncode == 130
    assert "Traceback" not in output
    assert latest_step(root) == 400, "the saved state survives"
    # the run could not be ended with the server gone: the next stage to open the store ends it
    mlflow_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    Tracker(root)
    [run] = mlflow_server.runs()
    assert run.info.status == "KILLED"
    assert "had died without ending the run" in run.data.tags["anime_dcgan.ended_by"]
