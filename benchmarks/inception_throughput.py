"""Throughput of the FID Inception feature extractor, and what bf16 would do to FID.

For each device (CPU, and CUDA when present) and batch size, times ``inception_features`` on real
64x64 images in three variants: fp32 with contiguous (NCHW) input, fp32 with channels_last input (the
library default) and the network under bf16 autocast with channels_last input (for information: the
library is fp32 only). One batch is run first and not timed (TorchScript optimises on its first calls).

Then, on real images, the FID change that bf16 would cause: FID(half A, half B) with fp32 features
against the same with bf16 features, and FID(fp32 features, bf16 features) of the same images.

``--metric-costs`` also times the other metrics at the evaluate stage's default size (1,000
generated images against a 5,000-image reference), on random features and the real images.

Real images: the shared sample of real anime faces (benchmarks/common.py) when present, else
data/processed/images.npy.

    .venv/bin/python benchmarks/inception_throughput.py [--images 128] [--fid-images 500] [--metric-costs]
"""

from __future__ import annotations

import argparse
import io
import platform
import time
import zipfile

import numpy as np
import torch
from common import REPO_ROOT, sample_zip  # beside this script
from PIL import Image

from anime_dcgan.evaluation.diversity import mean_pairwise_ms_ssim
from anime_dcgan.evaluation.fid import feature_statistics, frechet_distance, kernel_inception_distance
from anime_dcgan.evaluation.inception import FIDInceptionV3, inception_features, load_inception
from anime_dcgan.evaluation.memorization import memorization
from anime_dcgan.evaluation.precision_recall import precision_recall
from anime_dcgan.evaluation.swd import sliced_wasserstein_distance

PROCESSED = REPO_ROOT / "data/processed/images.npy"


def real_images(count: int) -> tuple[np.ndarray, str]:
    """uint8 (count, 3, 64, 64) real images and where they came from: real anime faces from the
    shared sample zip when present (the processed data may be the synthetic faces), else
    data/processed/images.npy."""
    zip_path = sample_zip()
    if zip_path.is_file():
        with zipfile.ZipFile(zip_path) as archive:
            names = sorted(name for name in archive.namelist() if name.endswith(".jpg"))[:count]
            pixels = [np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in names]
        return np.stack(pixels).transpose(0, 3, 1, 2).copy(), zip_path.name
    if PROCESSED.is_file():
        return np.array(np.load(PROCESSED, mmap_mode="r")[:count]), str(PROCESSED.relative_to(REPO_ROOT))
    raise SystemExit(f"no real images: neither {zip_path} (set ANIME_DCGAN_SAMPLE to use another copy) nor "
                     f"{PROCESSED} exists")


class Bf16Inception(FIDInceptionV3):
    """The library's extractor with the network run under bf16 autocast (the library itself is fp32 only)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.prepare(images)  # resizing stays fp32
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            return self.network(pixels)


def extractor(device: torch.device, precision: str, channels_last: bool = True) -> FIDInceptionV3:
    fp32 = load_inception(device, channels_last=channels_last)
    return Bf16Inception(fp32.network, channels_last) if precision == "bf16" else fp32


def features(images: np.ndarray, device: torch.device, precision: str, channels_last: bool = True,
             batch_size: int = 64, model: FIDInceptionV3 | None = None) -> np.ndarray:
    model = model or extractor(device, precision, channels_last)
    return inception_features(images, device, batch_size=batch_size, model=model)


def throughput(images: np.ndarray, device: torch.device, precision: str, channels_last: bool,
               batch_size: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process). The second figure is
    the steadier one on a machine shared with other jobs."""
    model = extractor(device, precision, channels_last)
    features(images[:batch_size], device, precision, batch_size=batch_size, model=model)  # warm-up, untimed
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    features(images, device, precision, batch_size=batch_size, model=model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - wall), len(images) / (time.process_time() - cpu)


def throughput_table(images: np.ndarray, devices: list[torch.device], batch_sizes: list[int]) -> None:
    variants = [("fp32", False), ("fp32", True), ("bf16", True)]
    print("\nimg/s (img per CPU-second) over", len(images), "images")
    print("| device | batch | fp32 NCHW | fp32 channels_last | bf16 channels_last |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for device in devices:
        for batch_size in batch_sizes:
            rates = [throughput(images, device, precision, channels_last, batch_size)
                     for precision, channels_last in variants]
            print(f"| {device.type} | {batch_size} | "
                  + " | ".join(f"{wall:.1f} ({cpu:.1f})" for wall, cpu in rates) + " |", flush=True)


def bf16_fid_change(images: np.ndarray, device: torch.device) -> None:
    fp32 = features(images, device, "fp32")
    bf16 = features(images, device, "bf16")
    half = len(images) // 2
    fid_fp32 = frechet_distance(*feature_statistics(fp32[:half]), *feature_statistics(fp32[half:]))
    fid_bf16 = frechet_distance(*feature_statistics(bf16[:half]), *feature_statistics(bf16[half:]))
    fid_between = frechet_distance(*feature_statistics(fp32), *feature_statistics(bf16))
    print(f"\nbf16 on {device.type}, {len(images)} real images: FID(A, B) fp32 {fid_fp32:.3f}, "
          f"bf16 {fid_bf16:.3f}, difference {abs(fid_fp32 - fid_bf16):.3f}; "
          f"FID(fp32 features, bf16 features) {fid_between:.3f}; "
          f"max |feature difference| {np.abs(fp32 - bf16).max():.4f}", flush=True)


def timed(label: str, function, *args, **kwargs) -> None:
    started = time.perf_counter()
    function(*args, **kwargs)
    print(f"| {label} | {time.perf_counter() - started:.1f} |", flush=True)


def metric_costs(images: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    fake, reference = rng.standard_normal((1000, 2048)), rng.standard_normal((5000, 2048))
    fake_images = images[:1000]
    stats = (*feature_statistics(fake), *feature_statistics(reference))
    print("\n| metric (1,000 generated, 5,000 reference, CPU) | seconds |")
    print("| --- | ---: |")
    timed("feature_statistics (5,000 x 2048)", feature_statistics, reference)
    timed("frechet_distance (D = 2048)", frechet_distance, *stats)
    timed("kernel_inception_distance (100 x 1,000)", kernel_inception_distance, reference, fake)
    timed("precision_recall k=3 (1,000 vs 1,000)", precision_recall, reference[:1000], fake)
    timed("memorization (vs 5,000)", memorization, reference, fake)
    timed(f"sliced_wasserstein_distance ({len(fake_images)} vs {len(fake_images)} images)",
          sliced_wasserstein_distance, fake_images, fake_images[::-1].copy())
    timed("mean_pairwise_ms_ssim (1,000 pairs)", mean_pairwise_ms_ssim, fake_images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="images timed per configuration")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--fid-images", type=int, default=500, help="real images for the bf16 FID check (0: skip)")
    parser.add_argument("--metric-costs", action="store_true", help="also time the other metrics")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    count = max(args.images, args.fid_images, 1000 if args.metric_costs else 0)
    images, origin = real_images(count)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'}; images from {origin}")
    throughput_table(images[:args.images], devices, args.batch_sizes)
    if args.fid_images:
        for device in devices:
            bf16_fid_change(images[:args.fid_images], device)
    if args.metric_costs:
        metric_costs(images)


if __name__ == "__main__":
    main()
