"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, Progressive GAN, A.4).

It compares the distributions of local image patches at several scales, needing no pretrained
network. Protocol:

1. Laplacian pyramid of each image with the 5x5 binomial filter ([1, 4, 6, 4, 1] / 16 outer
   itself), mirror padding: level l is G_l - upsample(G_{l+1}) where G_{l+1} = downsample(G_l);
   the last level is the low-pass G itself. Three levels: 64, 32, 16 for 64x64 images.
2. From each image and level, 128 random 7x7 patches: descriptors of 7 * 7 * 3 = 147 values.
3. Each descriptor set (one per image set and level) is normalised per colour channel: minus its
   mean, divided by its standard deviation.
4. Sliced Wasserstein distance: 4 repeats x 128 random unit directions; per direction both sets'
   projections are sorted and compared by mean absolute difference; the level's distance is the
   mean over directions and repeats. Sets must be equally large: the larger image set is
   subsampled (seeded) first. Image i of either set gets the same random patch positions, so two
   identical sets score exactly 0.
5. Each level's distance is reported x 1e3 (``swd_64``, ``swd_32``, ``swd_16``) with their mean
   (``swd_mean``). Seeded: the same inputs and seed give the same numbers.

Cost: descriptors take ~0.45 GB per 1,000 images per set pair (3 levels x 2 sets x 128,000 x 147
float32); the time goes mostly into sorting the 24 x 128 projections (benchmarks/inception.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from anime_dcgan.evaluation.images import as_uint8_images, subsample

N_LEVELS = 3
PATCH_SIZE = 7
PATCHES_PER_IMAGE = 128
DIRECTIONS_PER_REPEAT = 128
REPEATS = 4
SCALE = 1e3
IMAGE_BATCH = 256  # images converted to descriptors at once (bounded memory for big sets)

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_FILTER = torch.outer(_BINOMIAL, _BINOMIAL)  # (5, 5), sums to 1


def _blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 5x5 convolution with mirror ('reflect') padding; (B, C, H, W) -> same shape."""
    channels = images.shape[1]
    weight = kernel.to(images)[None, None].expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), weight, groups=channels)


def _downsample(images: torch.Tensor) -> torch.Tensor:
    return _blur(images, _FILTER)[:, :, ::2, ::2]


def _upsample(images: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = images.shape
    spread = images.new_zeros(batch, channels, height * 2, width * 2)
    spread[:, :, ::2, ::2] = images
    return _blur(spread, _FILTER * 4)  # x4: three of every four samples are the inserted zeros


def laplacian_pyramid(images: torch.Tensor, n_levels: int = N_LEVELS) -> list[torch.Tensor]:
    """[band-pass at full size, ..., low-pass at size / 2^(n_levels - 1)] for float (B, C, S, S)."""
    levels = [images]
    for _ in range(n_levels - 1):
        smaller = _downsample(levels[-1])
        levels[-1] = levels[-1] - _upsample(smaller)
        levels.append(smaller)
    return levels


def level_resolutions(image_size: int, n_levels: int = N_LEVELS) -> list[int]:
    """Side of each pyramid level, e.g. [64, 32, 16]; checks every level holds a 7x7 patch."""
    sizes = [image_size >> level for level in range(n_levels)]
    if image_size % (1 << (n_levels - 1)) or sizes[-1] < PATCH_SIZE:
        raise ValueError(f"SWD needs images whose side is divisible by {1 << (n_levels - 1)} with a "
                         f"coarsest level of at least {PATCH_SIZE} pixels; got {image_size}x{image_size} "
                         f"(use images of {PATCH_SIZE << (n_levels - 1)} pixels or more)")
    return sizes


def _random_patches(level: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """PATCHES_PER_IMAGE random 7x7 patches per image: (B, C, S, S) -> (B * P, 7, 7, C)."""
    batch, _, size, _ = level.shape
    corners = torch.from_numpy(rng.integers(0, size - PATCH_SIZE + 1, (2, batch, PATCHES_PER_IMAGE, 1, 1)))
    offsets = torch.arange(PATCH_SIZE)
    rows = corners[0] + offsets[:, None]                   # (B, P, 7, 1)
    cols = corners[1] + offsets[None, :]                   # (B, P, 1, 7)
    image_index = torch.arange(batch)[:, None, None, None]  # (B, 1, 1, 1)
    pixels = level.permute(0, 2, 3, 1)                     # (B, S, S, C)
    return pixels[image_index, rows, cols].reshape(-1, PATCH_SIZE, PATCH_SIZE, level.shape[1])


def _descriptors(images: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Per level, normalised descriptors (N * P, 147) float32 of uint8 images (N, 3, S, S)."""
    per_level: list[list[torch.Tensor]] = [[] for _ in range(N_LEVELS)]
    for start in range(0, images.shape[0], IMAGE_BATCH):
        batch = torch.from_numpy(images[start:start + IMAGE_BATCH].astype(np.float32))  # a writable copy
        for level, band in enumerate(laplacian_pyramid(batch)):
            per_level[level].append(_random_patches(band, rng))
    normalised = []
    for patches in per_level:
        patches = torch.cat(patches)                                     # (N * P, 7, 7, C)
        mean = patches.mean(dim=(0, 1, 2))                               # per channel
        std = patches.std(dim=(0, 1, 2), correction=0).clamp_min(1e-8)  # flat images have std 0
        normalised.append(((patches - mean) / std).flatten(1).numpy())  # (N * P, 147)
    return normalised


def _sliced_wasserstein(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> float:
    """Mean over REPEATS x DIRECTIONS_PER_REPEAT random unit directions of the 1-D Wasserstein-1
    distance between the projections of two equally large descriptor sets (N, D)."""
    distances = []
    for _ in range(REPEATS):
        directions = rng.standard_normal((DIRECTIONS_PER_REPEAT, a.shape[1])).astype(np.float32)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)  # unit rows (R, D)
        # (R, N), sorted along the contiguous axis: numpy's sort is faster than torch's here
        projected_a = np.sort(directions @ a.T, axis=1)
        projected_b = np.sort(directions @ b.T, axis=1)
        distances.append(np.abs(projected_a - projected_b).mean(dtype=np.float64))
    return float(np.mean(distances))


def sliced_wasserstein_distance(images_a: np.ndarray | torch.Tensor, images_b: np.ndarray | torch.Tensor,
                                seed: int = 0) -> dict[str, float]:
    """{"swd_<resolution>": ..., "swd_mean": ...} between two uint8 image sets (N, 3, S, S), x 1e3."""
    images_a, images_b = as_uint8_images(images_a, "images_a"), as_uint8_images(images_b, "images_b")
    if images_a.shape[1:] != images_b.shape[1:] or images_a.shape[2] != images_a.shape[3]:
        raise ValueError(f"SWD compares square images of one size, got {tuple(images_a.shape[1:])} and "
                         f"{tuple(images_b.shape[1:])}")
    resolutions = level_resolutions(images_a.shape[2])
    count = min(len(images_a), len(images_b))
    subsample_rng = np.random.default_rng([seed, 0])
    images_a, images_b = subsample(images_a, count, subsample_rng), subsample(images_b, count, subsample_rng)
    with torch.inference_mode():
        # both sets draw patch positions from identically seeded streams: image i of either set gets
        # the same positions, so identical sets give exactly 0 rather than patch-sampling noise
        descriptors_a = _descriptors(images_a, np.random.default_rng([seed, 1]))
        descriptors_b = _descriptors(images_b, np.random.default_rng([seed, 1]))
    directions_rng = np.random.default_rng([seed, 2])
    result = {f"swd_{resolution}": SCALE * _sliced_wasserstein(a, b, directions_rng)
              for resolution, a, b in zip(resolutions, descriptors_a, descriptors_b)}
    result["swd_mean"] = float(np.mean(list(result.values())))
    return result
