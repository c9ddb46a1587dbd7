import os
from pathlib import Path

import pytest

# real HTTP servers (http_fixtures.py) and real git + DVC repositories of the project (project_repo.py)
pytest_plugins = ["http_fixtures", "project_repo"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE_ZIP = Path(
    os.environ.get("ANIME_FACES_SAMPLE_ZIP", REPO_ROOT.parent / "shared/data/anime-faces-64-sample.zip")
)


@pytest.fixture(scope="session")
def shared_sample_zip() -> Path:
    """The 4,998 real 64x64 anime faces kept beside the project (never committed); skip when absent."""
    if not SHARED_SAMPLE_ZIP.is_file():
        pytest.skip(f"shared sample {SHARED_SAMPLE_ZIP} is not present")
    return SHARED_SAMPLE_ZIP
