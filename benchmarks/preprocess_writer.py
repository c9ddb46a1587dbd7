"""The preprocess stage's images.npy writer against numpy's own memory-mapped .npy (np.lib.format.open_memmap).

Both run the whole preprocess_images of the stage with its process pool (workers=0), each in a fresh
child process, alternating, best of --repeats, on the cached synthetic 60,000-face folder of
preprocess_throughput.py: "stage" is the stage's writer (seeks and writes on an ordinary file),
"memmap" the same class with its creation, row writes and row moves done through open_memmap. The
outputs are compared byte for byte.

    .venv/bin/python benchmarks/preprocess_writer.py                  # 60,000 images, best of 3
    .venv/bin/python benchmarks/preprocess_writer.py --count 3000 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from child_rss import run_sampling_rss  # beside this script
from preprocess_throughput import IMAGE_SIZE, MIN_SIZE, synthetic_raw

from anime_dcgan.data import preprocess


class MemmapRows(preprocess._ImageRows):
    """The stage's writer with numpy doing the .npy work: open_memmap creates the file, and rows are
    written and moved through a memory map (the final shrink is the stage's own)."""

    def __init__(self, path: Path, capacity: int, row_shape: tuple[int, int, int]) -> None:
        self.path, self.row_shape, self.capacity, self.rows_kept = path, row_shape, capacity, 0
        self.row_bytes = int(np.prod(row_shape))
        created = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(capacity, *row_shape))
        self.header_bytes = created.offset
        del created

    @contextlib.contextmanager
    def open(self):
        images = np.load(self.path, mmap_mode="r+")                          # (capacity, 3, S, S)
        try:
            yield images
        finally:
            images.flush()
            del images

    def write(self, images: np.ndarray, row: int, pixels: np.ndarray) -> None:
        images[row] = pixels

    def keep(self, images: np.ndarray, row: int) -> None:
        if row != self.rows_kept:
            images[self.rows_kept] = images[row]
        self.rows_kept += 1


def measure_one(raw_dir: Path, out_dir: Path, writer: str) -> None:
    """Child side: one preprocess with the chosen writer; prints seconds and the output's md5."""
    if writer == "memmap":
        preprocess._ImageRows = MemmapRows  # the workers are forked and inherit the patch
    start = time.perf_counter()
    summary = preprocess.preprocess_images(raw_dir, out_dir, IMAGE_SIZE, MIN_SIZE, workers=0, progress=False)
    seconds = time.perf_counter() - start
    digest = hashlib.md5((out_dir / "images.npy").read_bytes()).hexdigest()
    print(json.dumps({"seconds": seconds, "n_images": summary.n_images, "md5": digest}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60_000, help="synthetic faces (default 60,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per writer, best kept (default 3)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "anime_dcgan_bench")
    parser.add_argument("--measure-one", nargs=3, metavar=("RAW_DIR", "OUT_DIR", "WRITER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_one:
        raw, out, writer = args.measure_one
        return measure_one(Path(raw), Path(out), writer)

    raw_dir = synthetic_raw(args.cache_dir, args.count)
    best: dict[str, dict] = {}
    for round_ in range(args.repeats):
        for writer in ("stage", "memmap"):
            with tempfile.TemporaryDirectory(prefix="preprocess-writer-") as out_dir:
                code, stdout, peak = run_sampling_rss([sys.executable, __file__, "--measure-one", str(raw_dir),
                                                       out_dir, writer])
            if code != 0:
                raise SystemExit(f"the {writer} writer failed (exit {code})")
            result = {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mb": peak / 2**20}
            print(f"round {round_ + 1}/{args.repeats}: {writer}: {result['seconds']:.2f} s, "
                  f"{result['n_images'] / result['seconds']:,.0f} images/s, peak RSS {result['peak_rss_mb']:.0f} MB",
                  flush=True)
            if writer not in best or result["seconds"] < best[writer]["seconds"]:
                best[writer] = result
    stage, memmap = best["stage"], best["memmap"]
    print(f"best of {args.repeats}: stage {stage['seconds']:.2f} s, memmap {memmap['seconds']:.2f} s "
          f"(memmap / stage {memmap['seconds'] / stage['seconds']:.3f}); identical output: "
          f"{stage['md5'] == memmap['md5']}")


if __name__ == "__main__":
    main()
