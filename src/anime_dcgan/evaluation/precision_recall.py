"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models"), in Inception feature space.

Each set approximates its manifold by the union of balls around its points, the radius of each
ball being the distance to that point's k-th nearest neighbour in the same set (k = 3 here, as in
the paper). Then

    precision = share of generated points inside the real manifold   (are samples realistic?)
    recall    = share of real points inside the generated manifold   (is the real data covered?)

Both depend on the set sizes (more points, smaller balls), so compare runs at equal sizes; the
registry scores equal numbers of real and generated samples.
"""

from __future__ import annotations

import numpy as np
import torch

from anime_dcgan.evaluation.neighbours import as_feature_pair, inside_any_ball, kth_nearest

DEFAULT_K = 3


def manifold_radii(features: torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest other point of the same set."""
    if features.shape[0] <= k:
        raise ValueError(f"a manifold with k = {k} needs more than {k} points, got {features.shape[0]}")
    radii, _ = kth_nearest(features, features, k + 1)  # + 1: each point is its own nearest neighbour
    return radii


def precision_recall(real_features: np.ndarray | torch.Tensor, fake_features: np.ndarray | torch.Tensor,
                     k: int = DEFAULT_K, device: str | torch.device = "cpu") -> tuple[float, float]:
    """(precision, recall) of fake features (M, D) against real features (N, D)."""
    real, fake = as_feature_pair(real_features, fake_features, device)
    with torch.inference_mode():
        precision = inside_any_ball(fake, real, manifold_radii(real, k)).double().mean()
        recall = inside_any_ball(real, fake, manifold_radii(fake, k)).double().mean()
    return float(precision), float(recall)
