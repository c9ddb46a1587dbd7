import os
import signal
import sqlite3
import tempfile
from pathlib import Path

import pytest

from anime_dcgan.training.calibration import CACHE_ENV as CALIBRATION_CACHE_ENV

# real HTTP servers (http_fixtures.py) and real git + DVC repositories of the project (project_repo.py)
pytest_plugins = ["http_fixtures", "project_repo"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# the one setting tests and benchmarks (benchmarks/common.py) read the real sample from; empty = unset
SHARED_SAMPLE_ZIP = Path(os.environ.get("ANIME_DCGAN_SAMPLE") or REPO_ROOT.parent / "shared/data/anime-faces-64-sample.zip")


def pytest_configure(config: pytest.Config) -> None:
    # one calibration cache for the session (the stages the tests start inherit it): runs of one
    # configuration in different tests choose the same step variant, and the user's cache is untouched
    os.environ[CALIBRATION_CACHE_ENV] = str(Path(tempfile.mkdtemp(prefix="anime-dcgan-calibration-")) / "cache.json")
    # A session started with SIGINT ignored (`nohup make test`, or `make test &` in a script) passes
    # that on to the stages it starts, which then rightly ignore Ctrl-C, and the interruption tests
    # fail. A Python handler here is reset to the default in every program the tests start.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def shared_sample_zip() -> Path:
    """The 4,998 real 64x64 anime faces kept beside the project (never committed); skip when absent."""
    if not SHARED_SAMPLE_ZIP.is_file():
        pytest.skip(f"shared sample {SHARED_SAMPLE_ZIP} is not present")
    return SHARED_SAMPLE_ZIP


def running_runs(folder: Path) -> list[str]:
    """'<store>: <run id>' for every run still RUNNING in the MLflow sqlite stores below `folder`."""
    found = []
    for store in sorted(folder.rglob("mlflow.db")):
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'").fetchall()
        except sqlite3.Error:  # not a store (yet): no runs
            continue
        found += [f"{store}: {run_id}" for (run_id,) in rows]
    return found


@pytest.fixture(autouse=True)
def no_mlflow_run_left_running(tmp_path: Path):
    """Whatever a test killed, cut or locked, no MLflow run is left RUNNING in the stores it made."""
    yield
    left = running_runs(tmp_path)
    assert not left, "MLflow runs left RUNNING by this test: " + ", ".join(left)


RUNS_LEFT_RUNNING = pytest.StashKey[list]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # the same for the stores of fixtures shared by several tests (tmp_path_factory)
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or getattr(session.config, "workerinput", None) is not None:
        return
    left = running_runs(factory.getbasetemp())
    if left:
        session.config.stash[RUNS_LEFT_RUNNING] = left
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    # printed beside the short test summary, so that the end of a CI log shows why the run failed
    left = config.stash.get(RUNS_LEFT_RUNNING, [])
    if left:
        terminalreporter.section("MLflow runs left RUNNING by the tests", red=True)
        for line in left:
            terminalreporter.line(line)
