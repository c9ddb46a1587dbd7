"""Training throughput of the project's step against pytorch/examples' DCGAN loop, side by side.

Both sides train the same architecture (arch "dcgan": nz=100, ngf=ndf=64) at the same batch size on
the same images, on the same machine, in the same invocation:

- reference: pytorch/examples `dcgan/main.py`'s loop, re-implemented here: ImageFolder over the image
  folder (Resize, CenterCrop, ToTensor, Normalize to [-1, 1]), DataLoader(shuffle, 2 workers),
  discriminator ending in a sigmoid with BCELoss, Adam(2e-4, (0.5, 0.999)), fp32, eager, contiguous
  memory, and the four `.item()` reads per iteration (errD, errG, D(x), D(G(z))) that it prints.
- project: the train stage's step: build_gan + draw_step_inputs + train_step of anime_dcgan.training.step on the
  dataset as one uint8 tensor on the device (anime_dcgan.training.loop.load_dataset of the preprocess stage's
  images.npy), with the runtime of anime_dcgan.device.pick_runtime (bf16 autocast where supported,
  channels_last, torch.compile per --compile) and tune_cpu_allocator() on the CPU.
- variants of the project step: the other compile setting (compiled when the pipeline runs eager, eager
  when it compiles); on the CPU, without tune_cpu_allocator, and with oneDNN's own weight gradients
  for the two layers next to the 4x4 map (anime_dcgan.training.cpu_ops turned back into PyTorch's classes).

Every run is a fresh child process (peak RSS is per run; no run inherits another's allocator or
compiled state) and the configurations alternate round by round, so a lasting change of machine load
hits all of them alike; the best round of each is reported (a drift of the machine's speed that lasts
about one round can still favour one configuration: weight_grad_ab.py interleaves single steps; on the
CPU, thread_scaling() timed before and after each run says which state of the machine it saw).
In a run, --warmup steps (which include torch.compile's work and the DataLoader's start) are timed
apart from the --steps timed steps; compile time = warm-up time - warmup x the median timed step.
All runs of one invocation share a fresh Inductor cache: the first compiled run compiles cold (what a
first training run pays), later ones reuse its kernels.

FLOPs per image are counted with torch.utils.flop_counter.FlopCounterMode over one step of each loop;
the FLOP limit is the best throughput of a large bf16 convolution forward measured here (inference
mode, channels_last), and a fp32 one is measured for comparison.

    .venv/bin/python benchmarks/train_throughput.py                 # CPU (CUDA when present), ~5-10 min
    .venv/bin/python benchmarks/train_throughput.py --steps 4 --warmup 2 --repeats 1   # a quick look
    .venv/bin/python benchmarks/train_throughput.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from child_rss import run_sampling_rss  # beside this script
from torch import nn

from anime_dcgan.device import Runtime, peak_rss_bytes, pick_runtime, tune_cpu_allocator
from anime_dcgan.errors import PipelineError
from anime_dcgan.params import Params, load_params
from anime_dcgan.training.cpu_ops import Conv2dTo4x4, ConvTranspose2dFrom4x4
from anime_dcgan.training.loop import begin_step, load_dataset, networks_for_steps
from anime_dcgan.training.networks import Discriminator, Generator, ModelConfig
from anime_dcgan.training.step import (
    GanConfig,
    build_gan,
    draw_step_inputs,
    ema_decay_at,
    train_step,
)
from anime_dcgan.util.io import atomic_write_json
from anime_dcgan.util.stage import run_stage

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ZIP = Path(os.environ.get("ANIME_FACES_SAMPLE_ZIP",
                                 REPO_ROOT.parent / "shared/data/anime-faces-64-sample.zip"))
PARAMS_YAML = REPO_ROOT / "params.yaml"
LR, BETAS = 0.0002, (0.5, 0.999)           # pytorch/examples' defaults, used on both sides
REFERENCE_WORKERS = 2                     # pytorch/examples' default --workers
TARGET_RATIO_CPU = 2.5                    # the target for project / reference on the CPU
# the parent samples the memory of the timed process tree this often; every 20 ms cost ~6% of a core
# and slowed the project's 2-thread step by 6-15% on 2 cores (its threads wait for each other)
TREE_RSS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class RunConfig:
    """One configuration to time: the reference loop or a variant of the project step."""
    name: str
    side: str                  # "reference" | "project"
    compile: bool = False      # project only
    tune_allocator: bool = False
    weight_grad_as_conv: bool = True  # project only: anime_dcgan.training.cpu_ops as the models build them


@dataclass
class RunResult:
    config: RunConfig
    images: int                       # images trained on in the timed steps
    seconds: float                    # wall time of the timed steps
    step_seconds: list[float]         # per timed step (host time; on CUDA only the reference syncs)
    warmup_seconds: list[float]       # per warm-up step
    minor_faults: int                 # of the training process over the timed steps
    max_rss_bytes: int                # training process, whole life (VmHWM)
    imports_rss_bytes: int            # the same when the run starts: the imported libraries alone
    tree_rss_bytes: int = 0           # training process + its children (DataLoader/compile workers), sampled
    precision: str = "fp32"
    thread_scaling: tuple[float, float] | None = None  # thread_scaling() just before and just after the run

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def median_images_per_s(self) -> float:
        return self.images / len(self.step_seconds) / statistics.median(self.step_seconds)

    @property
    def compile_seconds(self) -> float:
        """Warm-up time beyond what the same number of steady steps take."""
        return max(0.0, sum(self.warmup_seconds) - len(self.warmup_seconds) * statistics.median(self.step_seconds))


# ---------------------------------------------------------------- the two training loops

class ReferenceTrainer:
    """pytorch/examples' DCGAN iteration: fp32, eager, contiguous, sigmoid + BCELoss, per-step host reads."""

    def __init__(self, image_size: int, device: torch.device):
        config = ModelConfig("dcgan", image_size)  # the same nets and N(0, 0.02) init as the example's
        self.device, self.nz = device, config.nz
        self.generator = Generator(config).to(device)
        self.discriminator = nn.Sequential(Discriminator(config), nn.Sigmoid()).to(device)  # (B, 1) probability
        self.criterion = nn.BCELoss()
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=LR, betas=BETAS)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=LR, betas=BETAS)

    def step(self, images: torch.Tensor) -> dict[str, float]:
        """images: float (B, 3, S, S) in [-1, 1] from the DataLoader, on the host."""
        D, G = self.discriminator, self.generator
        real = images.to(self.device)                                       # (B, 3, S, S)
        batch = real.size(0)
        # D: maximise log(D(x)) + log(1 - D(G(z)))
        D.zero_grad()
        label = torch.full((batch,), 1.0, device=self.device)              # (B,)
        output = D(real).view(-1)                                           # (B,)
        loss_d_real = self.criterion(output, label)
        loss_d_real.backward()
        d_x = output.mean().item()
        z = torch.randn(batch, self.nz, 1, 1, device=self.device)          # (B, nz, 1, 1)
        fake = G(z)                                                         # (B, 3, S, S)
        label.fill_(0.0)
        output = D(fake.detach()).view(-1)
        loss_d_fake = self.criterion(output, label)
        loss_d_fake.backward()
        d_g_z1 = output.mean().item()
        loss_d = loss_d_real + loss_d_fake
        self.opt_d.step()
        # G: maximise log(D(G(z)))
        G.zero_grad()
        label.fill_(1.0)
        output = D(fake).view(-1)
        loss_g = self.criterion(output, label)
        loss_g.backward()
        d_g_z2 = output.mean().item()
        self.opt_g.step()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "d_x": d_x, "d_g_z1": d_g_z1, "d_g_z2": d_g_z2}


