"""Evaluation metrics as registered functions, each returning ``{name: value}``.

Output names state their protocol, as stylegan2-ada's ``fid50k_full`` does: ``fid_1k`` is the FID of
1,000 generated images against the whole reference set. Registered metrics and what they return
(<n> = number of generated images, written 1k/2k/5k/50k when divisible by 1000):

    fid            fid_<n>                   FID, Inception-v3 pool3 (inception.py, fid.py)
    kid            kid_<n>, kid_<n>_std      KID (unscaled), 100 subsets of min(1000, n) (fid.py); the
                                             std only when n > 1000 (else every subset is the whole set)
    pr_k3          precision_k3, recall_k3   improved precision/recall, k = 3, n real vs n generated
    swd            swd_64, swd_32, swd_16, swd_mean   Laplacian-pyramid patch SWD x1e3 (swd.py)
    ms_ssim        ms_ssim_fake, ms_ssim_real         mean MS-SSIM of random pairs, 1,000 by default (diversity.py)
    memorization   copy_fraction, nn_distance_ratio   nearest-neighbour copy check (memorization.py)
    mode_coverage  tvd_<attribute>, tvd_mean          class shares vs real (attributes.py; synthetic data)

All randomness (subsets, pairs, patches, directions) comes from ``EvalInputs.seed``: on the CPU the
same inputs give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from anime_dcgan.evaluation.attributes import AttributeClassifier, mode_coverage
from anime_dcgan.evaluation.diversity import DEFAULT_PAIRS, mean_pairwise_ms_ssim
from anime_dcgan.evaluation.fid import feature_statistics, frechet_distance, kernel_inception_distance
from anime_dcgan.evaluation.images import as_uint8_images, subsample
from anime_dcgan.evaluation.inception import inception_features
from anime_dcgan.evaluation.memorization import memorization
from anime_dcgan.evaluation.precision_recall import precision_recall
from anime_dcgan.evaluation.swd import sliced_wasserstein_distance

KID_SUBSET = 1000  # rows per KID subset: torch-fidelity's default


@dataclass
class EvalInputs:
    """What the metrics read. Only ``fake_images``, ``real_features`` and ``real_images`` are required."""

    fake_images: np.ndarray                  # uint8 (N, 3, S, S): the generated samples scored
    real_features: np.ndarray                # (R, 2048) Inception features of the reference images
    real_images: np.ndarray                  # uint8 (M, 3, S, S) real images for SWD, MS-SSIM (a memory map is fine)
    real_mu: np.ndarray | None = None        # (2048,) reference mean; None: computed from real_features
    real_sigma: np.ndarray | None = None     # (2048, 2048) reference covariance; likewise
    fake_features: np.ndarray | None = None  # (N, 2048) features of fake_images; None: computed on first use
    real_labels: pd.DataFrame | None = None  # attribute columns of the real images (mode_coverage)
    attribute_classifier: AttributeClassifier | None = None  # (mode_coverage)
    seed: int = 0
    device: str | torch.device = "cpu"
    ms_ssim_pairs: int = DEFAULT_PAIRS       # pairs per set for ms_ssim_*
    progress: bool = False                   # progress bars: Inception features, then the metrics

    def __post_init__(self) -> None:
        self.fake_images = as_uint8_images(self.fake_images, "fake_images")
        self.real_images = as_uint8_images(self.real_images, "real_images")
        if self.fake_images.shape[1:] != self.real_images.shape[1:]:
            raise ValueError(f"generated images {self.fake_images.shape[1:]} and real images "
                             f"{self.real_images.shape[1:]} differ in shape")
        if (self.real_mu is None) != (self.real_sigma is None):
            raise ValueError("give both real_mu and real_sigma, or neither")
        if self.fake_features is not None and len(self.fake_features) != len(self.fake_images):
            raise ValueError(f"{len(self.fake_features)} fake features for {len(self.fake_images)} fake images")

    @property
    def n_fake(self) -> int:
        return len(self.fake_images)

    def fake_inception_features(self) -> np.ndarray:
        """(N, 2048) features of the generated images, computed on first use and kept."""
        if self.fake_features is None:
            self.fake_features = inception_features(self.fake_images, self.device, progress=self.progress)
        return self.fake_features

    def real_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.real_mu is None:
            self.real_mu, self.real_sigma = feature_statistics(self.real_features)
        return self.real_mu, self.real_sigma


MetricFunction = Callable[[EvalInputs], dict[str, float]]
METRICS: dict[str, MetricFunction] = {}


def register_metric(name: str) -> Callable[[MetricFunction], MetricFunction]:
    def decorate(function: MetricFunction) -> MetricFunction:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = function
        return function
    return decorate


def count_label(count: int) -> str:
    """Sample count as written in metric names: 1000 -> '1k', 50000 -> '50k', 1500 -> '1500'."""
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


@register_metric("fid")
def _fid(inputs: EvalInputs) -> dict[str, float]:
    mu_fake, sigma_fake = feature_statistics(inputs.fake_inception_features())
    mu_real, sigma_real = inputs.real_statistics()
    return {f"fid_{count_label(inputs.n_fake)}": frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real)}


@register_metric("kid")
def _kid(inputs: EvalInputs) -> dict[str, float]:
    fake = inputs.fake_inception_features()
    mean, std = kernel_inception_distance(inputs.real_features, fake, subset_size=KID_SUBSET, seed=inputs.seed)
    label = count_label(inputs.n_fake)
    # subsets of both whole sets are all the same set: their spread would be rounding noise, not information
    spread = KID_SUBSET < min(len(inputs.real_features), len(fake))
    return {f"kid_{label}": mean} | ({f"kid_{label}_std": std} if spread else {})


@register_metric("pr_k3")
def _precision_recall(inputs: EvalInputs) -> dict[str, float]:
    # equal set sizes: the k-NN radii shrink as a set grows, so unequal sets would bias the two figures
    fake, real = inputs.fake_inception_features(), inputs.real_features
    count = min(len(fake), len(real))
    rng = np.random.default_rng(inputs.seed)
    precision, recall = precision_recall(subsample(real, count, rng), subsample(fake, count, rng),
                                         k=3, device=inputs.device)
    return {"precision_k3": precision, "recall_k3": recall}


@register_metric("swd")
def _swd(inputs: EvalInputs) -> dict[str, float]:
    return sliced_wasserstein_distance(inputs.real_images, inputs.fake_images, seed=inputs.seed)


@register_metric("ms_ssim")
def _ms_ssim(inputs: EvalInputs) -> dict[str, float]:
    pairs = inputs.ms_ssim_pairs
    return {"ms_ssim_fake": mean_pairwise_ms_ssim(inputs.fake_images, pairs, seed=inputs.seed),
            "ms_ssim_real": mean_pairwise_ms_ssim(inputs.real_images, pairs, seed=inputs.seed)}


@register_metric("memorization")
def _memorization(inputs: EvalInputs) -> dict[str, float]:
    return memorization(inputs.real_features, inputs.fake_inception_features(), device=inputs.device)


@register_metric("mode_coverage")
def _mode_coverage(inputs: EvalInputs) -> dict[str, float]:
    if inputs.attribute_classifier is None or inputs.real_labels is None:
        raise ValueError("mode_coverage needs EvalInputs.attribute_classifier and real_labels "
                         "(available for the synthetic data source only)")
    return mode_coverage(inputs.attribute_classifier, inputs.fake_images, inputs.real_labels, inputs.device)


def default_metric_names(inputs: EvalInputs) -> list[str]:
    """Every registered metric, except mode_coverage when there is no classifier or labels."""
    has_attributes = inputs.attribute_classifier is not None and inputs.real_labels is not None
    return [name for name in METRICS if name != "mode_coverage" or has_attributes]


def compute_metrics(inputs: EvalInputs, names: list[str] | tuple[str, ...] | None = None) -> dict[str, float]:
    """Run the named registered metrics (default: :func:`default_metric_names`) and merge their results."""
    names = default_metric_names(inputs) if names is None else list(names)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; registered: {', '.join(METRICS)}")
    results: dict[str, float] = {}
    bar = tqdm(names, desc="metrics", unit="metric", disable=not inputs.progress)
    for name in bar:
        bar.set_postfix_str(name)  # the slow ones (SWD, MS-SSIM) say so while they run
        results.update({key: float(value) for key, value in METRICS[name](inputs).items()})
    return results
