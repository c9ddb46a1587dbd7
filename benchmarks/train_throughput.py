"""Training throughput: pytorch/examples' DCGAN training loop against the project's training step,
both on arch `dcgan` (nz=100, ngf=ndf=64, 64x64) at the same batch size on the same images.

reference: pytorch/examples `dcgan/main.py`'s loop: ImageFolder (Resize, CenterCrop, ToTensor,
Normalize) in a DataLoader (shuffle, 2 workers), sigmoid + BCELoss, Adam(2e-4, (0.5, 0.999)), fp32,
eager, contiguous, and the five values it reads on the host every iteration to print them.
project: the train stage's step as training/loop.py sets it up and runs it, on the preprocess
stage's uint8 images on the device, with pick_runtime(--device, --precision, compile "auto") and
the precision and CPU kernels the stage's calibration (training/calibration.py) picks.

Images: the real sample (benchmarks/common.py) when present, else synthetic faces. Every run is a
fresh child process; the sides alternate round after round and each keeps its best round; warm-up
steps are not timed. --conv-limit: the project's step as a share of benchmarks/conv_limit.py's
limit, beside the step's ceiling (its convolutions at their speeds alone, nothing else taking time).

    .venv/bin/python benchmarks/train_throughput.py --conv-limit --json-out results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from common import REPO_ROOT, SAMPLE_ENV, sample_zip  # beside this script
from conv_limit import conv_limit, step_convolution_bound, synchronise
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from anime_dcgan.data.preprocess import preprocess_images
from anime_dcgan.data.synthetic import write_synthetic_dataset
from anime_dcgan.device import Runtime, pick_runtime, tune_cpu_allocator
from anime_dcgan.params import load_params
from anime_dcgan.training.calibration import calibrate, cpu_model, step_runner
from anime_dcgan.training.loop import load_dataset, seed_everything
from anime_dcgan.training.networks import Discriminator, Generator, ModelConfig
from anime_dcgan.util.io import atomic_write_json
from anime_dcgan.util.stage import run_stage

IMAGE_SIZE = 64
MODEL = ModelConfig("dcgan", IMAGE_SIZE)  # pytorch/examples' defaults: nz=100, ngf=ndf=64
LR, BETAS = 0.0002, (0.5, 0.999)          # pytorch/examples' defaults
REFERENCE_WORKERS = 2                     # pytorch/examples' default --workers
SYNTHETIC_COUNT = 2000                    # faces drawn when the real sample is absent
SIDES = ("reference", "project")


def reference_step(image_root: Path, batch_size: int, device: torch.device) -> Callable[[], int]:
    """One iteration of pytorch/examples' loop per call; returns the number of images it trained on."""
    from torchvision import datasets, transforms

    dataset = datasets.ImageFolder(str(image_root), transforms.Compose([
        transforms.Resize(IMAGE_SIZE), transforms.CenterCrop(IMAGE_SIZE), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, num_workers=REFERENCE_WORKERS)
    # epoch after epoch, as the example's outer loop: its workers restart every epoch
    batches = (images for _epoch in itertools.count() for images, _labels in loader)
    generator = Generator(MODEL).to(device)  # the example's netG: the same layers and N(0, 0.02) init
    discriminator = nn.Sequential(Discriminator(MODEL), nn.Sigmoid()).to(device)  # its netD ends in a sigmoid
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=LR, betas=BETAS)
    opt_g = torch.optim.Adam(generator.parameters(), lr=LR, betas=BETAS)
    printed: dict[str, float] = {}  # what the example prints every iteration

    def step() -> int:
        real = next(batches).to(device)                                     # (B, 3, 64, 64) in [-1, 1]
        batch = real.size(0)
        # D: maximise log(D(x)) + log(1 - D(G(z)))
        discriminator.zero_grad()
        label = torch.full((batch,), 1.0, device=device)                   # (B,)
        output = discriminator(real).view(-1)                              # (B,)
        loss_d_real = criterion(output, label)
        loss_d_real.backward()
        printed["D(x)"] = output.mean().item()
        fake = generator(torch.randn(batch, MODEL.nz, 1, 1, device=device))  # (B, 3, 64, 64)
        label.fill_(0.0)
        output = discriminator(fake.detach()).view(-1)
        loss_d_fake = criterion(output, label)
        loss_d_fake.backward()
        printed["D(G(z)) before"] = output.mean().item()
        loss_d = loss_d_real + loss_d_fake
        opt_d.step()
        # G: maximise log(D(G(z)))
        generator.zero_grad()
        label.fill_(1.0)
        output = discriminator(fake).view(-1)
        loss_g = criterion(output, label)
        loss_g.backward()
        printed["D(G(z)) after"] = output.mean().item()
        opt_g.step()
        printed["Loss_D"], printed["Loss_G"] = loss_d.item(), loss_g.item()
        return batch

    return step


def project_step(dataset: torch.Tensor, batch_size: int, runtime: Runtime) -> Callable[[], int]:
    """The train stage's step on `dataset` (uint8 (N, 3, 64, 64) on the device), without the loop's
    logging and checkpoints; returns the number of images it trained on."""
    optim = load_params(REPO_ROOT / "params.yaml").optim.model_copy(update={"batch_size": batch_size})
    seed_everything(0)
    step = step_runner(MODEL, optim, runtime, dataset)

    def counted_step() -> int:
        step()
        return batch_size

    return counted_step


def timed_run(spec: dict) -> float:
    """Images/s of one side over spec["steps"] steps after spec["warmup"] untimed ones (a child process)."""
    runtime = dataclasses.replace(pick_runtime(spec["device"], spec["precision"], "auto"),
                                  cpu_kernels=spec["cpu_kernels"])
    torch.manual_seed(0)
    if spec["side"] == "reference":
        step = reference_step(Path(spec["raw"]), spec["batch_size"], runtime.device)
    else:
        if runtime.device.type == "cpu":
            tune_cpu_allocator()  # before the dataset and the networks are allocated, as the stage does
        step = project_step(load_dataset(Path(spec["images_npy"]), runtime.device), spec["batch_size"], runtime)
    for _ in range(spec["warmup"]):
        step()
    synchronise(runtime.device)
    started = time.perf_counter()
    images = sum(step() for _ in range(spec["steps"]))
    synchronise(runtime.device)  # on CUDA the project's step never waits for the device itself
    return images / (time.perf_counter() - started)


def measure(side: str, spec: dict) -> float:
    child = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "side": side})],
                           check=False, stdout=subprocess.PIPE, text=True)
    if child.returncode:
        raise SystemExit(f"the {side} run failed (exit {child.returncode}); its error is printed above")
    return json.loads(child.stdout.splitlines()[-1])