def reference_loader(image_root: Path, image_size: int, batch_size: int) -> torch.utils.data.DataLoader:
    from torchvision import datasets, transforms

    dataset = datasets.ImageFolder(str(image_root), transform=transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ]))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=REFERENCE_WORKERS)


def endless(loader: torch.utils.data.DataLoader) -> Iterator[torch.Tensor]:
    """Epoch after epoch, as the example's outer loop (its workers restart at every epoch)."""
    while True:
        for images, _ in loader:
            yield images


class ProjectTrainer:
    """The train stage's step (anime_dcgan.training.loop._Loop.run without its logging and checkpoints)."""

    def __init__(self, dataset: torch.Tensor, batch_size: int, runtime: Runtime, params: Params,
                 weight_grad_as_conv: bool = True):
        self.dataset, self.batch_size, self.runtime, self.params = dataset, batch_size, runtime, params
        model = ModelConfig("dcgan", dataset.shape[-1])
        self.nz = model.nz
        config = GanConfig(lr_g=LR, lr_d=LR, beta1=BETAS[0], beta2=BETAS[1], label_noise=params.label_noise)
        gan = build_gan(model, config, runtime.device)
        if not weight_grad_as_conv:
            use_pytorch_layers(gan.generator, gan.discriminator)
        self.step_gan = networks_for_steps(gan, runtime)  # compiled as the stage compiles them
        self.metric_sums = torch.zeros(6, device=runtime.device)  # summed on the device, as the stage does
        self.steps_done = 0

    def step(self) -> int:
        self.steps_done += 1
        begin_step(self.runtime)
        indices, z, targets = draw_step_inputs(len(self.dataset), self.batch_size, self.nz,
                                               self.params.label_noise, self.runtime.device)
        metrics = train_step(self.step_gan, self.dataset, indices, z, targets, self.runtime.autocast(),
                             ema_decay_at(self.steps_done, self.params.ema_decay))
        self.metric_sums += metrics
        return self.batch_size


