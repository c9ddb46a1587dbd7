"""Frechet Inception Distance (Heusel et al. 2017) and Kernel Inception Distance (Binkowski et al. 2018).

Both work on feature arrays (N, D); with Inception pool3 features (D = 2048, see ``inception.py``)
they are the standard FID and KID.
"""

from __future__ import annotations

import numpy as np

# A covariance eigenvalue below -NEGATIVE_EIGENVALUE_TOLERANCE * (largest eigenvalue) is not rounding
# noise: the matrix is not a covariance (not positive semi-definite).
NEGATIVE_EIGENVALUE_TOLERANCE = 1e-6


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), both float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be shaped (N, D) with N >= 2, got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinity; check the images they came from")
    return features.mean(axis=0), np.cov(features, rowvar=False)


class RunningStatistics:
    """Mean and unbiased covariance of feature rows added a chunk at a time (float64 sums)."""

    def __init__(self, dim: int):
        self.count, self.total, self.outer = 0, np.zeros(dim), np.zeros((dim, dim))

    def add(self, features: np.ndarray) -> None:                 # (n, dim)
        features = np.asarray(features, dtype=np.float64)
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 rows, got {self.count}")
        mean = self.total / self.count
        return mean, (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)


def _psd_eigenvalues(matrix: np.ndarray, name: str, vectors: bool = False):
    """Eigenvalues (clipped at 0) of a symmetric positive semi-definite matrix, and eigenvectors if asked."""
    symmetric = (matrix + matrix.T) / 2
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric) if vectors else (np.linalg.eigvalsh(symmetric), None)
    tolerance = NEGATIVE_EIGENVALUE_TOLERANCE * max(eigenvalues.max(initial=0.0), 1e-300)
    if eigenvalues.min(initial=0.0) < -tolerance:
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {eigenvalues.min():.3g}); "
                         "pass a covariance from feature_statistics")
    return np.clip(eigenvalues, 0.0, None), eigenvectors  # rounding noise around 0 for singular matrices


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

        d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))

    The trace of the square root is the sum of sqrt(eigenvalues) of B^T sigma2 B, where
    sigma1 = B B^T (B = eigenvectors of sigma1 scaled by sqrt(eigenvalues), numerically zero ones
    left out): B^T sigma2 B has the nonzero eigenvalues of sigma1^(1/2) sigma2 sigma1^(1/2), which is
    similar to sigma1 sigma2, and being symmetric it has real eigenvalues. This agrees with the usual
    ``scipy.linalg.sqrtm(sigma1 @ sigma2)`` (tests/test_metrics_fid.py) while needing no epsilon
    offset for singular covariances (fewer samples than dimensions), no complex numbers, and a
    fraction of sqrtm's time at D = 2048; a sigma1 of rank r < D (from r + 1 samples) leaves an
    r x r matrix only.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {sigma2.shape}; expected (D,) and (D, D) for one feature size D")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinity")
    eigenvalues1, eigenvectors1 = _psd_eigenvalues(sigma1, "sigma1", vectors=True)
    # numerical rank as numpy.linalg.matrix_rank counts it: smaller eigenvalues are rounding noise
    nonzero = eigenvalues1 > eigenvalues1.max(initial=0.0) * dim * np.finfo(np.float64).eps
    factor = eigenvectors1[:, nonzero] * np.sqrt(eigenvalues1[nonzero])  # (D, r): sigma1 = B B^T
    # a sigma2 that is not a covariance shows up as a negative eigenvalue of this product
    product_eigenvalues, _ = _psd_eigenvalues(factor.T @ sigma2 @ factor, "B^T sigma2 B (sigma1 = B B^T)")
    trace_covmean = np.sqrt(product_eigenvalues).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean
    return float(max(distance, 0.0))  # rounding can leave -1e-12 for identical inputs


def _polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / D + 1)^3, the KID kernel; (n, D), (m, D) -> (n, m)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kernel_inception_distance(real_features: np.ndarray, fake_features: np.ndarray, n_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over random subsets of the unbiased MMD^2 estimate.

    Each subset draws ``m = min(subset_size, n_real, n_fake)`` rows of each set without replacement
    (seeded) and computes, with the cubic polynomial kernel k,

        MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
                - 2 sum_{i, j} k(x_i, y_j) / m^2

    The standard deviation is over subsets (ddof = 0, as torch-fidelity reports it).
    """
    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(fake_features, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) arrays with the same D, got {real.shape} and {fake.shape}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be at least 1, got {n_subsets}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per subset, got subset size {size} "
                         f"(subset_size={subset_size}, {real.shape[0]} real, {fake.shape[0]} fake)")
    rng = np.random.default_rng(seed)
    estimates = np.empty(n_subsets)
    for index in range(n_subsets):
        x = real[rng.choice(real.shape[0], size, replace=False)]
        y = fake[rng.choice(fake.shape[0], size, replace=False)]
        k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (size * (size - 1))
        estimates[index] = within - 2.0 * k_xy.mean()
    return float(estimates.mean()), float(estimates.std())
