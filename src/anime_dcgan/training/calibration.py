"""Choosing the CPU step's precision and kernels by timing them on the machine that trains.

Which of fp32 and bf16 autocast is faster, and whether cpu_ops' weight-gradient layers beat
oneDNN's own, depends on the CPU: a CPU that reports AVX512-BF16 can still run bf16 convolutions
slower than fp32 ones, and the weight-gradient kernels differ between CPU families. So on the CPU
`precision: auto` (and, whatever the precision, the kernel variant) is decided by running the real
train step of the run's networks at its batch size for every candidate, alternating rounds and
keeping each candidate's best round, then taking the fastest (a few seconds).

The result is cached per machine and configuration (CPU model, core count, torch version and
threads, networks, batch size, candidates) in a JSON file shared by every clone on the machine, so
reruns and queued experiments do not pay for it again. A run records its choice in its checkpoint
folder: resuming keeps it, whatever a new timing would say, so a run's numerics never change halfway.

On CUDA and MPS nothing is timed: bf16 where the device supports it (CUDA, compiled), else fp32.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from filelock import FileLock

from anime_dcgan.device import Runtime, supports_bf16
from anime_dcgan.params import OptimParams
from anime_dcgan.training.cpu_ops import use_cpu_kernels
from anime_dcgan.training.networks import ModelConfig
from anime_dcgan.training.step import build_gan, draw_step_inputs, ema_decay_at, train_step
from anime_dcgan.util.io import atomic_write_json

CACHE_ENV = "ANIME_DCGAN_CALIBRATION_CACHE"  # the cache file; default below
WARMUP_STEPS = 1   # untimed steps of each fresh candidate: oneDNN picks its kernels, Adam allocates its state
ROUNDS = 2         # timed steps per candidate, one per round, candidates alternating
RECORD_FILE = "step_choice.json"  # in a run's checkpoint folder


@dataclass(frozen=True)
class StepChoice:
    precision: str     # "fp32" | "bf16"
    cpu_kernels: bool  # cpu_ops' weight-gradient layers swapped in

    @property
    def label(self) -> str:
        return f"{self.precision}{'-cpu_kernels' if self.cpu_kernels else ''}"

    def applied_to(self, runtime: Runtime) -> Runtime:
        return Runtime(runtime.device, torch.bfloat16 if self.precision == "bf16" else None, runtime.compile,
                       self.cpu_kernels)


@dataclass
class Calibration:
    choice: StepChoice
    source: str  # "measured", "cached" (this machine timed it before), "recorded" (the resumed run's), "fixed"
    images_per_second: dict[str, float] = field(default_factory=dict)  # by candidate label, when timed

    def describe(self) -> str:
        timings = ", ".join(f"{label} {rate:.1f}" for label, rate in self.images_per_second.items())
        return f"{self.choice.label} ({self.source}{': images/s ' + timings if timings else ''})"


def candidates(runtime: Runtime, precision: str) -> list[StepChoice]:
    """The step variants worth timing for a `precision` parameter (auto, fp32 or bf16)."""
    if runtime.device.type != "cpu":
        return [StepChoice(runtime.precision, False)]
    # bf16 where oneDNN runs it natively: elsewhere it is emulated, always slower than fp32
    precisions = ([p for p in ("fp32", "bf16") if p == "fp32" or supports_bf16(runtime.device)]
                  if precision == "auto" else [precision])
    return [StepChoice(p, kernels) for p in precisions for kernels in (True, False)]


def step_runner(model: ModelConfig, optim: OptimParams, runtime: Runtime, dataset: torch.Tensor) -> Callable[[], None]:
    """The train stage's step on fresh networks, as the loop runs it (without logging): one call, one
    step. dataset: uint8 (N, 3, S, S) on the device. Draws from the global RNG."""
    from anime_dcgan.training.loop import begin_step, networks_for_steps  # the loop imports this module

    gan = build_gan(model, optim, runtime.device)
    if runtime.cpu_kernels:
        use_cpu_kernels(gan.generator, gan.discriminator)
    step_gan = networks_for_steps(gan, runtime)
    step_number = 0

    def step() -> None:
        nonlocal step_number
        step_number += 1
        begin_step(runtime)
        indices, z, targets = draw_step_inputs(len(dataset), optim.batch_size, model.nz, optim.label_noise,
                                               runtime.device)
        train_step(step_gan, dataset, indices, z, targets, runtime.autocast(), ema_decay_at(step_number, optim.ema_decay))

    return step


def time_candidates(factories: dict[str, Callable[[], Callable[[], None]]], rounds: int = ROUNDS) -> dict[str, float]:
    """Seconds of each candidate's fastest timed step. Each round builds every candidate in turn
    (`factories` make a fresh step runner), runs WARMUP_STEPS untimed steps and one timed step, then
    frees it: the candidates alternate, so a slow spell of the machine reaches all of them alike, and
    only one candidate's networks are in memory at a time."""
    best = dict.fromkeys(factories, float("inf"))
    for _ in range(rounds):
        for label, make in factories.items():
            run = make()
            for _ in range(WARMUP_STEPS):
                run()
            started = time.perf_counter()
            run()
            best[label] = min(best[label], time.perf_counter() - started)
            del run
    return best


def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anime-dcgan" / "calibration.json"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cache_key(model: ModelConfig, batch_size: int, choices: list[StepChoice]) -> str:
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    config = {"model": asdict(model), "batch_size": batch_size, "candidates": [c.label for c in choices]}
    return hashlib.sha256(json.dumps([machine, config], sort_keys=True).encode()).hexdigest()[:20]


def calibrate(model: ModelConfig, optim: OptimParams, runtime: Runtime, precision: str,
              cache: Path | None = None) -> Calibration:
    """The fastest step variant for this machine and configuration (cached), without disturbing the
    global RNG."""
    choices = candidates(runtime, precision)
    if len(choices) == 1:
        return Calibration(choices[0], "fixed")
    cache = cache or cache_path()
    key = cache_key(model, optim.batch_size, choices)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):  # one timing per key, even with several stages starting at once
        entries = json.loads(cache.read_text()) if cache.is_file() else {}
        if key in entries:
            entry = entries[key]
            return Calibration(StepChoice(**entry["choice"]), "cached", entry["images_per_second"])
        images_per_second = _measure(model, optim, runtime, choices)
        best = max(choices, key=lambda c: images_per_second[c.label])
        entries[key] = {"choice": asdict(best), "images_per_second": images_per_second,
                        "cpu": cpu_model(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(cache, entries)
    return Calibration(best, "measured", images_per_second)


def _measure(model: ModelConfig, optim: OptimParams, runtime: Runtime, choices: list[StepChoice]) -> dict[str, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        size = model.image_size
        dataset = torch.randint(0, 256, (optim.batch_size, 3, size, size), dtype=torch.uint8,
                                device=runtime.device)                                     # (B, 3, S, S)
        factories = {c.label: functools.partial(step_runner, model, optim, c.applied_to(runtime), dataset)
                     for c in choices}
        seconds = time_candidates(factories)
    return {label: round(optim.batch_size / s, 1) for label, s in seconds.items()}


def recorded_choice(folder: Path) -> StepChoice | None:
    path = folder / RECORD_FILE
    return StepChoice(**json.loads(path.read_text())) if path.is_file() else None


def record_choice(folder: Path, choice: StepChoice) -> None:
    atomic_write_json(folder / RECORD_FILE, asdict(choice))