def use_pytorch_layers(*networks: nn.Module) -> None:
    """Turn anime_dcgan.training.cpu_ops' two layers back into PyTorch's own classes (same weights, same forward,
    oneDNN's weight gradient): what the step would cost without them."""
    for network in networks:
        for layer in network.modules():
            if isinstance(layer, Conv2dTo4x4):
                layer.__class__ = nn.Conv2d
            elif isinstance(layer, ConvTranspose2dFrom4x4):
                layer.__class__ = nn.ConvTranspose2d


# ---------------------------------------------------------------- child side: one timed run

def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], int], warmup: int, steps: int, device: torch.device) -> dict:
    warmup_seconds = []
    for _ in range(warmup):
        started = time.perf_counter()
        step()
        synchronise(device)
        warmup_seconds.append(time.perf_counter() - started)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    images, step_seconds = 0, []
    started = time.perf_counter()
    for _ in range(steps):
        step_started = time.perf_counter()
        images += step()
        step_seconds.append(time.perf_counter() - step_started)
    synchronise(device)
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": seconds, "step_seconds": step_seconds, "warmup_seconds": warmup_seconds,
            "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before}


def run_child(spec: dict) -> dict:
    """Build one side, time it, return its figures (printed by the caller as one JSON line)."""
    config = RunConfig(**spec["config"])
    device = torch.device(spec["device"])
    imports_rss = peak_rss_bytes()  # torch's libraries alone: ~0.7 GB
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if config.side == "reference":
        trainer = ReferenceTrainer(spec["image_size"], device)
        batches = endless(reference_loader(Path(spec["image_root"]), spec["image_size"], spec["batch_size"]))

        def step() -> int:
            images = next(batches)
            trainer.step(images)
            return len(images)
        precision = "fp32"
    else:
        if config.tune_allocator:
            tune_cpu_allocator()  # before the dataset and the networks are allocated, as the stage does
        runtime = pick_runtime(spec["device"], spec["precision"], config.compile)
        params = load_params(spec["params_yaml"])
        trainer = ProjectTrainer(load_dataset(Path(spec["images_npy"]), device), spec["batch_size"], runtime, params,
                                 config.weight_grad_as_conv)
        step, precision = trainer.step, runtime.precision
    figures = time_steps(step, spec["warmup"], spec["steps"], device)
    return {**figures, "max_rss_bytes": peak_rss_bytes(), "imports_rss_bytes": imports_rss, "precision": precision}


# ---------------------------------------------------------------- parent side

