"""The GAN update as pure functions of tensors: no I/O, no host synchronisation.

One training step (the article's recipe, Agarwal 2019 / Radford et al. 2016):
  1. D on the real batch:  maximise log D(x)          with noisy targets 1 - U(0, label_noise)
  2. D on the fake batch:  maximise log(1 - D(G(z)))  with noisy targets U(0, label_noise)
     (two separate updates, like the article's two `train_on_batch` calls)
  3. G:                    maximise log D(G(z))       with the noisy real targets of step 1
     (reusing step 2's fake batch, as pytorch/examples does: one generator forward per step)
  4. EMA of G's weights.
With `mirror`, half the real images are flipped; with `augment`, every image D sees in 1-3, real
and fake, is augmented differentiably first (training/augment.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anime_dcgan.params import OptimParams
from anime_dcgan.training.augment import augmentation, mirror
from anime_dcgan.training.networks import Discriminator, Generator, ModelConfig

# indices into the tensor returned by train_step
STEP_METRICS = ("loss_d_real", "loss_d_fake", "loss_g", "d_x", "d_g_z", "d_accuracy")


@dataclass
class Gan:
    config: OptimParams
    generator: Generator
    discriminator: Discriminator
    ema: Generator                        # exponential moving average of the generator's weights
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    # D as the generator update runs it (loop.networks_for_steps: outside DDP); None = discriminator
    discriminator_in_g_update: nn.Module | None = None
    # what D's inputs go through first (augment.augmentation); None = nothing
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None


def build_gan(model: ModelConfig, config: OptimParams, device: torch.device) -> Gan:
    """Networks in channels_last (faster convolutions on CPU and tensor cores) and their optimisers."""
    generator = Generator(model).to(device, memory_format=torch.channels_last)
    discriminator = Discriminator(model).to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        # the first layer's weight (nz, C, 4, 4) meets a (B, nz, 1, 1) input: cuDNN returns its gradient
        # in NCHW whatever the weight's layout, and the compiled step's graph would expect channels_last
        latent = generator.net[0].weight
        latent.data = latent.data.contiguous()
    ema = copy.deepcopy(generator).requires_grad_(False)
    # fused Adam: the whole update in a few kernels on CUDA, one vectorised loop on the CPU
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2), **fused)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2), **fused)
    return Gan(config, generator, discriminator, ema, opt_g, opt_d,
               augment=augmentation(config.augment, config.augment_p))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float (B, 3, H, W) in [-1, 1], channels_last."""
    return images.float().div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)


def draw_step_inputs(n_images: int, batch_size: int, nz: int, label_noise: float,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's randomness, from the global RNG: batch indices, noise z and the noisy targets."""
    indices = torch.randint(n_images, (batch_size,), device=device)          # (B,)
    z = torch.randn(batch_size, nz, 1, 1, device=device)                    # (B, nz, 1, 1)
    noise = torch.rand(2, batch_size, 1, device=device) * label_noise       # (2, B, 1)
    targets = torch.stack((1.0 - noise[0], noise[1]))                       # real, fake targets
    return indices, z, targets


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up: early on the EMA follows the generator closely, so a short run's EMA does not keep a
    visible share of the random initial weights (TensorFlow's num_updates rule)."""
    return min(decay, (1 + step) / (10 + step))


def train_step(gan: Gan, dataset: torch.Tensor, indices: torch.Tensor, z: torch.Tensor,
               targets: torch.Tensor, autocast, ema_decay: float) -> torch.Tensor:
    """One GAN update. dataset: uint8 (N, 3, H, W) on the device. Returns (6,) STEP_METRICS, on device."""
    G, D = gan.generator, gan.discriminator
    real = normalise(dataset[indices])                                      # (B, 3, H, W)
    if gan.config.mirror:
        real = mirror(real)
    seen_by_d = gan.augment or (lambda images: images)                     # (B, 3, H, W) -> same
    real_targets, fake_targets = targets[0], targets[1]                     # (B, 1) each

    with autocast:
        fake = G(z)                                                         # (B, 3, H, W)

    # 1. D on real: minimise BCE(D(x), 1 - u)  ==  maximise log D(x)
    with autocast:
        logits_real = D(seen_by_d(real)).float()                            # (B, 1)
    loss_d_real = F.binary_cross_entropy_with_logits(logits_real, real_targets)
    # statistics read at once: a CUDA-graph replay of D may reuse its output buffer
    d_x, real_right = _detached_stats(logits_real, real=True)
    gan.opt_d.zero_grad(set_to_none=True)
    loss_d_real.backward()
    gan.opt_d.step()

    # 2. D on fake: minimise BCE(D(G(z)), u)  ==  maximise log(1 - D(G(z)))
    with autocast:
        logits_fake = D(seen_by_d(fake.detach())).float()                   # (B, 1)
    loss_d_fake = F.binary_cross_entropy_with_logits(logits_fake, fake_targets)
    d_g_z, fake_right = _detached_stats(logits_fake, real=False)
    gan.opt_d.zero_grad(set_to_none=True)
    loss_d_fake.backward()
    gan.opt_d.step()

    # 3. G: minimise BCE(D(G(z)), 1 - u)  ==  maximise log D(G(z)) (the non-saturating loss)
    D.requires_grad_(False)  # gradients flow through D to G; D's own weight gradients are not needed
    try:
        D_in_g_update = D if gan.discriminator_in_g_update is None else gan.discriminator_in_g_update
        with autocast:
            logits_g = D_in_g_update(seen_by_d(fake)).float()               # (B, 1)
        loss_g = F.binary_cross_entropy_with_logits(logits_g, real_targets)
        gan.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        gan.opt_g.step()
    finally:  # also when a compiled step fails here: the eager steps that follow train D again
        D.requires_grad_(True)

    # 4. EMA of the generator
    update_ema(gan.ema, G, ema_decay)

    accuracy = (real_right + fake_right) / 2
    return torch.stack((loss_d_real.detach(), loss_d_fake.detach(), loss_g.detach(), d_x, d_g_z, accuracy))


@torch.no_grad()
def _detached_stats(logits: torch.Tensor, real: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean D output (a probability) and the share of the batch D classifies right."""
    right = (logits > 0) if real else (logits < 0)
    return torch.sigmoid(logits).mean(), right.float().mean()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model; buffers (BatchNorm statistics) are copied.
    decay 0 makes the EMA a plain copy of the generator."""
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def recalibrate_batchnorm(generator: Generator, batches: int, batch_size: int, seed: int) -> Generator:
    """Replace the BatchNorm running statistics by exact averages over `batches` batches of fresh noise.

    The running statistics were accumulated for the raw generator's weights with momentum 0.5 (i.e.
    mostly the last batch); they do not match the EMA weights. Averaging them over many batches
    ("standing statistics") gives an eval-mode generator whose every sample depends on its own noise
    only, so sample k is the same whatever the batch size.
    """
    device = next(generator.parameters()).device
    noise = torch.Generator(device="cpu").manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches seen
    generator.train()
    for _ in range(batches):
        z = torch.randn(batch_size, generator.config.nz, 1, 1, generator=noise).to(device)
        generator(z)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return generator.eval()
