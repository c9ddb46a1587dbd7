"""The training step with and without anime_dcgan.training.cpu_ops, interleaved step by step in one process.

The CPU speed of this 2-core guest drifts between two levels (~12% apart) over tens of seconds, more
than the difference being measured; separate runs compare whichever level each one caught. Here the
two steps alternate (the order flips every pair), so both see the same machine, and each pair of
neighbouring steps gives one ratio.

    .venv/bin/python benchmarks/weight_grad_ab.py                 # 40 pairs at batch 128, ~2 min
    .venv/bin/python benchmarks/weight_grad_ab.py --pairs 10 --batch-size 64

Uses the preprocess stage's data/processed/images.npy (run `make repro` first) or --images-npy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from train_throughput import (  # beside this script
    PARAMS_YAML,
    REPO_ROOT,
    ProjectTrainer,
    positive,
)

from anime_dcgan.device import pick_runtime, tune_cpu_allocator
from anime_dcgan.params import load_params
from anime_dcgan.training.loop import load_dataset


def timed(trainer: ProjectTrainer) -> float:
    started = time.perf_counter()
    trainer.step()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=positive, default=40)
    parser.add_argument("--warmup", type=positive, default=3)
    parser.add_argument("--batch-size", type=positive, default=128)
    parser.add_argument("--images-npy", type=Path, default=REPO_ROOT / "data/processed/images.npy")
    args = parser.parse_args(argv)
    if not args.images_npy.is_file():
        raise SystemExit(f"{args.images_npy} does not exist: run `make repro` first, or pass --images-npy")

    tune_cpu_allocator()
    torch.manual_seed(0)
    runtime = pick_runtime("cpu", "auto", False)  # the CPU path is the only one the layers change
    dataset = load_dataset(args.images_npy, runtime.device)
    params = load_params(PARAMS_YAML)
    layers = ProjectTrainer(dataset, args.batch_size, runtime, params, weight_grad_as_conv=True)
    onednn = ProjectTrainer(dataset, args.batch_size, runtime, params, weight_grad_as_conv=False)
    for _ in range(args.warmup):
        layers.step()
        onednn.step()

    seconds: dict[ProjectTrainer, list[float]] = {layers: [], onednn: []}
    for pair in range(args.pairs):
        for trainer in ((onednn, layers) if pair % 2 else (layers, onednn)):
            seconds[trainer].append(timed(trainer))
    with_layers, without = seconds[layers], seconds[onednn]
    ratios = [old / new for old, new in zip(without, with_layers)]

    def rate(step_seconds: list[float]) -> float:
        return args.batch_size * len(step_seconds) / sum(step_seconds)

    print(f"{runtime.precision}, batch {args.batch_size}, {args.pairs} interleaved pairs, "
          f"{torch.get_num_threads()} threads")
    print(f"anime_dcgan.training.cpu_ops:  {rate(with_layers):.1f} images/s")
    print(f"oneDNN's gradients:  {rate(without):.1f} images/s")
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"speed-up: {rate(with_layers) / rate(without):.3f}x overall; per pair median {statistics.median(ratios):.3f}x "
          f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}), faster in {sum(r > 1 for r in ratios)} of {len(ratios)}")


if __name__ == "__main__":
    main()
