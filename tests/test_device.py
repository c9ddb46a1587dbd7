"""The runtime chosen from the device / precision / compile parameters; the peak-memory reading."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anime_dcgan.device import pick_runtime, supports_bf16
from anime_dcgan.errors import PipelineError

SRC = Path(__file__).resolve().parents[1] / "src"


def test_auto_on_the_cpu_runs_eager_in_bf16_where_native():
    runtime = pick_runtime("cpu", "auto", "auto")
    assert runtime.device.type == "cpu"
    assert not runtime.compile  # measured: no gain on a CPU, only compile time
    assert runtime.precision == ("bf16" if supports_bf16(torch.device("cpu")) else "fp32")
    assert runtime.compile_mode == "default"


def test_explicit_choices_are_kept():
    runtime = pick_runtime("cpu", "fp32", True)
    assert runtime.precision == "fp32" and runtime.autocast_dtype is None and runtime.compile


def test_an_unavailable_device_is_refused_with_a_hint():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(PipelineError, match=r"device: 'cuda' was requested but is not available.*device: auto"):
        pick_runtime("cuda", "auto", "auto")


def test_bf16_where_the_cpu_cannot_run_it_natively_is_refused(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(PipelineError, match="precision: bf16 is not supported on cpu"):
        pick_runtime("cpu", "bf16", False)
    assert pick_runtime("cpu", "auto", False).precision == "fp32"


def test_peak_rss_grows_with_memory_actually_touched():
    # in a fresh process: this one's peak may already be far above what it holds now
    script = ("import numpy as np; from anime_dcgan.device import peak_rss_bytes; before = peak_rss_bytes(); "
              "block = np.ones(300 * 2**20, dtype=np.uint8); print(before, peak_rss_bytes())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    before, after = map(int, result.stdout.split())
    assert after - before > 250 * 2**20  # 300 MiB, every page written
