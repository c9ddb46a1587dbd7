"""CPU sharing: what two training stages at once on one machine get from splitting the cores
between them (each cores // 2 threads, the share anime_dcgan.leases' cpu_share gives two holders)
rather than each starting torch's default thread count (one per core).

Three configurations of the train stage's step (train_throughput.py's `project_step`: arch `dcgan`,
64x64, params.yaml's optimiser, the precision and CPU kernels the stage's calibration picks), each
process a fresh child on the CPU:
  alone:   one training, default threads;
  default: two trainings at once, each with default threads;
  fair:    two trainings at once, each with cores // 2 threads.
The children of a configuration time their steps together: each runs its warm-up steps, then all
start timing at one signal, and each keeps stepping after its timed steps until all have finished,
so none is timed running alone. The configurations alternate their order round after round and
each keeps its round of highest total. Images are random: the step's speed does not depend on them.

    .venv/bin/python benchmarks/cpu_sharing.py --repeats 5 --json-out results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO_ROOT  # beside this script
from train_throughput import MODEL, project_step

from anime_dcgan.device import pick_runtime, tune_cpu_allocator
from anime_dcgan.params import load_params
from anime_dcgan.training.calibration import calibrate, cpu_model
from anime_dcgan.util.io import atomic_write_json
from anime_dcgan.util.stage import run_stage

DATASET_IMAGES = 1024  # random uint8 images the steps draw their batches from
CORES = len(os.sched_getaffinity(0))
# name: (processes, threads per process; None = torch's default), in the order of odd rounds
CONFIGURATIONS = {"alone": (1, None), "default": (2, None), "fair": (2, max(1, CORES // 2))}
LABELS = {"alone": "one alone, default threads", "default": "two at once, default threads",
          "fair": "two at once, cores // 2 threads each"}


def child(spec: dict) -> None:
    """One training process: warm up, say "ready", time spec["steps"] steps from "go" on, print the
    images/s, then keep stepping until told to stop (its peers may still be timing)."""
    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    runtime = dataclasses.replace(pick_runtime("cpu", spec["precision"], "auto"), cpu_kernels=spec["cpu_kernels"])
    tune_cpu_allocator()  # before the dataset and the networks are allocated, as the stage does
    torch.manual_seed(0)
    dataset = torch.randint(0, 256, (DATASET_IMAGES, 3, MODEL.image_size, MODEL.image_size), dtype=torch.uint8)
    step = project_step(dataset, spec["batch_size"], runtime)
    for _ in range(spec["warmup"]):
        step()
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    started = time.perf_counter()
    images = sum(step() for _ in range(spec["steps"]))
    print(json.dumps({"images_per_s": images / (time.perf_counter() - started),
                      "threads": torch.get_num_threads()}), flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:  # until "stop" (or the parent's end) arrives
        step()


def run_together(spec: dict, processes: int, threads: int | None) -> list[dict]:
    """Each child's {"images_per_s", "threads"}, the `processes` children timed together."""
    command = [sys.executable, __file__, "--child", json.dumps({**spec, "threads": threads})]
    children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(processes)]
    try:
        for process in children:
            _expect(process, "ready")
        for process in children:
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [json.loads(_expect(process, "{")) for process in children]
        for process in children:
            process.stdin.write("stop\n")
            process.stdin.close()
        for process in children:
            process.wait()
        return results
    finally:
        for process in children:
            if process.poll() is None:
                process.kill()
                process.wait()


def _expect(process: subprocess.Popen, start: str) -> str:
    line = process.stdout.readline()
    if not line.startswith(start):
        raise SystemExit(f"a training process failed (exit {process.wait()}); its error is printed above")
    return line


def markdown_table(best: dict[str, list[dict]]) -> str:
    rows = ["| configuration | threads per process | images/s per process | total images/s |",
            "| --- | --- | --- | --- |"]
    for name, results in best.items():
        rates = ", ".join(f"{result['images_per_s']:.1f}" for result in results)
        total = sum(result["images_per_s"] for result in results)
        rows.append(f"| {LABELS[name]} | {results[0]['threads']} | {rates} | {total:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64, help="images per step of each process (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds; each configuration keeps its best (default 3)")
    parser.add_argument("--json-out", type=Path, help="write the results to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one training process of a configuration
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if min(args.steps, args.repeats) < 1 or args.warmup < 0 or args.batch_size < 2:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0 and --batch-size >= 2")
    runtime = pick_runtime("cpu", "auto", "auto")
    tune_cpu_allocator()
    optim = load_params(REPO_ROOT / "params.yaml").optim.model_copy(update={"batch_size": args.batch_size})
    with tempfile.TemporaryDirectory(prefix="cpu-sharing-") as temp:
        # the step variant as the train stage chooses it (with default threads), timed afresh here
        calibration = calibrate(MODEL, optim, runtime, "auto", cache=Path(temp) / "calibration.json")
    runtime = calibration.choice.applied_to(runtime)
    print(f"project step variant: {calibration.describe()}; {CORES} cores", flush=True)
    spec = {"precision": runtime.precision, "cpu_kernels": runtime.cpu_kernels, "batch_size": args.batch_size,
            "steps": args.steps, "warmup": args.warmup}
    rounds: dict[str, list[list[dict]]] = {name: [] for name in CONFIGURATIONS}
    for round_number in range(1, args.repeats + 1):
        # alternating: a lasting change of the machine's speed reaches every configuration alike
        order = list(CONFIGURATIONS) if round_number % 2 else list(reversed(CONFIGURATIONS))
        for name in order:
            results = run_together(spec, *CONFIGURATIONS[name])
            rounds[name].append(results)
            rates = ", ".join(f"{result['images_per_s']:.1f}" for result in results)
            print(f"round {round_number}/{args.repeats}: {name} {rates} images/s", flush=True)
    best = {name: max(runs, key=lambda results: sum(r["images_per_s"] for r in results))
            for name, runs in rounds.items()}
    totals = {name: sum(result["images_per_s"] for result in results) for name, results in best.items()}
    report = {
        "command": shlex.join([sys.executable, *sys.argv]), "cpu": cpu_model(), "cores": CORES,
        "torch": torch.__version__, "arch": MODEL.arch, "image_size": MODEL.image_size,
        "precision": runtime.precision, "cpu_kernels": runtime.cpu_kernels,
        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        **{f"{name}_threads": best[name][0]["threads"] for name in CONFIGURATIONS},
        **{f"{name}_images_per_s": [result["images_per_s"] for result in best[name]] for name in CONFIGURATIONS},
        **{f"{name}_total_images_per_s": totals[name] for name in CONFIGURATIONS},
        **{f"{name}_rounds_images_per_s": [[result["images_per_s"] for result in results] for results in runs]
           for name, runs in rounds.items()},
        "fair_over_default": totals["fair"] / totals["default"],
    }
    print(f"\nbest of {args.repeats} (batch {args.batch_size}, {runtime.precision}"
          f"{', cpu_kernels' if runtime.cpu_kernels else ''}):\n")
    print(markdown_table(best))
    print(f"\ntwo at once, total: fair share over default threads {report['fair_over_default']:.2f}x; "
          f"against one alone: default {totals['default'] / totals['alone']:.2f}x, "
          f"fair {totals['fair'] / totals['alone']:.2f}x")
    if args.json_out:
        atomic_write_json(args.json_out, report)


if __name__ == "__main__":
    run_stage("cpu_sharing", main)  # SIGTERM handled like Ctrl-C: the children are killed
