"""Sampling a trained generator: one seed per image, and spherical interpolation between seeds.

Sample k is generated from z_k = randn(nz) drawn by a generator seeded with k (StyleGAN's `--seeds`
convention), and the exported generator is in eval mode with fixed BatchNorm statistics, so sample
k is the same whatever the batch size, the device's batch order or how many samples are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anime_dcgan.training.networks import Generator
from anime_dcgan.util.io import atomic_dir, atomic_path
from anime_dcgan.util.visuals import image_grid, progress_frames, save_contact_sheet, save_png, save_progress_gif


def latent_for_seed(seed: int, nz: int) -> torch.Tensor:
    """z (nz, 1, 1) for one seed, drawn on the CPU so it is identical on every device."""
    return torch.randn(nz, 1, 1, generator=torch.Generator().manual_seed(seed))


def latents_for_seeds(seeds: Sequence[int], nz: int) -> torch.Tensor:
    """(len(seeds), nz, 1, 1)"""
    return torch.stack([latent_for_seed(seed, nz) for seed in seeds])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W), the storage format of real images."""
    return images.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def generate(generator: Generator, latents: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """uint8 (N, 3, S, S) images for latents (N, nz, 1, 1), in eval mode, fp32."""
    if generator.training:
        raise ValueError("generate() needs an eval-mode generator: in train mode BatchNorm makes each "
                         "sample depend on the rest of its batch")
    device = next(generator.parameters()).device
    chunks = [to_uint8(generator(latents[start:start + batch_size].to(device))).cpu()
              for start in range(0, len(latents), batch_size)]
    return torch.cat(chunks).numpy()


def generate_for_seeds(generator: Generator, seeds: Sequence[int], batch_size: int = 256) -> np.ndarray:
    return generate(generator, latents_for_seeds(seeds, generator.config.nz), batch_size)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents a and b (nz, 1, 1) at fractions t (T,) -> (T, nz, 1, 1).

    Gaussian latents concentrate near a sphere; a straight line between two of them passes through
    low-norm points the generator never saw, spherical interpolation stays on the shell."""
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    t = t.double()[:, None]                                                 # (T, 1)
    if omega.abs() < 1e-6:  # (nearly) parallel: the linear path is the spherical one
        mixed = (1 - t) * a_flat + t * b_flat
    else:
        mixed = (torch.sin((1 - t) * omega) * a_flat + torch.sin(t * omega) * b_flat) / torch.sin(omega)
    return mixed.to(a.dtype).reshape(len(t), *a.shape)


def interpolation_latents(seed_pairs: Sequence[tuple[int, int]], steps: int, nz: int) -> torch.Tensor:
    """Rows of `steps` latents from seed a to seed b, endpoints included -> (rows * steps, nz, 1, 1)."""
    t = torch.linspace(0, 1, steps)
    rows = [slerp(latent_for_seed(a, nz), latent_for_seed(b, nz), t) for a, b in seed_pairs]
    return torch.cat(rows)


def write_samples(generator: Generator, n_samples: int, progress_dir: Path, out_dir: Path,
                  interpolation_rows: int = 8, interpolation_steps: int = 10) -> dict[str, Path]:
    """The generate stage's outputs in out_dir; returns the pictures by name (for MLflow and DVC plots).

    samples.npy     uint8 (n_samples, 3, S, S), sample k from seed k (what the evaluate stage scores)
    images/         the same samples as PNG files, seed_000000.png ...
    grid.png        the first 64 samples, 8 x 8
    interpolation.png  rows of spherical interpolations from seed 2r to seed 2r + 1
    progress.gif / progress_sheet.png  the fixed-noise grids through training
    """
    images = generate_for_seeds(generator, range(n_samples))                # (n, 3, S, S)
    with atomic_path(out_dir / "samples.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, images)
    _write_pngs(images, out_dir / "images")

    pictures = {"grid": out_dir / "grid.png", "interpolation": out_dir / "interpolation.png",
                "progress_sheet": out_dir / "progress_sheet.png", "progress": out_dir / "progress.gif"}
    save_png(image_grid(images[:64]), pictures["grid"])
    pairs = [(2 * row, 2 * row + 1) for row in range(interpolation_rows)]
    path = generate(generator, interpolation_latents(pairs, interpolation_steps, generator.config.nz))
    save_png(image_grid(path, nrow=interpolation_steps), pictures["interpolation"])
    frames = progress_frames(progress_dir)
    save_contact_sheet(frames, pictures["progress_sheet"])
    save_progress_gif(frames, pictures["progress"])
    return pictures


def _write_pngs(images: np.ndarray, folder: Path) -> None:
    """One PNG per sample, named by its seed."""
    with atomic_dir(folder) as staging:
        for seed, image in enumerate(images):
            Image.fromarray(image.transpose(1, 2, 0)).save(staging / f"seed_{seed:06d}.png")
