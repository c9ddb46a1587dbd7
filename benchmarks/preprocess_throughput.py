"""Preprocess throughput and peak memory: one process (workers=1) against the pool (workers=0).

Datasets: (a) the shared sample of 4,998 real 64x64 JPEGs, unzipped to a temporary folder, and
(b) 60,000 synthetic faces (PNG) drawn by anime_dcgan.data.synthetic, cached under --cache-dir so
later runs skip the drawing. Each measurement runs preprocess_images in a fresh child process while
this process samples the resident memory of that child and all its workers (psutil, every 20 ms),
so the peak is main + workers together. Images/s is timed inside the child around the call alone,
as is the CPU time of main + workers (getrusage): on a machine shared with other work the wall-clock
ratio understates the pool, so the table also gives the speedup the CPU times allow on idle cores.

    python benchmarks/preprocess_throughput.py            # full: sample + 60,000 synthetic
    python benchmarks/preprocess_throughput.py --quick    # sample + 3,000 synthetic, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import PIL
from child_rss import run_sampling_rss  # beside this script
from common import sample_zip

IMAGE_SIZE, MIN_SIZE = 64, 32


@dataclass
class Measurement:
    dataset: str
    workers: int
    n_files: int
    n_images: int
    seconds: float
    cpu_seconds: float  # main + workers, user + system
    main_cpu_seconds: float
    peak_rss_bytes: int

    @property
    def images_per_s(self) -> float:
        return self.n_files / self.seconds


def measure(dataset: str, raw_dir: Path, workers: int, n_files: int) -> Measurement:
    """Run one preprocess in a child process and sample its memory until it exits."""
    with tempfile.TemporaryDirectory(prefix="preprocess-bench-out-") as out_dir:
        command = [sys.executable, __file__, "--measure-one", str(raw_dir), out_dir, str(workers)]
        returncode, stdout, peak = run_sampling_rss(command)
        if returncode != 0:
            raise SystemExit(f"preprocess of {raw_dir} with workers={workers} failed (exit {returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    return Measurement(dataset, workers, n_files, result["n_images"], result["seconds"], result["cpu_seconds"],
                       result["main_cpu_seconds"], peak)


def measure_one(raw_dir: Path, out_dir: Path, workers: int) -> None:
    """Child side: time preprocess_images alone and print the result as one JSON line."""
    from anime_dcgan.data.preprocess import preprocess_images

    def cpu(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    main_start, children_start = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    summary = preprocess_images(raw_dir, out_dir, IMAGE_SIZE, MIN_SIZE, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    main_cpu = cpu(resource.RUSAGE_SELF) - main_start
    children_cpu = cpu(resource.RUSAGE_CHILDREN) - children_start  # the pool's workers, reaped on exit
    print(json.dumps({"seconds": seconds, "n_images": summary.n_images, "cpu_seconds": main_cpu + children_cpu,
                      "main_cpu_seconds": main_cpu}))


def synthetic_raw(cache_dir: Path, count: int) -> Path:
    """The cached synthetic raw folder with `count` faces, drawn (on every core) the first time."""
    raw_dir = cache_dir / f"synthetic-{count}-seed0"
    if not (raw_dir / "attributes.csv").is_file():  # written last: its presence means complete
        from anime_dcgan.data.synthetic import write_synthetic_dataset

        print(f"drawing {count:,} synthetic faces into {raw_dir} (once; cached for later runs)", flush=True)
        write_synthetic_dataset(raw_dir, count, seed=0, workers=0)
    return raw_dir


def count_files(raw_dir: Path) -> int:
    return sum(1 for path in (raw_dir / "images").rglob("*") if path.is_file())


def run_dataset(name: str, raw_dir: Path, repeats: int) -> list[Measurement]:
    """Best of `repeats` for each worker setting (the machine may be shared: the best is the least
    disturbed), alternating the settings so both see the same conditions."""
    n_files = count_files(raw_dir)
    best: dict[int, Measurement] = {}
    for _ in range(repeats):
        for workers in (1, 0):
            result = measure(name, raw_dir, workers, n_files)
            if workers not in best or result.seconds < best[workers].seconds:
                best[workers] = result
    return [best[1], best[0]]


def print_table(results: list[Measurement]) -> None:
    cores = os.cpu_count() or 1
    print("| dataset | workers | files | kept | seconds | images/s | CPU s main+workers (main) "
          "| peak RSS main+workers (MB) |")
    print("|" + "---|" * 8)
    for result in results:
        workers = "1 (in-process)" if result.workers == 1 else f"0 (pool of {cores})"
        print(f"| {result.dataset} | {workers} | {result.n_files:,} | {result.n_images:,} "
              f"| {result.seconds:.2f} | {result.images_per_s:,.0f} "
              f"| {result.cpu_seconds:.2f} ({result.main_cpu_seconds:.2f}) "
              f"| {result.peak_rss_bytes / 2**20:,.0f} |")
    print()
    for single, pooled in zip(results[::2], results[1::2]):
        # on idle cores the pool's wall time is at least its CPU time spread over the cores, and at
        # least the main process's own CPU time (it handles every result)
        idle_bound = single.cpu_seconds / max(pooled.cpu_seconds / cores, pooled.main_cpu_seconds)
        print(f"{single.dataset}: pool / single = {pooled.images_per_s / single.images_per_s:.2f}x measured; "
              f"{idle_bound:.2f}x allowed by the CPU times on {cores} idle cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000 synthetic images and one repeat")
    parser.add_argument("--synthetic-count", type=int,
                        help="synthetic images (default 60,000; 3,000 with --quick)")
    parser.add_argument("--repeats", type=int, help="runs per setting, best kept (default 3; 1 with --quick)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "anime_dcgan_bench",
                        help="where the synthetic raw folders are kept between runs")
    parser.add_argument("--measure-one", nargs=3, metavar=("RAW_DIR", "OUT_DIR", "WORKERS"),
                        help=argparse.SUPPRESS)  # the child side of one measurement
    args = parser.parse_args()
    if args.measure_one:
        raw_dir, out_dir, workers = args.measure_one
        measure_one(Path(raw_dir), Path(out_dir), int(workers))
        return

    count = args.synthetic_count or (3_000 if args.quick else 60_000)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"Pillow {PIL.__version__}, load average {os.getloadavg()[0]:.1f} at start; "
          f"image_size={IMAGE_SIZE}, best of {repeats}")
    results: list[Measurement] = []
    zip_path = sample_zip()
    if zip_path.is_file():
        with tempfile.TemporaryDirectory(prefix="preprocess-bench-sample-") as temp:
            raw_dir = Path(temp) / "raw"
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(raw_dir / "images")
            results += run_dataset("shared sample (JPEG)", raw_dir, repeats)
    else:
        print(f"shared sample {zip_path} not found (set ANIME_DCGAN_SAMPLE to use another copy): skipping it")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results += run_dataset(f"synthetic {count:,} (PNG)", synthetic_raw(args.cache_dir, count), repeats)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print_table(results)


if __name__ == "__main__":
    main()
