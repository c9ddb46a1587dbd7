"""Copy detection by nearest neighbours: copies raise the alarm, fresh samples do not."""

import numpy as np
import pytest

from anime_dcgan.evaluation.memorization import closest_pairs, memorization


def test_copies_of_real_images_are_flagged():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((400, 32))
    copies = real[rng.permutation(400)[:100]] + 1e-3 * rng.standard_normal((100, 32))
    result = memorization(real, copies)
    assert result["copy_fraction"] == 1.0
    assert result["nn_distance_ratio"] < 0.01


def test_fresh_samples_are_not_flagged():
    rng = np.random.default_rng(1)
    real, fresh = rng.standard_normal((400, 32)), rng.standard_normal((400, 32))
    result = memorization(real, fresh)
    assert result["copy_fraction"] <= 0.05  # about 0.01 by construction
    assert result["nn_distance_ratio"] == pytest.approx(1.0, abs=0.1)


def test_closest_pairs_find_the_planted_copies():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((200, 16))
    fake = rng.standard_normal((50, 16))
    fake[7] = real[123] + 0.01
    fake[31] = real[5] + 0.05
    pairs = closest_pairs(real, fake, k=3)
    assert [(f, r) for f, r, _ in pairs[:2]] == [(7, 123), (31, 5)]
    assert pairs[0][2] == pytest.approx(0.04, abs=2e-3)   # |0.01 * ones(16)| = 0.04
    assert pairs[0][2] < pairs[1][2] < pairs[2][2]
    assert len(closest_pairs(real, fake, k=100)) == 50


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="at least 2 real images"):
        memorization(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="k must be at least 1"):
        closest_pairs(np.zeros((5, 4)), np.zeros((5, 4)), k=0)
    with pytest.raises(ValueError, match="differ in size"):
        memorization(np.zeros((5, 4)), np.zeros((5, 3)))
