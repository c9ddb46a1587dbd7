"""The field's FID protocol, for GPU runs: `fid_50k_full`, 50,000 generated images against the
statistics of every real image (as stylegan2/3, StudioGAN and Mimicry report it).

Its FIDs may be compared with published ones measured the same way on the same dataset; `fid_1k`
(fewer images on both sides, which biases FID upwards) may be compared only with other `fid_1k`
figures against the same reference. The 50,000 images are streamed: generated, featurised and
folded into a running mean and covariance a chunk at a time, never held at once.
"""

from __future__ import annotations

from typing import Any

import torch

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.fid import RunningStatistics, frechet_distance
from anime_dcgan.evaluation.inception import FEATURE_DIM, inception_features
from anime_dcgan.training.networks import Generator
from anime_dcgan.training.sample import generate_for_seeds

FULL_SAMPLES = 50_000
METRIC = "fid_50k_full"
CHUNK = 1000  # generated images featurised at a time


def require_full_statistics(reference: dict[str, Any]) -> None:
    """Refuse a reference computed without full=True (the evaluate stage asks before its other metrics)."""
    if "full_mu" not in reference:
        raise PipelineError("the reference statistics hold none of every real image; rerun the fid_reference "
                            "stage with fid_50k_full: true (dvc repro)")


def fid_full(generator: Generator, reference: dict[str, Any], device: str | torch.device,
             samples: int = FULL_SAMPLES) -> float:
    """FID of `samples` images of an eval-mode generator (seeds 0..samples-1) against the full-set
    statistics of a reference (one computed with full=True)."""
    require_full_statistics(reference)
    statistics = RunningStatistics(FEATURE_DIM)
    for start in range(0, samples, CHUNK):
        images = generate_for_seeds(generator, range(start, min(start + CHUNK, samples)))  # uint8 (n, 3, S, S)
        statistics.add(inception_features(images, device))
    mu, sigma = statistics.mean_and_covariance()
    return frechet_distance(mu, sigma, reference["full_mu"], reference["full_sigma"])
