"""Sliced Wasserstein distance on Laplacian-pyramid patches: known answers and the right order."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anime_dcgan.evaluation.swd import _upsample, laplacian_pyramid, level_resolutions, sliced_wasserstein_distance


def blob_images(count: int, seed: int, size: int = 64) -> np.ndarray:
    """uint8 (count, 3, size, size) stand-ins for real images: a vertical colour gradient with three
    soft-edged discs of random colours, positions and sizes (shared by the metrics tests)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = np.empty((count, 3, size, size))
    for index in range(count):
        top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        canvas = top[:, None, None] * (1 - y) + bottom[:, None, None] * y
        for _ in range(3):
            cx, cy, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25)
            inside = np.clip((radius - np.hypot(x - cx, y - cy)) * size, 0, 1)  # 1 px soft edge
            canvas = canvas * (1 - inside) + rng.uniform(0, 255, 3)[:, None, None] * inside
        images[index] = canvas
    return images.round().astype(np.uint8)


def box_blur(images: np.ndarray) -> np.ndarray:
    pixels = torch.from_numpy(images).float()
    kernel = torch.ones(3, 1, 5, 5) / 25
    blurred = F.conv2d(F.pad(pixels, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    return blurred.round().to(torch.uint8).numpy()


def test_pyramid_levels_add_back_up_to_the_image():
    images = torch.from_numpy(blob_images(2, 0)).float()
    band_64, band_32, low_16 = laplacian_pyramid(images)
    assert [level.shape[-1] for level in (band_64, band_32, low_16)] == [64, 32, 16]
    # a Laplacian pyramid is invertible: upsample and add the detail back, level by level
    rebuilt = band_64 + _upsample(band_32 + _upsample(low_16))
    assert torch.allclose(rebuilt, images, atol=1e-3)
    # the low-pass level is a smoothed image; the band-pass levels are detail around zero
    assert low_16.mean().item() == pytest.approx(images.mean().item(), rel=0.02)
    assert abs(band_64.mean().item()) < 1.0 and band_64.abs().max().item() > 10


def test_identical_sets_score_zero_and_the_order_is_right():
    real, other_real = blob_images(64, 0), blob_images(64, 1)
    noise = np.random.default_rng(2).integers(0, 256, real.shape, dtype=np.uint8)
    same = sliced_wasserstein_distance(real, real.copy())
    halves = sliced_wasserstein_distance(real, other_real)
    blurred = sliced_wasserstein_distance(real, box_blur(other_real))
    versus_noise = sliced_wasserstein_distance(real, noise)
    assert set(same) == {"swd_64", "swd_32", "swd_16", "swd_mean"}
    assert all(value == 0.0 for value in same.values())
    assert 0 < halves["swd_mean"] < blurred["swd_mean"] < versus_noise["swd_mean"]
    assert blurred["swd_64"] > 2 * halves["swd_64"]  # blurring removes the finest band above all
    assert versus_noise["swd_mean"] == pytest.approx(np.mean([versus_noise[f"swd_{r}"] for r in (64, 32, 16)]))


def test_seeded_and_subsamples_the_larger_set():
    real, other = blob_images(24, 3), blob_images(40, 4)  # unequal sizes: 24 of the 40 are used
    first = sliced_wasserstein_distance(real, other, seed=5)
    assert first == sliced_wasserstein_distance(real, other, seed=5)
    assert first != sliced_wasserstein_distance(real, other, seed=6)


def test_levels_follow_the_image_size():
    assert level_resolutions(64) == [64, 32, 16]
    images = blob_images(8, 0, size=32)
    assert set(sliced_wasserstein_distance(images, torch.from_numpy(images))) == {
        "swd_32", "swd_16", "swd_8", "swd_mean"}


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match="coarsest level of at least 7"):
        sliced_wasserstein_distance(blob_images(2, 0, 16), blob_images(2, 1, 16))
    with pytest.raises(ValueError, match="one size"):
        sliced_wasserstein_distance(blob_images(2, 0, 64), blob_images(2, 1, 32))
    with pytest.raises(ValueError, match="images_b must be uint8"):
        sliced_wasserstein_distance(blob_images(2, 0), blob_images(2, 1).astype(np.float32))
