"""MS-SSIM diversity: identical pairs score 1, noise pairs near 0, and the scale choice per size."""

import numpy as np
import pytest
import torch
from test_metrics_swd import blob_images

from anime_dcgan.evaluation.diversity import mean_pairwise_ms_ssim, ms_ssim, ms_ssim_betas, ms_ssim_scales, random_pairs


def test_identical_pairs_score_one_and_noise_pairs_near_zero():
    images = torch.from_numpy(blob_images(4, 0))
    assert ms_ssim(images, images).tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    noise = np.random.default_rng(0).integers(0, 256, (40, 3, 64, 64), dtype=np.uint8)
    assert mean_pairwise_ms_ssim(noise, n_pairs=60) < 0.1


def test_less_diverse_sets_score_higher():
    noise = np.random.default_rng(1).integers(0, 256, (40, 3, 64, 64), dtype=np.uint8)
    varied = blob_images(40, 2)
    collapsed = np.repeat(blob_images(2, 3), 20, axis=0)  # two modes: half the pairs are identical
    scores = [mean_pairwise_ms_ssim(images, n_pairs=60, seed=0) for images in (noise, varied, collapsed)]
    assert scores == sorted(scores)
    assert scores[2] > 0.4 and scores[1] < 0.4
    assert mean_pairwise_ms_ssim(np.repeat(varied[:1], 5, axis=0), n_pairs=10) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("size", "scales"), [(16, 1), (32, 2), (64, 3), (128, 4), (256, 5)])
def test_scales_keep_the_coarsest_one_at_least_the_window(size, scales):
    assert ms_ssim_scales(size) == scales
    assert sum(ms_ssim_betas(size)) == pytest.approx(1.0)
    images = torch.from_numpy(blob_images(2, 4, size=size))
    assert ms_ssim(images, images.flip(0)).shape == (2,)  # torchmetrics accepts these settings


def test_pairs_are_distinct_seeded_and_cover_the_set():
    first, second = random_pairs(5, 2000, np.random.default_rng(0))
    assert (first != second).all()
    assert set(first) == set(second) == set(range(5))
    again = random_pairs(5, 2000, np.random.default_rng(0))
    assert (again[0] == first).all() and (again[1] == second).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="at least 2 images"):
        mean_pairwise_ms_ssim(blob_images(1, 0))
    with pytest.raises(ValueError, match="square"):
        mean_pairwise_ms_ssim(np.zeros((2, 3, 64, 32), np.uint8))
    with pytest.raises(ValueError, match="n_pairs"):
        mean_pairwise_ms_ssim(blob_images(2, 0), n_pairs=0)
    with pytest.raises(ValueError, match="at least 11 pixels"):
        mean_pairwise_ms_ssim(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        mean_pairwise_ms_ssim(np.zeros((2, 3, 64, 64), np.float32))
