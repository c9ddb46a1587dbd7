"""The image format every metric takes: uint8 (N, 3, H, W) in [0, 255], as numpy or torch."""

from __future__ import annotations

import numpy as np
import torch


def as_uint8_images(images: np.ndarray | torch.Tensor, name: str = "images") -> np.ndarray:
    """``images`` as a numpy uint8 (N, 3, H, W) array (a memory map stays a memory map, nothing is read)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"{name} must be shaped (N, 3, H, W) with N >= 1, got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255], got {images.dtype}; convert float images "
                         "in [-1, 1] with anime_dcgan.training.sample.to_uint8 first")
    return images


def subsample(images: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` images drawn without replacement (all of them, unchanged, when there are no more).

    The indices are sorted so that reads from a memory map stay sequential.
    """
    if count >= len(images):
        return images
    return images[np.sort(rng.choice(len(images), count, replace=False))]