def measure(config: RunConfig, spec: dict, inductor_cache: Path) -> RunResult:
    """Run one configuration in a fresh child process while sampling the resident memory of its tree."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)}
    child_spec = json.dumps({**spec, "config": asdict(config)})
    returncode, stdout, peak = run_sampling_rss([sys.executable, __file__, "--child", child_spec], env,
                                                interval_s=TREE_RSS_INTERVAL_S)
    if returncode != 0:
        raise SystemExit(f"the {config.name} run failed (exit {returncode}); its error is printed above")
    figures = json.loads(stdout.strip().splitlines()[-1])
    return RunResult(config, tree_rss_bytes=peak, **figures)


def conv_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """Best FLOP/s of a large 3x3 convolution forward (channels_last, inference mode): the machine's limit."""
    # 77 GFLOP: of five shapes tried on the 2-core EPYC (3x3 convs, 128-512 channels, 8x8 to 32x32
    # maps), the one oneDNN ran fastest in both bf16 and fp32
    batch, channels, size = 256, 512, 8
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)      # (256, 512, 8, 8)
    weight = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)   # (512, 512, 3, 3)
    x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
    flops = 2 * batch * channels * size * size * channels * 3 * 3
    with torch.inference_mode():
        return flops / best_seconds(lambda: F.conv2d(x, weight, padding=1), device, repeats)


