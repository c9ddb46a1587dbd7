"""Throughput of the FID Inception feature extractor, and what bf16 would do to FID.

For each device (CPU, and CUDA when present), times ``inception_features`` on real 64x64 images: the
published TorchScript network at batch 64 (the library's path before the folded network), the
library's folded eager network at several batch sizes, and the folded network under bf16 autocast
(for information: the library is fp32 only; timed only where the device runs bf16 natively).
Variants alternate within each round; one batch is run first and not timed (TorchScript optimises
on its first calls).

Then, on real images, what the folded network and bf16 change against the published network: the
largest feature difference, FID(half A, half B) with each, and FID between the feature sets.

``--conv-limit`` also measures the machine's convolution limit for this network: every distinct
convolution of the folded network, at the library's batch size, timed alone (fp32, channels_last,
inference), the best GFLOP/s among them; the folded network's own GFLOP/s is given as a fraction of it.

``--winograd`` (CPU) asks whether fewer FLOPs would pay: PyTorch's one CPU engine that does fewer
multiplications than a direct convolution, NNPACK (Winograd for 3x3, FFT for larger kernels, at stride
1), timed against oneDNN on every stride-1 convolution the folded network runs, at the library's batch
size, each as the network would call it (oneDNN on channels_last maps; NNPACK on NCHW, with the two
layout copies it needs), with its largest error against float64.

``--metric-costs`` also times the other metrics at the evaluate stage's default size (1,000
generated images against a 5,000-image reference), on random features and the real images.

Real images: the shared sample of real anime faces (benchmarks/common.py) when present, else
data/processed/images.npy.

    .venv/bin/python benchmarks/inception_throughput.py [--images 128] [--repeats 3] [--fid-images 500] [--conv-limit]
        [--winograd] [--metric-costs]
"""

from __future__ import annotations

import argparse
import io
import platform
import time
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from common import REPO_ROOT, sample_zip  # beside this script
from conv_limit import best_seconds
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from anime_dcgan.device import supports_bf16
from anime_dcgan.evaluation.diversity import mean_pairwise_ms_ssim
from anime_dcgan.evaluation.fid import feature_statistics, frechet_distance, kernel_inception_distance
from anime_dcgan.evaluation.inception import FIDInceptionV3, default_batch_size, inception_features, load_inception
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


# (label, network, batch size): the published TorchScript network at the batch the library used
# before the folded network existed, then the library's network at several batch sizes
VARIANTS = [("published TorchScript", "published", 64), *((f"folded, batch {b}", "folded", b) for b in (4, 8, 16, 64)),
            ("folded bf16, batch 8", "bf16", 8)]


def variants(device: torch.device) -> list[tuple[str, str, int]]:
    """VARIANTS, less bf16 where the device has no native bf16: emulated, it only measures the emulation."""
    return [v for v in VARIANTS if v[1] != "bf16" or supports_bf16(device)]


def extractor(device: torch.device, network: str) -> FIDInceptionV3:
    model = load_inception(device, folded=network != "published")
    return Bf16Inception(model.network) if network == "bf16" else model


