"""Augmentations of the images the discriminator sees, for small datasets, where D otherwise learns
the real set by heart and stops teaching G.

- `mirror`: a horizontal flip of half the real images (anime faces are roughly symmetric). Real data
  only: it changes the data set, not what D sees of G.
- `augment: diffaugment`: Differentiable Augmentation (Zhao et al. 2020, "Differentiable
  Augmentation for Data-Efficient GAN Training"), applied to every image D sees, real and fake, in
  all three updates, and differentiable, so that G's gradient flows back through it. Its three
  transforms as the paper describes them: colour (brightness + U(-0.5, 0.5), saturation: the
  deviation from the pixel's channel mean x U(0, 2), contrast: the deviation from the image mean x
  U(0.5, 1.5)), translation (a shift of up to 1/8 of the image size each way, zero padded) and
  cutout (a square of half the image size set to zero, anywhere in the image). With probability
  `augment_p` each image gets each transform; at 0 nothing changes.

Images are float (B, 3, H, W) in [-1, 1] (step.normalise); the random draws come from `generator`,
or the global RNG (the step's stream, saved in checkpoints) when it is None.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AUGMENT_POLICIES = ("none", "diffaugment")
TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


def _uniform(images: torch.Tensor, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """One U(low, high) draw per image, shaped (B, 1, 1, 1)."""
    draw = torch.rand(images.shape[0], 1, 1, 1, device=images.device, dtype=images.dtype, generator=generator)
    return draw * (high - low) + low


def _chosen(images: torch.Tensor, probability: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 1, 1, 1) bool: the images a transform applies to."""
    return _uniform(images, 0.0, 1.0, generator) < probability


def mirror(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2."""
    return torch.where(_chosen(images, 0.5, generator), images.flip(3), images)


def colour(images: torch.Tensor, probability: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    x = images
    chosen = _chosen(x, probability, generator)
    x = torch.where(chosen, x + _uniform(x, -0.5, 0.5, generator), x)                             # brightness
    channel_mean = x.mean(dim=1, keepdim=True)                                                     # (B, 1, H, W)
    x = torch.where(chosen, (x - channel_mean) * _uniform(x, 0.0, 2.0, generator) + channel_mean, x)  # saturation
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)                                               # (B, 1, 1, 1)
    return torch.where(chosen, (x - image_mean) * _uniform(x, 0.5, 1.5, generator) + image_mean, x)  # contrast


def translation(images: torch.Tensor, probability: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Each chosen image shifted by whole pixels, up to TRANSLATION_RATIO of its size each way; what
    moves in is zero (grey in [-1, 1])."""
    batch, _, height, width = images.shape
    reach_y, reach_x = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
    device = images.device
    chosen = _chosen(images, probability, generator).view(batch, 1, 1)
    shift_y = torch.randint(-reach_y, reach_y + 1, (batch, 1, 1), device=device, generator=generator) * chosen
    shift_x = torch.randint(-reach_x, reach_x + 1, (batch, 1, 1), device=device, generator=generator) * chosen
    rows = torch.arange(height, device=device).view(1, height, 1) + shift_y + reach_y       # (B, H, 1)
    columns = torch.arange(width, device=device).view(1, 1, width) + shift_x + reach_x      # (B, 1, W)
    padded = F.pad(images, (reach_x, reach_x, reach_y, reach_y)).permute(0, 2, 3, 1)        # (B, H', W', 3)
    picked = padded[torch.arange(batch, device=device).view(batch, 1, 1), rows, columns]     # (B, H, W, 3)
    return picked.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def cutout(images: torch.Tensor, probability: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each chosen image with a square of CUTOUT_RATIO of its size set to zero, centred anywhere in it
    (clipped at the borders)."""
    batch, _, height, width = images.shape
    size_y, size_x = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
    device = images.device
    # the square's top-left corner, from half a square above (left of) the image to its last half square
    top = torch.randint(0, height, (batch, 1, 1), device=device, generator=generator) - size_y // 2
    left = torch.randint(0, width, (batch, 1, 1), device=device, generator=generator) - size_x // 2
    rows = torch.arange(height, device=device).view(1, height, 1) - top        # (B, H, 1): row within the square
    columns = torch.arange(width, device=device).view(1, 1, width) - left      # (B, 1, W)
    inside = (rows >= 0) & (rows < size_y) & (columns >= 0) & (columns < size_x)  # (B, H, W)
    chosen = _chosen(images, probability, generator).view(batch, 1, 1)
    return images * ~(inside & chosen).unsqueeze(1)


def diffaugment(images: torch.Tensor, probability: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W): colour, translation and cutout, in the paper's order."""
    for transform in (colour, translation, cutout):
        images = transform(images, probability, generator)
    return images


def augmentation(policy: str, probability: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function that augments what D sees under `policy`, or None for no augmentation."""
    if policy == "none" or probability == 0:
        return None
    return lambda images, generator=None: diffaugment(images, probability, generator)