def best_seconds(call: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The shortest of `repeats` timed calls, after one untimed call in which oneDNN/cuDNN pick and
    prepare their kernel (for the current thread count)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        synchronise(device)
        started = time.perf_counter()
        call()
        synchronise(device)
        best = min(best, time.perf_counter() - started)
    return best


def thread_scaling(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float | None:
    """How many times faster oneDNN computes the weight gradient of the 64 -> 128 layer (batch 128) on all
    torch threads than on one; None on CUDA or with one thread. On the 2-core guest this was written on,
    this swings between ~1.8 and ~1.25 for minutes at a time, in every process alike, while one thread's
    time stays put: a state of the machine (most likely where the host puts the two vCPUs) that slows
    the project's step, its backward kernels, by ~12% and the reference hardly (train_throughput.md).
    Timed around each run to tell which state the run saw."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return None
    images = torch.randn(128, 64, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(128, 128, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(128, 64, 4, 4, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def weight_grad() -> None:
        torch.ops.aten.convolution_backward(grad_out, images, weight, None, [2, 2], [1, 1], [1, 1], False,
                                            [0, 0], 1, [False, True, False])

    try:
        all_threads = best_seconds(weight_grad, device, repeats)
        torch.set_num_threads(1)
        return best_seconds(weight_grad, device, repeats) / all_threads
    finally:
        torch.set_num_threads(threads)


def count_flops_per_image(image_size: int, batch_size: int, runtime: Runtime, params: Params) -> dict[str, float]:
    """FLOPs of one training step per image, counted on each loop with random data (FLOPs do not depend on it)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = runtime.device
    torch.manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size) * 2 - 1                  # (B, 3, S, S)
    dataset = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    reference = ReferenceTrainer(image_size, device)
    # eager: compiling fuses the elementwise work but leaves the convolutions, the counted FLOPs, alone
    project = ProjectTrainer(dataset, batch_size, Runtime(device, runtime.autocast_dtype, False), params)
    counted = {}
    for side, step in (("reference", lambda: reference.step(images)), ("project", project.step)):
        with FlopCounterMode(display=False) as counter:
            step()
        counted[side] = counter.get_total_flops() / batch_size
    return counted


def prepare_images(work: Path, image_dir: Path | None, synthetic_count: int) -> tuple[Path, str]:
    """A raw folder laid out as the download stage leaves it (raw/images/...), and where it came from."""
    raw = work / "raw"
    raw.mkdir()
    if image_dir is not None:
        if not image_dir.is_dir():
            raise SystemExit(f"--image-dir {image_dir} is not a folder: give a folder of images")
        (raw / "images").symlink_to(image_dir.resolve(), target_is_directory=True)
        return raw, str(image_dir)
    if SAMPLE_ZIP.is_file():
        with zipfile.ZipFile(SAMPLE_ZIP) as archive:
            archive.extractall(raw / "images")
        return raw, f"shared sample {SAMPLE_ZIP.name}"
    from anime_dcgan.data.synthetic import write_synthetic_dataset

    print(f"{SAMPLE_ZIP} not found: drawing {synthetic_count:,} synthetic faces", flush=True)
    write_synthetic_dataset(raw, synthetic_count, seed=0, progress=False)
    return raw, f"{synthetic_count:,} synthetic faces"


def run_configs(device: torch.device, compiled: bool, variants: bool) -> list[RunConfig]:
    """The reference, the project step as the pipeline runs it, and (with `variants`) the project step
    with the other compile setting and, on the CPU, without tune_cpu_allocator and with oneDNN's
    weight gradients (anime_dcgan.training.cpu_ops changes the CPU path only)."""
    cpu = device.type == "cpu"  # tune_cpu_allocator is for glibc's malloc, which CUDA memory bypasses
    configs = [RunConfig("reference", "reference"),
               RunConfig("project", "project", compile=compiled, tune_allocator=cpu)]
    if variants:
        other = "project eager" if compiled else "project compiled"
        configs.append(RunConfig(other, "project", compile=not compiled, tune_allocator=cpu))
    if variants and cpu:
        configs.append(RunConfig("project, default allocator", "project", compile=compiled, tune_allocator=False))
        configs.append(RunConfig("project, oneDNN weight gradients", "project", compile=compiled, tune_allocator=True,
                                 weight_grad_as_conv=False))
    return configs


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Summary:
    machine: dict
    settings: dict
    flops_per_image: dict[str, float]
    peak_flops: dict[str, float]
    runs: list[RunResult] = field(default_factory=list)

    def best(self, name: str) -> RunResult:
        return max((run for run in self.runs if run.config.name == name), key=lambda run: run.images_per_s)

    def names(self) -> list[str]:
        return list(dict.fromkeys(run.config.name for run in self.runs))

    def first(self, name: str) -> RunResult:
        return next(run for run in self.runs if run.config.name == name)

    def verdicts(self) -> dict:
        reference, project = self.best("reference"), self.best("project")
        ratio = project.images_per_s / reference.images_per_s
        device = self.machine["device"]
        verdicts: dict = {"ratio_project_over_reference": ratio}
        if device == "cpu":
            verdicts["target_ratio"] = TARGET_RATIO_CPU
            verdicts["target_met"] = ratio >= TARGET_RATIO_CPU
        limit = self.peak_flops["bf16"] / self.flops_per_image["project"]
        verdicts["bf16_limit_images_per_s_project"] = limit
        names = self.names()
        compile_variant = next((name for name in ("project eager", "project compiled") if name in names), None)
        if compile_variant:
            compiled_name = "project" if compile_variant == "project eager" else compile_variant
            eager_name = "project" if compile_variant == "project compiled" else compile_variant
            compiled, eager = self.best(compiled_name), self.best(eager_name)
            cold_compile = self.first(compiled_name).compile_seconds  # the first compiled run: empty Inductor cache
            images = self.settings["params_steps"] * self.settings["params_batch_size"]
            with_compile = cold_compile + images / compiled.images_per_s
            without = images / eager.images_per_s
            verdicts |= {"compile_seconds_cold": cold_compile, "default_run_images": images,
                         "default_run_seconds_compiled": with_compile, "default_run_seconds_eager": without,
                         "compile_pays_off": with_compile < without}
        if "project, default allocator" in names:
            untuned = self.best("project, default allocator")
            verdicts |= {"allocator_speedup": project.images_per_s / untuned.images_per_s,
                         "minor_faults_per_step_tuned": project.minor_faults / len(project.step_seconds),
                         "minor_faults_per_step_default": untuned.minor_faults / len(untuned.step_seconds)}
        if "project, oneDNN weight gradients" in names:
            verdicts["weight_grad_as_conv_speedup"] = \
                project.images_per_s / self.best("project, oneDNN weight gradients").images_per_s
        if project.thread_scaling is not None:
            verdicts["project_best_thread_scaling"] = list(project.thread_scaling)
        return verdicts

    def to_json(self) -> dict:
        runs = [{**asdict(run), "images_per_s": run.images_per_s, "median_images_per_s": run.median_images_per_s,
                 "compile_seconds": run.compile_seconds} for run in self.runs]
        best = {name: asdict(self.best(name)) | {"images_per_s": self.best(name).images_per_s}
                for name in self.names()}
        return {"machine": self.machine, "settings": self.settings, "flops_per_image": self.flops_per_image,
                "peak_flops": self.peak_flops, "best": best, "runs": runs, "verdicts": self.verdicts()}


def print_report(summary: Summary) -> None:
    reference = summary.best("reference")
    peak = summary.peak_flops["bf16"]
    cpu = summary.machine["device"] == "cpu"
    print("\n| run | precision | compiled | images/s (best) | all rounds | median step images/s | x reference "
          "| GFLOP/image | % of bf16 limit | warm-up s (compile s) | peak RSS MB | peak RSS incl. children MB "
          "| minor faults/step |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for name in summary.names():
        best = summary.best(name)
        rounds = ", ".join(f"{run.images_per_s:.0f}" for run in summary.runs if run.config.name == name)
        flops = summary.flops_per_image[best.config.side]
        compiled = "yes" if best.config.compile else "no"
        warmups = ", ".join(f"{sum(run.warmup_seconds):.1f} ({run.compile_seconds:.1f})" if run.config.compile
                            else f"{sum(run.warmup_seconds):.1f}"
                            for run in summary.runs if run.config.name == name)
        median = f"{best.median_images_per_s:.0f}" if cpu or best.config.side == "reference" else "n/a"
        print(f"| {name} | {best.precision} | {compiled} | {best.images_per_s:.1f} | {rounds} | {median} "
              f"| {best.images_per_s / reference.images_per_s:.2f} | {flops / 1e9:.2f} "
              f"| {100 * best.images_per_s * flops / peak:.0f}% | {warmups} | {best.max_rss_bytes / 2**20:,.0f} "
              f"| {best.tree_rss_bytes / 2**20:,.0f} | {best.minor_faults / len(best.step_seconds):,.0f} |")
    verdicts = summary.verdicts()
    print(f"\nproject / reference: {verdicts['ratio_project_over_reference']:.2f}x", end="")
    if "target_met" in verdicts:
        print(f" (target >= {TARGET_RATIO_CPU}x on the CPU: {'met' if verdicts['target_met'] else 'NOT met'})", end="")
    print(f"\nFLOP limit: bf16 conv {peak / 1e9:.0f} GFLOP/s (fp32 {summary.peak_flops['fp32'] / 1e9:.0f}) "
          f"-> {verdicts['bf16_limit_images_per_s_project']:.0f} images/s for the project's "
          f"{summary.flops_per_image['project'] / 1e9:.2f} GFLOP/image")
    if "compile_pays_off" in verdicts:
        print(f"compile: {verdicts['compile_seconds_cold']:.1f} s cold; a default run of "
              f"{summary.settings['params_steps']} steps x {summary.settings['params_batch_size']} images "
              f"(params.yaml) takes {verdicts['default_run_seconds_compiled']:.0f} s compiled (compile "
              f"included) vs {verdicts['default_run_seconds_eager']:.0f} s eager: "
              f"compile {'pays off' if verdicts['compile_pays_off'] else 'does NOT pay off'}")
    if "allocator_speedup" in verdicts:
        print(f"tune_cpu_allocator: {verdicts['allocator_speedup']:.2f}x images/s; minor faults/step "
              f"{verdicts['minor_faults_per_step_default']:,.0f} -> {verdicts['minor_faults_per_step_tuned']:,.0f}")
    if "weight_grad_as_conv_speedup" in verdicts:
        print(f"weight gradients as convolutions (anime_dcgan.training.cpu_ops): {verdicts['weight_grad_as_conv_speedup']:.2f}x "
              "images/s against oneDNN's")
    if "project_best_thread_scaling" in verdicts:
        print("thread scaling of oneDNN's weight gradient before -> after each run, round by round "
              "(thread_scaling(); on the 2-core guest of train_throughput.md ~1.8 normally, ~1.25 in its slow state):")
        for name in summary.names():
            scalings = ", ".join(f"{run.thread_scaling[0]:.2f} -> {run.thread_scaling[1]:.2f}"
                                 for run in summary.runs if run.config.name == name)
            print(f"  {name}: {scalings}")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    parser.add_argument("--steps", type=positive, default=30, help="timed steps per run (default 30)")
    parser.add_argument("--warmup", type=positive, default=3, help="untimed steps before them (default 3)")
    parser.add_argument("--repeats", type=positive, default=3, help="rounds of all runs, best kept (default 3)")
    parser.add_argument("--batch-size", type=positive, default=128, help="images per step (default 128)")
    parser.add_argument("--image-size", type=positive, default=64, help="pixels per side (default 64)")
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                        help="torch.compile of the project step (default auto, as the pipeline)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="precision of the project step (default auto, as the pipeline)")
    parser.add_argument("--threads", type=positive,
                        help="torch threads in every run (default: torch's default, one per core)")
    parser.add_argument("--no-variants", action="store_true", help="skip the eager and default-allocator variants")
    parser.add_argument("--image-dir", type=Path,
                        help="folder of images (default: the shared sample zip, else synthetic faces)")
    parser.add_argument("--synthetic-count", type=positive, default=2000,
                        help="synthetic faces drawn when the shared sample is absent (default 2000)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the child side of one run
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    if args.image_size < 16 or args.image_size & (args.image_size - 1):
        parser.error(f"--image-size must be a power of two >= 16, got {args.image_size}")

    try:
        compile_choice = {"auto": "auto", "true": True, "false": False}[args.compile]
        runtime = pick_runtime(args.device, args.precision, compile_choice)
        params = load_params(PARAMS_YAML)
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None
    device = runtime.device
    if args.threads:
        torch.set_num_threads(args.threads)  # for the FLOP limit too
    load_start = os.getloadavg()[0]
    machine = {
        "device": device.type, "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "python": platform.python_version(), "load_average_start": load_start,
    }
    gpu = f" ({machine['gpu']})" if machine["gpu"] else ""
    print(f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads, "
          f"torch {torch.__version__}, device {device.type}{gpu}; load average {load_start:.1f} at start", flush=True)

    from anime_dcgan.data.preprocess import preprocess_images

    with tempfile.TemporaryDirectory(prefix="train-throughput-") as temp:
        work = Path(temp)
        raw, source = prepare_images(work, args.image_dir, args.synthetic_count)
        try:  # the project's dataset: the preprocess stage's uint8 images.npy of the same folder
            kept = preprocess_images(raw, work / "processed", args.image_size, params.data.min_size,
                                     workers=0, progress=False)
        except PipelineError as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"images: {source}; {kept.n_images:,} kept by preprocess for the project side", flush=True)
        peak = {"bf16": conv_peak_flops(device, torch.bfloat16), "fp32": conv_peak_flops(device, torch.float32)}
        flops = count_flops_per_image(args.image_size, args.batch_size, runtime, params)
        settings = {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                    "batch_size": args.batch_size, "image_size": args.image_size, "arch": "dcgan",
                    "images": source, "project_images": kept.n_images, "compile": runtime.compile,
                    "precision": runtime.precision, "params_steps": params.steps,
                    "params_batch_size": params.batch_size}
        summary = Summary(machine, settings, flops, peak)
        spec = {"device": device.type, "image_size": args.image_size, "batch_size": args.batch_size,
                "steps": args.steps, "warmup": args.warmup, "precision": args.precision, "threads": args.threads,
                "image_root": str(raw), "images_npy": str(work / "processed/images.npy"),
                "params_yaml": str(PARAMS_YAML)}
        configs = run_configs(device, runtime.compile, not args.no_variants)
        probe_dtype = runtime.autocast_dtype or torch.float32
        scaling = thread_scaling(device, probe_dtype)
        for round_index in range(args.repeats):
            for config in configs:  # alternating: every configuration sees each phase of the machine's load
                result = measure(config, spec, work / "inductor-cache")
                scaling_before, scaling = scaling, thread_scaling(device, probe_dtype)
                if scaling is not None:
                    result.thread_scaling = (scaling_before, scaling)
                summary.runs.append(result)
                print(f"round {round_index + 1}/{args.repeats}: {config.name}: {result.images_per_s:.1f} images/s"
                      + (f" (thread scaling {scaling_before:.2f} -> {scaling:.2f})" if scaling is not None else ""),
                      flush=True)
    machine["load_average_end"] = os.getloadavg()[0]
    print(f"load average {machine['load_average_end']:.1f} at the end")
    print_report(summary)
    if args.json:
        atomic_write_json(args.json, summary.to_json())


if __name__ == "__main__":
    run_stage("train_throughput", main)  # SIGTERM handled like Ctrl-C: the temporary folder is removed
