"""The two GAN architectures (`arch` parameter) and how they are saved and loaded.

``article`` -- the article's Keras DCGAN (Agarwal 2019): LeakyReLU(0.2) and BatchNorm(momentum 0.5)
             throughout, an extra 3x3 convolution before the last upsampling, Glorot-uniform init.
``dcgan``   -- Radford et al. 2016 as in pytorch/examples: ReLU generator, N(0, 0.02) init.

Both are fully convolutional and sized from ``image_size`` (a power of two >= 16): the generator
doubles a 4x4 map log2(image_size) - 2 times; the discriminator halves the image down to 4x4.
The discriminator returns a logit: losses use BCE-with-logits, which is the sigmoid + BCE of the
article computed stably.

The discriminator's normalisation (`d_norm`): ``batch`` -- BatchNorm after each hidden convolution, as
both architectures have it; ``spectral`` -- no BatchNorm, every convolution and linear weight divided
by its largest singular value (spectral normalisation, Miyato et al. 2018: SN-GAN), which bounds how
sharply D can change between nearby images and so keeps its gradients to G informative.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from anime_dcgan.params import ModelParams
from anime_dcgan.util.io import atomic_torch_save

Arch = Literal["article", "dcgan"]
DiscriminatorNorm = Literal["batch", "spectral"]


@dataclass(frozen=True)
class ModelConfig:
    arch: Arch = "article"
    image_size: int = 64
    nz: int = 100    # length of the noise vector z
    ngf: int = 64    # generator feature maps at the last hidden layer
    ndf: int = 64    # discriminator feature maps at the first layer
    d_norm: DiscriminatorNorm = "batch"

    @classmethod
    def from_params(cls, model: ModelParams, image_size: int) -> ModelConfig:
        return cls(model.arch, image_size, model.nz, model.ngf, model.ndf, model.d_norm)

    @property
    def n_doublings(self) -> int:
        """4x4 -> image_size takes this many stride-2 layers (4 for 64x64)."""
        n = self.image_size.bit_length() - 3
        if self.image_size < 16 or self.image_size != 4 << n:
            raise ValueError(f"image_size must be a power of two >= 16, got {self.image_size}")
        return n


# models saved before the article's architecture was renamed from `seed`
_SAVED_ARCH_NAMES = {"seed": "article"}


def _batch_norm(channels: int, arch: Arch) -> nn.BatchNorm2d:
    # Keras' momentum=0.5 keeps half of the running statistic per batch; PyTorch's momentum is the
    # weight of the new batch, 1 - 0.5 = 0.5. pytorch/examples keeps PyTorch's default 0.1.
    return nn.BatchNorm2d(channels, momentum=0.5 if arch == "article" else 0.1)


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A stride-2 downsampling layer: (B, C, 2h, 2w) -> (B, C', h, w)."""
    return nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False)


def _conv_transpose(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """A stride-2 upsampling layer: (B, C, h, w) -> (B, C', 2h, 2w)."""
    return nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False)


def _activation(arch: Arch, generator: bool) -> nn.Module:
    return nn.ReLU(inplace=True) if arch == "dcgan" and generator else nn.LeakyReLU(0.2, inplace=True)


class Generator(nn.Module):
    """z (B, nz, 1, 1) -> image (B, 3, S, S) in [-1, 1]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        arch, n = config.arch, config.n_doublings
        width = config.ngf * 2 ** (n - 1)                                  # 512 for ngf=64, 64x64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.nz, width, 4, 1, 0, bias=False),   # (B, 512, 4, 4)
            _batch_norm(width, arch), _activation(arch, True),
        ]
        for _ in range(n - 1):                                           # (B, 256, 8, 8) ... (B, 64, 32, 32)
            layers += [_conv_transpose(width, width // 2), _batch_norm(width // 2, arch), _activation(arch, True)]
            width //= 2
        if arch == "article":                                               # the article's extra 3x3 conv
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False),     # (B, 64, 32, 32)
                       _batch_norm(width, arch), _activation(arch, True)]
        layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=arch == "article"),  # (B, 3, 64, 64)
                   nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _initialise(self, arch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """image (B, 3, S, S) in [-1, 1] -> logit (B, 1)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        arch, n = config.arch, config.n_doublings
        spectral = config.d_norm == "spectral"
        width = config.ndf
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1, bias=arch == "article"),  # (B, 64, 32, 32)
                                   _activation(arch, False)]
        for _ in range(n - 1):                                           # (B, 128, 16, 16) ... (B, 512, 4, 4)
            norm = [] if spectral else [_batch_norm(width * 2, arch)]
            layers += [_conv(width, width * 2), *norm, _activation(arch, False)]
            width *= 2
        if arch == "article":                                               # flatten + dense, as in Keras
            layers += [nn.Flatten(), nn.Linear(width * 4 * 4, 1)]       # (B, 8192) -> (B, 1)
        else:                                                            # a 4x4 "valid" conv to 1 map
            layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False), nn.Flatten()]  # (B, 1)
        self.net = nn.Sequential(*layers)
        _initialise(self, arch)
        if spectral:  # after the initialisation: the weights drawn there become the unnormalised ones
            for layer in self.net:
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    spectral_norm(layer)  # one power iteration per training forward pass; (u, v) are buffers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def _initialise(module: nn.Module, arch: Arch) -> None:
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if arch == "article":
                nn.init.xavier_uniform_(layer.weight)       # Keras' glorot_uniform default
            else:
                nn.init.normal_(layer.weight, 0.0, 0.02)    # DCGAN paper, section 4
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d) and arch == "dcgan":
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


def model_summary(model: nn.Module, batch_size: int = 1) -> str:
    """A layer-by-layer table with output shapes and parameter counts (the article plots these)."""
    from torchinfo import summary

    config: ModelConfig = model.config
    shape = (batch_size, config.nz, 1, 1) if isinstance(model, Generator) else \
        (batch_size, 3, config.image_size, config.image_size)
    # of a CPU copy: torchinfo moves the model it is given to its device, and its forward pass would
    # update the BatchNorm statistics; and it draws a random input: keep training's RNG intact
    with torch.random.fork_rng(devices=[]):
        table = summary(copy.deepcopy(model).cpu(), input_size=shape, device="cpu", verbose=0, depth=3,
                        col_names=("output_size", "num_params"), row_settings=("var_names",))
    return f"{type(model).__name__} ({config.arch})\n{table}"


def save_model(model: nn.Module, path: Path) -> None:
    """Weights plus the config needed to rebuild them: loadable without params.yaml."""
    kind = "generator" if isinstance(model, Generator) else "discriminator"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"kind": kind, "config": asdict(model.config), "state_dict": state}, path)


def load_model(path: Path, device: torch.device | str = "cpu") -> Generator | Discriminator:
    """Rebuild a saved generator or discriminator, in eval mode."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    cls = {"generator": Generator, "discriminator": Discriminator}[payload["kind"]]
    config = payload["config"] | {"arch": _SAVED_ARCH_NAMES.get(payload["config"]["arch"], payload["config"]["arch"])}
    model = cls(ModelConfig(**config))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()
