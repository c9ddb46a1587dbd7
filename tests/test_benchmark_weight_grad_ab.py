"""benchmarks/weight_grad_ab.py on a tiny dataset: both steps run interleaved and are reported."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks/weight_grad_ab.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_tiny_run_reports_both_steps_and_the_pairs(tmp_path: Path):
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    result = run_script("--pairs", "3", "--warmup", "1", "--batch-size", "4", "--images-npy", str(tmp_path / "images.npy"))
    assert result.returncode == 0, result.stderr
    assert "batch 4, 3 interleaved pairs" in result.stdout
    rates = re.findall(r"(\d+\.\d) images/s", result.stdout)
    assert len(rates) == 2 and all(float(rate) > 0 for rate in rates)
    assert re.search(r"faster in [0-3] of 3$", result.stdout.strip())


def test_a_missing_dataset_is_refused_with_a_message(tmp_path: Path):
    result = run_script("--images-npy", str(tmp_path / "none.npy"))
    assert result.returncode != 0
    assert "none.npy does not exist: run `make repro` first" in result.stderr
