import os
import signal
from pathlib import Path

import pytest

# real HTTP servers (http_fixtures.py) and real git + DVC repositories of the project (project_repo.py)
pytest_plugins = ["http_fixtures", "project_repo"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# the one setting tests and benchmarks (benchmarks/common.py) read the real sample from; empty = unset
SHARED_SAMPLE_ZIP = Path(os.environ.get("ANIME_DCGAN_SAMPLE") or REPO_ROOT.parent / "shared/data/anime-faces-64-sample.zip")


def pytest_configure(config: pytest.Config) -> None:
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
