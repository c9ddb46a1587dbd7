"""benchmarks/gpu_check.sh on a machine without a GPU: its smoke run (GPU_CHECK_SMOKE=1: every part on
the CPU at the smallest settings, on 16 faces of the real sample) and its one-line refusal otherwise."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks/gpu_check.sh"
PARTS = {"a": "cuda_tests", "b": "train_throughput", "c": "inception_throughput", "d": "quality"}


def run_check(out: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "GPU_CHECK_SMOKE"}
    return subprocess.run([str(SCRIPT), str(out)], capture_output=True, text=True, timeout=600,
                          env={**env, "PYTHON": sys.executable, **settings})


@pytest.mark.e2e
def test_the_smoke_run_goes_through_every_part_on_the_cpu(tmp_path, shared_sample_zip):
    out = tmp_path / "out"
    result = run_check(out, GPU_CHECK_SMOKE="1", ANIME_DCGAN_SAMPLE=str(shared_sample_zip))
    assert result.returncode == 0, result.stdout + result.stderr

    summary = result.stdout[result.stdout.index("## GPU check"):]
    assert summary == (out / "summary.md").read_text()
    assert "FAILED" not in summary
    lines = {letter: [line for line in summary.splitlines() if line.startswith(f"- {letter}. ")] for letter in PARTS}
    assert all(len(found) == 1 for found in lines.values()), summary
    part = {letter: found[0] for letter, found in lines.items()}
    assert all(re.search(r"; \d+ s$", line) for line in part.values()), summary  # each part's seconds
    assert "skipped (0 passed, 0 failed, " in part["a"]  # no CUDA device for the CUDA tests
    assert re.search(r": \d+\.\d\dx \(cpu, batch 8, best of 1\); \d+% of the convolution limit, ceiling \d+%",
                     part["b"]), part["b"]
    assert "cpu: " in part["c"] and "| cpu | folded, batch 8 |" in summary  # its table, below the parts
    assert re.search(r"fid_8 \d+\.\d\d, kid_8 ", part["d"]), part["d"]
    for name in PARTS.values():
        assert (out / f"{name}.log").stat().st_size > 0, name
        assert json.loads((out / f"{name}.json").read_text()), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_a_cuda_device_it_stops_in_one_line(tmp_path):
    result = run_check(tmp_path / "out")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "gpu_check.sh: no CUDA device here\n")
    assert not (tmp_path / "out").exists()  # nothing was run
