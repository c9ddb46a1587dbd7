"""Does the generator copy training images? Nearest-neighbour distances in Inception feature space.

For each generated image, d_gr = distance to its nearest real image; for each real image,
d_rr = distance to its nearest *other* real image. If the generator draws new images from the
real distribution, d_gr and d_rr have about the same distribution (both are nearest-neighbour
distances against the same real set), so:

- ``copy_fraction``: share of generated images with d_gr below the 1st percentile of d_rr. About
  0.01 for a generator that does not copy; much higher when it reproduces training images.
- ``nn_distance_ratio`` = median(d_gr) / median(d_rr): near 1 for fresh samples, near 0 for copies,
  above 1 when samples are unlike every real image.
"""

from __future__ import annotations

import numpy as np
import torch

from anime_dcgan.evaluation.neighbours import as_feature_pair, kth_nearest

COPY_PERCENTILE = 1.0


def memorization(real_features: np.ndarray | torch.Tensor, fake_features: np.ndarray | torch.Tensor,
                 device: str | torch.device = "cpu") -> dict[str, float]:
    """{"copy_fraction": ..., "nn_distance_ratio": ...} (see the module docstring)."""
    real, fake = as_feature_pair(real_features, fake_features, device)
    if real.shape[0] < 2:
        raise ValueError(f"memorisation needs at least 2 real images (each needs another as its "
                         f"nearest neighbour), got {real.shape[0]}")
    with torch.inference_mode():
        fake_to_real = kth_nearest(fake, real, 1)[0].double().cpu().numpy()  # d_gr (M,)
        real_to_real = kth_nearest(real, real, 2)[0].double().cpu().numpy()  # d_rr (N,); 2: skip itself
    threshold = np.percentile(real_to_real, COPY_PERCENTILE)
    median_real = np.median(real_to_real)
    return {
        "copy_fraction": float((fake_to_real < threshold).mean()),
        # a real set made of exact duplicates has median 0: the ratio is then undefined
        "nn_distance_ratio": float(np.median(fake_to_real) / median_real) if median_real > 0 else float("nan"),
    }


def closest_pairs(real_features: np.ndarray | torch.Tensor, fake_features: np.ndarray | torch.Tensor,
                  k: int = 8, device: str | torch.device = "cpu") -> list[tuple[int, int, float]]:
    """The k generated images closest to a real one: (fake_index, real_index, distance), closest first."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    real, fake = as_feature_pair(real_features, fake_features, device)
    with torch.inference_mode():
        distances, nearest_real = kth_nearest(fake, real, 1)  # (M,), (M,)
    distances, nearest_real = distances.double().cpu().numpy(), nearest_real.cpu().numpy()
    order = np.argsort(distances, kind="stable")[:k]
    return [(int(i), int(nearest_real[i]), float(distances[i])) for i in order]
