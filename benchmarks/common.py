"""What the benchmark scripts share: the repository root and where the real anime-face sample is.

The scripts are run as `python benchmarks/<name>.py`, so this folder is first on sys.path and they
import this module as `common`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ENV = "ANIME_DCGAN_SAMPLE"  # the same setting tests/conftest.py reads
DEFAULT_SAMPLE = REPO_ROOT.parent / "shared/data/anime-faces-64-sample.zip"


def sample_zip() -> Path:
    """The zip of 4,998 real 64x64 anime faces: $ANIME_DCGAN_SAMPLE when set, else
    ../shared/data/anime-faces-64-sample.zip beside the repository. It may be absent: each
    benchmark says what it does then."""
    return Path(os.environ.get(SAMPLE_ENV) or DEFAULT_SAMPLE)
