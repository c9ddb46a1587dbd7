"""Choosing the device, the precision and whether to compile, from the `device`, `precision` and
`compile` parameters; the CPU allocator setting that training benefits from; peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from anime_dcgan.errors import PipelineError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None = plain fp32
    compile: bool
    cpu_kernels: bool = False  # cpu_ops' weight-gradient layers (CPU only)

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    @property
    def compile_mode(self) -> str:
        """On CUDA, "reduce-overhead" replays each compiled graph as a CUDA graph: a DCGAN step is
        hundreds of small kernels whose launches would otherwise cost more host time than the GPU
        spends computing them."""
        return "reduce-overhead" if self.device.type == "cuda" else "default"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an explicit choice must be available."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available.get(requested, False):
        raise PipelineError(f"device: {requested!r} was requested but is not available on this machine; "
                           "use device: auto (or cpu)")
    return torch.device(requested)


def supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # oneDNN runs bf16 convolutions natively only with AVX512-BF16 or AMX; elsewhere it emulates
        # them and is slower than fp32.
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False  # MPS: bf16 autocast coverage is incomplete; fp32 is the safe default


def pick_runtime(device: str = "auto", precision: str = "auto", compile: str | bool = "auto") -> Runtime:
    """The runtime before calibration: on the CPU, the train stage then times the precision and kernel
    variants (training/calibration.py) and keeps the fastest."""
    chosen = pick_device(device)
    if precision == "bf16" and not supports_bf16(chosen):
        raise PipelineError(f"precision: bf16 is not supported on {chosen.type} here; use precision: auto or fp32")
    use_bf16 = precision == "bf16" or (precision == "auto" and supports_bf16(chosen))
    if compile == "auto":
        # CUDA: CUDA graphs remove the launch overhead that dominates a DCGAN step. CPU: the step is
        # mostly oneDNN convolutions that Inductor leaves as they are, so compiling costs its compile
        # time for no faster step (benchmarks/train_throughput.md).
        compile = chosen.type == "cuda"
    return Runtime(chosen, torch.bfloat16 if use_bf16 else None, bool(compile), chosen.type == "cpu")


def tune_cpu_allocator() -> bool:
    """Stop glibc malloc from returning freed memory to the OS after every training step.

    Each step frees and reallocates the same activation buffers; with glibc's default thresholds the
    large ones are mmap'ed and unmapped every time, costing page faults (millions per run). Raising
    the trim and mmap thresholds keeps them in the heap. Returns False where the C library is not glibc.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    one_gib = 1 << 30
    # glibc caps the mmap threshold at 32 MiB on 64-bit systems (mallopt fails above it)
    return bool(libc.mallopt(m_trim_threshold, one_gib)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))


def peak_rss_bytes() -> int:
    """The peak resident memory of this process since it started (Linux: VmHWM). Not getrusage's
    ru_maxrss: Linux carries the parent's peak over fork + exec into it, so a child started by a
    1.4 GB parent would report at least 1.4 GB."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
