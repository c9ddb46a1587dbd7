"""Reference statistics of the real images: the fid_reference stage's output, read by evaluate.

A reference is a pipeline output, never a hidden cache: it is recomputed only when the processed
images change, and it records which images it used and under which feature protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.fid import RunningStatistics, feature_statistics
from anime_dcgan.evaluation.images import as_uint8_images
from anime_dcgan.evaluation.inception import FEATURE_DIM, inception_features
from anime_dcgan.util.io import atomic_path

# Written into every reference; evaluate refuses a reference made under another protocol.
PROTOCOL = "inception-v3-tf-2015-12-05 | uint8 -> tf1-bilinear 299 -> (x-128)/128 -> pool3 2048"
_ARRAYS = ("indices", "features", "mu", "sigma")
FULL_ARRAYS = ("full_mu", "full_sigma")  # statistics of every real image, for fid_50k_full (full_fid.py)
FULL_CHUNK = 1000                        # real images featurised at a time for them


def compute_reference(images: np.ndarray, n: int, seed: int, device: str | torch.device = "cpu",
                      batch_size: int | None = None, progress: bool = False, full: bool = False) -> dict[str, Any]:
    """Inception statistics of min(n, N) real images chosen by a seeded permutation.

    Returns ``indices`` (int64, sorted, into ``images``), ``features`` (float32 (n, 2048), to save
    space), ``mu`` and ``sigma`` (float64, from the unrounded features), ``seed`` and ``protocol``;
    with ``full``, also ``full_mu`` and ``full_sigma``, the statistics of all N images.
    """
    images = as_uint8_images(images)
    if n < 2:
        raise ValueError(f"a reference needs at least 2 images (a covariance), got n = {n}")
    if len(images) < 2:
        raise PipelineError(f"only {len(images)} real image(s): a reference needs at least 2")
    count = min(n, len(images))
    # sorted: the chosen set is the permutation's first `count`, read in file order from the memory map
    indices = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
    features = inception_features(images, device, batch_size=batch_size, progress=progress, indices=indices)
    mu, sigma = feature_statistics(features)
    reference = {"indices": indices.astype(np.int64), "features": features.astype(np.float32), "mu": mu,
                 "sigma": sigma, "seed": seed, "protocol": PROTOCOL}
    if full:
        reference["full_mu"], reference["full_sigma"] = full_statistics(images, device)
    return reference


def full_statistics(images: np.ndarray, device: str | torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Inception mean (2048,) and covariance (2048, 2048) of every image of uint8 (N, 3, S, S)."""
    statistics = RunningStatistics(FEATURE_DIM)
    for start in range(0, len(images), FULL_CHUNK):
        statistics.add(inception_features(images[start:start + FULL_CHUNK], device))
    return statistics.mean_and_covariance()


def save_reference(path: str | Path, reference: dict[str, Any]) -> None:
    """Write a reference to an .npz file (temporary name, then renamed)."""
    missing = [key for key in (*_ARRAYS, "seed", "protocol") if key not in reference]
    if missing:
        raise ValueError(f"reference lacks {missing}; build it with compute_reference")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.savez would append .npz to a name
        keys = (*_ARRAYS, "seed", "protocol", *(key for key in FULL_ARRAYS if key in reference))
        np.savez(handle, **{key: np.asarray(reference[key]) for key in keys})


def load_reference(path: str | Path) -> dict[str, Any]:
    """Read and check a reference written by :func:`save_reference`."""
    path = Path(path)
    hint = "rerun the fid_reference stage (dvc repro fid_reference)"
    if not path.is_file():
        raise PipelineError(f"reference statistics {path} not found; {hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            reference = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path} is not a readable .npz file ({exc}); {hint}") from None
    missing = [key for key in (*_ARRAYS, "seed", "protocol") if key not in reference]
    if missing:
        raise PipelineError(f"{path} lacks {missing}: not a reference file; {hint}")
    if str(reference["protocol"]) != PROTOCOL:
        raise PipelineError(f"{path} was computed under another feature protocol "
                            f"({reference['protocol']!s}, expected {PROTOCOL}); {hint}")
    count = len(reference["indices"])
    expected = {"features": (count, FEATURE_DIM), "mu": (FEATURE_DIM,), "sigma": (FEATURE_DIM, FEATURE_DIM),
                "full_mu": (FEATURE_DIM,), "full_sigma": (FEATURE_DIM, FEATURE_DIM)}
    for key, shape in expected.items():
        if key in reference and reference[key].shape != shape:
            raise PipelineError(f"{path}: {key} has shape {reference[key].shape}, expected {shape}; {hint}")
    reference["seed"] = int(reference["seed"])
    reference["protocol"] = str(reference["protocol"])
    return reference


def reference_digest(reference: dict[str, Any]) -> str:
    """12 hex digits naming a reference's statistics and protocol: FIDs are comparable only when
    they were measured against the same one."""
    import hashlib

    digest = hashlib.sha256(reference["protocol"].encode())
    for key in ("mu", "sigma"):
        digest.update(np.ascontiguousarray(reference[key], dtype=np.float64).tobytes())
    return digest.hexdigest()[:12]