def project_flops_per_image(batch_size: int, runtime: Runtime) -> float:
    """FLOPs of one project step per image, counted eager: compiling fuses the elementwise work but
    leaves the convolutions, the counted FLOPs, as they are."""
    dataset = torch.randint(0, 256, (batch_size, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, device=runtime.device)
    step = project_step(dataset, batch_size, dataclasses.replace(runtime, compile=False))
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch_size


def prepare_images(work: Path) -> tuple[Path, Path, str, int]:
    """The raw folder as the download stage leaves it (the reference reads it), the preprocess stage's
    images.npy of it (the project's), where the images came from and how many preprocess kept."""
    raw, zip_path = work / "raw", sample_zip()
    if zip_path.is_file():
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(raw / "images")
        source = str(zip_path)
    else:
        print(f"{zip_path} not found (set {SAMPLE_ENV} to use another copy): drawing {SYNTHETIC_COUNT:,} "
              "synthetic faces", flush=True)
        write_synthetic_dataset(raw, SYNTHETIC_COUNT, seed=0, progress=False)
        source = f"{SYNTHETIC_COUNT} synthetic faces"
    min_size = load_params(REPO_ROOT / "params.yaml").data.min_size
    kept = preprocess_images(raw, work / "processed", IMAGE_SIZE, min_size, progress=False)
    return raw, work / "processed/images.npy", source, kept.n_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each side keeps its best (default 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="of the project's step (default auto, as the pipeline); the reference runs fp32")
    parser.add_argument("--conv-limit", action="store_true",
                        help="also measure the convolution limit (conv_limit.py) and the project step's share of it")
    parser.add_argument("--json-out", type=Path, help="write the results to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the child side of one run
    args = parser.parse_args()
    if args.child:
        print(json.dumps(timed_run(json.loads(args.child))))
        return
    if min(args.steps, args.repeats) < 1 or args.warmup < 0 or args.batch_size < 2:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0 and --batch-size >= 2")
    runtime = pick_runtime(args.device, args.precision, "auto")
    if runtime.device.type == "cpu":
        tune_cpu_allocator()  # for the limit probe here: the project's step runs with it
    rounds: dict[str, list[float]] = {side: [] for side in SIDES}
    limits: list[float] = []
    bounds: list[float] = []  # the step's ceiling: its convolutions at their speeds alone, nothing else
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as temp:
        raw, images_npy, source, n_images = prepare_images(Path(temp))
        print(f"images: {source}; {n_images:,} kept by preprocess for the project", flush=True)
        # the project's step variant as the train stage chooses it, timed afresh here (not cached)
        optim = load_params(REPO_ROOT / "params.yaml").optim.model_copy(update={"batch_size": args.batch_size})
        calibration = calibrate(MODEL, optim, runtime, args.precision, cache=Path(temp) / "calibration.json")
        runtime = calibration.choice.applied_to(runtime)
        print(f"project step variant: {calibration.describe()}", flush=True)
        spec = {"device": runtime.device.type, "precision": runtime.precision, "cpu_kernels": runtime.cpu_kernels,
                "batch_size": args.batch_size,
                "steps": args.steps, "warmup": args.warmup, "raw": str(raw), "images_npy": str(images_npy)}
        for round_number in range(1, args.repeats + 1):
            for side in SIDES:  # alternating: a lasting change of the machine's speed reaches both sides
                rounds[side].append(measure(side, spec))
                print(f"round {round_number}/{args.repeats}: {side} {rounds[side][-1]:.1f} images/s", flush=True)
            if args.conv_limit:
                dtype = runtime.autocast_dtype or torch.float32
                limits.append(conv_limit(MODEL, args.batch_size, dtype, runtime.device))
                bounds.append(step_convolution_bound(MODEL, args.batch_size, dtype, runtime.device))
    best = {side: max(rates) for side, rates in rounds.items()}
    report = {
        "command": shlex.join([sys.executable, *sys.argv]), "cpu": cpu_model(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": runtime.device.type,
        "gpu": torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else None,
        "project_precision": runtime.precision, "project_cpu_kernels": runtime.cpu_kernels,
        "project_compiled": runtime.compile, "calibration_images_per_s": calibration.images_per_second,
        "arch": MODEL.arch,
        "image_size": IMAGE_SIZE, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "images": source, "project_images": n_images,
        **{f"{side}_images_per_s": best[side] for side in SIDES},
        **{f"{side}_rounds_images_per_s": rounds[side] for side in SIDES},
        "project_over_reference": best["project"] / best["reference"],
    }
    print(f"best of {args.repeats}: reference (fp32) {best['reference']:.1f} images/s, project "
          f"({calibration.choice.label}) {best['project']:.1f}: {report['project_over_reference']:.2f}x")
    if args.conv_limit:
        gflop_per_image = project_flops_per_image(args.batch_size, runtime) / 1e9
        report |= {"conv_limit_gflops": max(limits), "project_gflop_per_image": gflop_per_image,
                   "project_gflops": best["project"] * gflop_per_image,
                   "project_fraction_of_conv_limit": best["project"] * gflop_per_image / max(limits),
                   "step_convolution_bound_gflops": max(bounds),
                   "step_convolution_bound_fraction": max(bounds) / max(limits)}
        print(f"project step: {gflop_per_image:.2f} GFLOP/image, {report['project_gflops']:.0f} GFLOP/s: "
              f"{report['project_fraction_of_conv_limit']:.0%} of the convolution limit ({max(limits):.0f} GFLOP/s); "
              f"its convolutions alone, nothing else taking time: {max(bounds):.0f} GFLOP/s, "
              f"{report['step_convolution_bound_fraction']:.0%} of the limit")
    if args.json_out:
        atomic_write_json(args.json_out, report)


if __name__ == "__main__":
    run_stage("train_throughput", main)  # SIGTERM handled like Ctrl-C: the temporary folder is removed
