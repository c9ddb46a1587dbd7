"""Pictures: image grids, the progress animation and contact sheet, side-by-side pairs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from anime_dcgan.util.io import atomic_path


def image_grid(images: np.ndarray | torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """uint8 (B, 3, H, W) -> uint8 (H', W', 3), nrow images per row."""
    images = torch.tensor(np.asarray(images))  # a copy: the input may be a read-only memory map
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=255)   # (3, H', W') uint8
    return grid.permute(1, 2, 0).contiguous().numpy()


def save_png(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def load_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8, as save_png wrote it."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def step_of(frame: Path) -> int:
    """step_001500.png -> 1500"""
    match = re.search(r"(\d+)", frame.stem)
    if match is None:
        raise ValueError(f"{frame}: a progress frame is named step_<number>.png")
    return int(match.group(1))


def progress_frames(folder: Path) -> list[Path]:
    """The progress grids in training order."""
    return sorted(folder.glob("step_*.png"), key=step_of)


def _labelled(frame: Path) -> Image.Image:
    image = Image.open(frame).convert("RGB")
    draw = ImageDraw.Draw(image)
    label = f"step {step_of(frame):,}"
    box = draw.textbbox((0, 0), label)
    draw.rectangle((0, 0, box[2] + 6, box[3] + 4), fill=(0, 0, 0))
    draw.text((3, 1), label, fill=(255, 255, 255))
    return image


def save_progress_gif(frames: Sequence[Path], path: Path, frame_ms: int = 400) -> None:
    """An animation of the fixed-noise grids through training, each labelled with its step; the
    last frame is held longer."""
    if not frames:
        raise ValueError("no progress grids to animate: the train stage writes progress/step_*.png")
    images = [_labelled(frame).quantize(colors=255, method=Image.Quantize.MEDIANCUT) for frame in frames]
    durations = [frame_ms] * (len(images) - 1) + [frame_ms * 5]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)


def evenly_spaced(frames: Sequence[Path], count: int) -> list[Path]:
    """`count` frames spread over training, always including the first and the last."""
    if len(frames) <= count:
        return list(frames)
    positions = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in positions]


def save_contact_sheet(frames: Sequence[Path], path: Path, count: int = 8, columns: int = 4) -> None:
    """A few labelled progress grids side by side (the article shows the images every 1,500 steps)."""
    chosen = [np.asarray(_labelled(frame)) for frame in evenly_spaced(frames, count)]
    tiles = torch.from_numpy(np.stack(chosen)).permute(0, 3, 1, 2)           # (K, 3, H, W)
    save_png(image_grid(tiles, nrow=min(columns, len(chosen)), padding=8), path)


def pairs_image(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Pairs side by side: uint8 (K, 3, H, W) twice -> one grid of K rows [left | right]."""
    if left.shape != right.shape:
        raise ValueError(f"pairs need equal shapes, got {left.shape} and {right.shape}")
    interleaved = np.stack([left, right], axis=1).reshape(-1, *left.shape[1:])  # (2K, 3, H, W)
    return image_grid(interleaved, nrow=2)