def throughput(images: np.ndarray, device: torch.device, model: FIDInceptionV3, batch_size: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process)."""
    inception_features(images[:batch_size], device, batch_size=batch_size, model=model)  # warm-up, untimed
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    inception_features(images, device, batch_size=batch_size, model=model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - wall), len(images) / (time.process_time() - cpu)


def throughput_table(images: np.ndarray, devices: list[torch.device], repeats: int) -> dict[str, float]:
    """Every variant once per round, rounds repeated; each keeps its best round, so a slow spell of a
    shared machine reaches all variants alike. Returns each device's img/s of the library's own
    network at its own batch size."""
    print(f"\nimg/s over {len(images)} images, best of {repeats} alternating rounds "
          "(img per CPU-second of that round in brackets)")
    print("| device | network | batch | img/s | x published |")
    print("| --- | --- | ---: | ---: | ---: |")
    library_rates = {}
    for device in devices:
        models = {network: extractor(device, network) for network in {v[1] for v in variants(device)}}
        best: dict[str, tuple[float, float]] = {}
        for _ in range(repeats):
            for label, network, batch_size in variants(device):
                rate = throughput(images, device, models[network], batch_size)
                best[label] = max(best.get(label, (0.0, 0.0)), rate)
        published = best[VARIANTS[0][0]][0]
        for label, _, batch_size in variants(device):
            wall, cpu = best[label]
            print(f"| {device.type} | {label} | {batch_size} | {wall:.1f} ({cpu:.1f}) | {wall / published:.2f} |",
                  flush=True)
        library_rates[device.type] = best[f"folded, batch {default_batch_size(device)}"][0]
    return library_rates


def convolution_limit(device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """(the best GFLOP/s among the folded network's distinct convolutions, each timed alone at the
    library's batch size; the network's GFLOP per image). 2 FLOPs per multiply-add."""
    network = extractor(device, "folded")
    batch = torch.zeros(default_batch_size(device), 3, 64, 64, dtype=torch.uint8, device=device)
    shapes = set()  # (input shape, weight shape, stride, padding) of every convolution the network runs
    hooks = [module.register_forward_hook(lambda m, inputs, _: shapes.add(
                 (tuple(inputs[0].shape), tuple(m.weight.shape), m.stride, m.padding)))
             for module in network.modules() if isinstance(module, torch.nn.Conv2d)]
    with torch.inference_mode():
        pixels = network.prepare(batch)  # (B, 3, 299, 299); the resize is not the network's
        with FlopCounterMode(display=False) as counter:
            network.network(pixels)      # -> (B, 2048)
    for hook in hooks:
        hook.remove()
    best = 0.0
    with torch.inference_mode():
        for input_shape, weight_shape, stride, padding in sorted(shapes):
            x, weight = (torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
                         for shape in (input_shape, weight_shape))
            bias = torch.randn(weight_shape[0], device=device)
            output = F.conv2d(x, weight, bias, stride, padding)
            flops = 2 * output.numel() * torch.Size(weight_shape[1:]).numel()
            seconds = best_seconds(lambda: F.conv2d(x, weight, bias, stride, padding), device, repeats)
            best = max(best, flops / seconds / 1e9)
    return best, counter.get_total_flops() / len(batch) / 1e9


def winograd_alternative(repeats: int = 3) -> None:
    """oneDNN against NNPACK on each stride-1, larger-than-1x1 convolution of one forward pass (CPU)."""
    if not torch._nnpack_available():  # also initialises NNPACK, which its operator does not do itself
        print("\nNNPACK is not in this PyTorch build")
        return
    cpu = torch.device("cpu")
    network = extractor(cpu, "folded")
    calls = []  # (convolution module, its input shape), in the order the network runs them
    hooks = [module.register_forward_pre_hook(lambda m, inputs: calls.append((m, tuple(inputs[0].shape))))
             for module in network.modules() if isinstance(module, torch.nn.Conv2d)]
    batch = torch.zeros(default_batch_size(cpu), 3, 64, 64, dtype=torch.uint8)
    with torch.inference_mode():
        network(batch)
    for hook in hooks:
        hook.remove()
    onednn_total = best_total = 0.0
    faster, slowdowns = [], []  # NNPACK's time over oneDNN's where it loses
    with torch.inference_mode():
        for conv, input_shape in calls:
            if conv.stride != (1, 1) or conv.kernel_size == (1, 1):
                continue
            x = torch.randn(input_shape).contiguous(memory_format=torch.channels_last)
            weight = conv.weight.contiguous()  # NNPACK reads NCHW weights

            def nnpack() -> torch.Tensor:
                out = torch.ops.aten._nnpack_spatial_convolution(x.contiguous(), weight, conv.bias, list(conv.padding), [1, 1])
                return out.contiguous(memory_format=torch.channels_last)

            onednn_s = best_seconds(lambda: conv(x), cpu, repeats)
            nnpack_s = best_seconds(nnpack, cpu, repeats)
            onednn_total += onednn_s
            best_total += min(onednn_s, nnpack_s)
            if nnpack_s >= onednn_s:
                slowdowns.append(nnpack_s / onednn_s)
            else:
                exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), 1, conv.padding)
                error = ((nnpack().double() - exact).abs().max() / exact.abs().max()).item()
                faster.append(f"{tuple(input_shape)} {conv.kernel_size[0]}x{conv.kernel_size[1]}: {onednn_s * 1e3:.1f} ms "
                              f"-> {nnpack_s * 1e3:.1f} ms, error {error:.1e} of the largest output")
    print(f"\nNNPACK against oneDNN on the {len(faster) + len(slowdowns)} stride-1 convolutions larger than 1x1 "
          f"of a batch of {len(batch)}: faster on {len(faster)}")
    print("\n".join(f"  {line}" for line in faster))
    if slowdowns:
        print(f"  slower on the other {len(slowdowns)}: {min(slowdowns):.2f}x to {max(slowdowns):.2f}x oneDNN's time")
    with torch.inference_mode():
        network_s = best_seconds(lambda: network(batch), cpu, repeats)
    saved = onednn_total - best_total
    print(f"those convolutions: {onednn_total * 1e3:.1f} ms with oneDNN, {best_total * 1e3:.1f} ms with the faster engine "
          f"for each; the whole network: {network_s * 1e3:.1f} ms a batch, so at most {saved / network_s:.1%} faster "
          f"({network_s / (network_s - saved):.3f}x)", flush=True)


def fid_of_halves(features: np.ndarray) -> float:
    half = len(features) // 2
    return frechet_distance(*feature_statistics(features[:half]), *feature_statistics(features[half:]))


def agreement(images: np.ndarray, device: torch.device) -> None:
    """What the folded network and bf16 change against the published network, on real images."""
    published = inception_features(images, device, model=extractor(device, "published"))
    reference_fid = fid_of_halves(published)
    print(f"\n{len(images)} real images on {device.type}; FID(half A, half B) with the published network "
          f"{reference_fid:.4f}")
    for network in ("folded", "bf16") if supports_bf16(device) else ("folded",):
        features = inception_features(images, device, model=extractor(device, network))
        relative = np.abs(features - published).max() / np.abs(published).max()
        fid = fid_of_halves(features)
        print(f"{network}: max |feature difference| / max |feature| {relative:.2e}; FID(A, B) "
              f"{fid:.4f} (difference {abs(fid - reference_fid):.4f}); "
              f"FID(its features, published features) {frechet_distance(*feature_statistics(features), *feature_statistics(published)):.4f}",
              flush=True)


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
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; each variant keeps its best")
    parser.add_argument("--fid-images", type=int, default=500,
                        help="real images for the folded and bf16 agreement check (0: skip)")
    parser.add_argument("--conv-limit", action="store_true",
                        help="also measure the convolution limit and the folded network's fraction of it")
    parser.add_argument("--winograd", action="store_true",
                        help="also time NNPACK's Winograd/FFT convolutions against oneDNN's on the CPU")
    parser.add_argument("--metric-costs", action="store_true", help="also time the other metrics")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    count = max(args.images, args.fid_images, 1000 if args.metric_costs else 0)
    images, origin = real_images(count)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'}; images from {origin}")
    library_rates = throughput_table(images[:args.images], devices, args.repeats)
    for device in devices if args.conv_limit else ():
        limit, gflop_per_image = convolution_limit(device)
        achieved = library_rates[device.type] * gflop_per_image
        print(f"\n{device.type}: the network does {gflop_per_image:.2f} GFLOP per image; its convolutions' limit here "
              f"(the best alone, batch {default_batch_size(device)}) is {limit:.1f} GFLOP/s; the folded network ran at "
              f"{achieved:.1f} GFLOP/s, {achieved / limit:.0%} of it", flush=True)
    if args.winograd:
        winograd_alternative(args.repeats)
    if args.fid_images:
        for device in devices:
            agreement(images[:args.fid_images], device)
    if args.metric_costs:
        metric_costs(images)


if __name__ == "__main__":
    main()
