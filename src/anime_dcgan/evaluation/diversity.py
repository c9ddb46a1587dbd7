"""Sample diversity: mean MS-SSIM of random pairs of images (Odena et al. 2017, AC-GAN).

Identical images score 1, unrelated ones near 0, so lower means more diverse. Compare the generated
figure (``ms_ssim_fake``) with the same figure for real images (``ms_ssim_real``): a generator whose
pairs score clearly higher than real pairs has collapsed towards few modes.

MS-SSIM settings (torchmetrics' implementation): the standard 11x11 Gaussian window (sigma 1.5) and
data range 255, but fewer than the standard 5 scales, since every scale must still be at least as
large as the window: 64 px -> 64, 32, 16 (3 scales), 128 px -> 4, 256 px -> 5, 32 px -> 2. The
standard scale weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) are cut to the scales used and
renormalised to sum to 1. Negative per-scale terms are clipped to 0 (torchmetrics' default "relu"),
which keeps the product defined for very different images. Values are comparable only between runs
at the same image size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from anime_dcgan.evaluation.images import as_uint8_images

STANDARD_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL_SIZE = 11
SIGMA = 1.5
DEFAULT_PAIRS = 1000
PAIR_BATCH = 256


def ms_ssim_scales(image_size: int) -> int:
    """Number of scales: as many of the standard 5 as keep the coarsest one >= the 11 px window."""
    if image_size < KERNEL_SIZE:
        raise ValueError(f"MS-SSIM needs images of at least {KERNEL_SIZE} pixels, got {image_size}")
    return min(len(STANDARD_BETAS), 1 + int(math.log2(image_size / KERNEL_SIZE)))


def ms_ssim_betas(image_size: int) -> tuple[float, ...]:
    betas = STANDARD_BETAS[:ms_ssim_scales(image_size)]
    return tuple(beta / sum(betas) for beta in betas)


def ms_ssim(images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
    """Per-pair MS-SSIM (B,) of uint8 or [0, 255] float images (B, 3, S, S), with the module's settings."""
    return multiscale_structural_similarity_index_measure(
        images_a.float(), images_b.float(), kernel_size=KERNEL_SIZE, sigma=SIGMA, data_range=255.0,
        betas=ms_ssim_betas(images_a.shape[-1]), reduction="none")


def random_pairs(count: int, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n_pairs index pairs (i, j) with i != j, drawn uniformly from range(count)."""
    if count < 2:
        raise ValueError(f"pairs need at least 2 images, got {count}")
    first = rng.integers(0, count, n_pairs)
    second = (first + rng.integers(1, count, n_pairs)) % count  # any index but `first`, uniformly
    return first, second


def mean_pairwise_ms_ssim(images: np.ndarray | torch.Tensor, n_pairs: int = DEFAULT_PAIRS, seed: int = 0) -> float:
    """Mean MS-SSIM over ``n_pairs`` seeded random pairs of distinct images of uint8 (N, 3, S, S)."""
    images = as_uint8_images(images)
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"MS-SSIM expects square images, got {images.shape[2]}x{images.shape[3]}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n_pairs}")
    first, second = random_pairs(len(images), n_pairs, np.random.default_rng(seed))
    scores = []
    with torch.inference_mode():
        for start in range(0, n_pairs, PAIR_BATCH):
            a = torch.from_numpy(images[first[start:start + PAIR_BATCH]])   # (B, 3, S, S)
            b = torch.from_numpy(images[second[start:start + PAIR_BATCH]])
            scores.append(ms_ssim(a, b))
    return float(torch.cat(scores).double().mean())
