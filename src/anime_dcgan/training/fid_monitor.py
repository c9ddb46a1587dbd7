"""FID during training: the generator as it would be exported, scored every `eval_every` steps
against the fid_reference stage's statistics, and the best-scoring snapshot kept.

The scored generator is the EMA generator with standing BatchNorm statistics (exported_generator),
which is exactly what generator_ema.pt would be at that step; sample k comes from seed k, as in the
generate stage, so a score depends on the weights alone. Nothing here draws from the training's
random streams: scoring leaves the run bit-identical to one that does not score.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anime_dcgan.evaluation.fid import feature_statistics, frechet_distance, kernel_inception_distance
from anime_dcgan.evaluation.inception import inception_features
from anime_dcgan.evaluation.reference import load_reference
from anime_dcgan.evaluation.registry import KID_SUBSET
from anime_dcgan.training.networks import Generator
from anime_dcgan.training.sample import generate_for_seeds
from anime_dcgan.training.step import recalibrate_batchnorm

STANDING_STATS_BATCHES = 32    # batches of noise that set the exported generators' BatchNorm statistics
KID_SUBSETS = 10               # each subset holds every generated image, so a few suffice for the mean


def exported_generator(generator: Generator, batch_size: int, seed: int) -> Generator:
    """A copy of `generator` in eval mode with standing BatchNorm statistics, as it is exported."""
    return recalibrate_batchnorm(copy.deepcopy(generator), STANDING_STATS_BATCHES, batch_size, seed + 1)


@dataclass(frozen=True)
class Score:
    step: int
    fid: float
    kid: float

    def row(self) -> dict[str, float]:
        return {"step": self.step, "fid": round(self.fid, 4), "kid": round(self.kid, 6)}


class FidMonitor:
    """Scores generators against a reference; `samples` generated images (seeds 0..samples-1) each."""

    def __init__(self, reference_path: Path, samples: int, seed: int, device: torch.device):
        reference = load_reference(reference_path)
        self.real_features = reference["features"].astype(np.float64)        # (R, 2048)
        self.real_mu, self.real_sigma = reference["mu"], reference["sigma"]  # (2048,), (2048, 2048)
        self.samples, self.seed, self.device = samples, seed, device

    def score(self, generator: Generator, step: int) -> Score:
        """FID and KID of an eval-mode generator (one from exported_generator)."""
        images = generate_for_seeds(generator, range(self.samples))          # uint8 (samples, 3, S, S)
        features = inception_features(images, self.device)                   # (samples, 2048)
        mu, sigma = feature_statistics(features)
        fid = frechet_distance(mu, sigma, self.real_mu, self.real_sigma)
        kid, _ = kernel_inception_distance(self.real_features, features, n_subsets=KID_SUBSETS,
                                           subset_size=KID_SUBSET, seed=self.seed)
        return Score(step, fid, kid)


@dataclass
class BestSnapshot:
    """The best-scoring generator so far: its score and its weights (on the CPU, kept in checkpoints)."""

    score: Score
    weights: dict[str, torch.Tensor]

    @classmethod
    def of(cls, score: Score, generator: Generator) -> BestSnapshot:
        return cls(score, {name: value.detach().cpu().clone() for name, value in generator.state_dict().items()})

    def state(self) -> dict[str, Any]:
        return {"step": self.score.step, "fid": self.score.fid, "kid": self.score.kid, "weights": self.weights}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> BestSnapshot | None:
        return None if state is None else cls(Score(state["step"], state["fid"], state["kid"]), state["weights"])

    def generator(self, like: Generator) -> Generator:
        """The snapshot as an eval-mode generator of `like`'s architecture, on the CPU."""
        generator = copy.deepcopy(like).cpu()
        generator.load_state_dict(self.weights)
        return generator.eval()
