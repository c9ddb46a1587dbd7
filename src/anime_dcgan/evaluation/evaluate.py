"""The evaluate stage's work: score the generated samples against the real data and draw the report.

Protocol (also in the metric names, e.g. fid_1k): the first `fid_samples` generated samples (seeds
0..fid_samples-1) against the reference real set of the fid_reference stage (min(fid_samples, N)
real images chosen by a seeded permutation); Inception-v3 with the TF 2015-12-05 weights, inputs
resized to 299x299 with the TF1-compatible bilinear filter; see anime_dcgan.evaluation.registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.attributes import load_attribute_classifier
from anime_dcgan.evaluation.memorization import closest_pairs
from anime_dcgan.evaluation.reference import load_reference
from anime_dcgan.evaluation.registry import EvalInputs, compute_metrics
from anime_dcgan.evaluation.report import write_report

# drawn attributes whose coverage is measured (the synthetic source's labels)
COVERAGE_ATTRIBUTES = ("hair_color", "eye_color")
CLASSIFIER_FILE = "classifier.pt"


@dataclass(frozen=True)
class EvaluationInputs:
    samples: Path          # samples/samples.npy, uint8 (n_samples, 3, S, S)
    real_images: Path      # data/processed/images.npy
    manifest: Path         # data/processed/manifest.csv (attribute columns on synthetic data)
    reference: Path        # reference/inception.npz
    attributes_dir: Path   # reference/attributes/ (classifier.pt when the data has attribute labels)
    losses: Path           # metrics/losses.csv
    pictures: dict[str, Path]  # extra pictures for the report (progress contact sheet, interpolations)


def coverage_labels(manifest: Path) -> pd.DataFrame | None:
    """The attribute columns used for mode coverage, or None when the data has none."""
    labels = pd.read_csv(manifest, dtype=str, keep_default_na=False)  # a class named "NA" stays a string
    if not all(column in labels for column in COVERAGE_ATTRIBUTES):
        return None
    return labels[list(COVERAGE_ATTRIBUTES)]


def evaluate(inputs: EvaluationInputs, report_dir: Path, fid_samples: int, seed: int,
             device: torch.device, report_header: Mapping[str, str]) -> dict[str, Any]:
    """All registered metrics of the first fid_samples samples; writes report_dir/index.html."""
    samples = np.load(inputs.samples, mmap_mode="r")
    if len(samples) < fid_samples:
        raise PipelineError(f"{inputs.samples} holds {len(samples)} samples but fid_samples is "
                            f"{fid_samples}; rerun the generate stage (dvc repro generate)")
    fake = np.ascontiguousarray(samples[:fid_samples])                     # (n, 3, S, S)
    real = np.load(inputs.real_images, mmap_mode="r")                       # (N, 3, S, S)
    reference = load_reference(inputs.reference)
    labels = coverage_labels(inputs.manifest)
    classifier_path = inputs.attributes_dir / CLASSIFIER_FILE
    classifier = load_attribute_classifier(classifier_path, device) if classifier_path.is_file() else None

    eval_inputs = EvalInputs(
        fake_images=fake, real_features=reference["features"].astype(np.float64),
        real_images=real[reference["indices"]], real_mu=reference["mu"], real_sigma=reference["sigma"],
        real_labels=labels if classifier is not None else None, attribute_classifier=classifier,
        seed=seed, device=device, progress=True)
    metrics = compute_metrics(eval_inputs)

    pairs = closest_pairs(reference["features"], eval_inputs.fake_inception_features(), k=8, device=device)
    closest_fake = fake[[fake_index for fake_index, _, _ in pairs]]
    closest_real = real[[int(reference["indices"][real_index]) for _, real_index, _ in pairs]]
    write_report(report_dir, metrics, real=real[reference["indices"][:64]], fake=fake[:64],
                 closest_fake=closest_fake, closest_real=closest_real, losses=pd.read_csv(inputs.losses),
                 extra_pictures=inputs.pictures, header=report_header)
    return {**metrics, "fid_samples": fid_samples, "reference_images": len(reference["indices"])}
