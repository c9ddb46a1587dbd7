"""FID and KID on feature sets with known answers (no Inception network involved)."""

import numpy as np
import pytest
import scipy.linalg

from anime_dcgan.evaluation.fid import feature_statistics, frechet_distance, kernel_inception_distance


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.standard_normal((dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def sqrtm_reference(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's general matrix square root (as pytorch-fid computes it)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_fid_of_a_feature_set_against_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((300, 40))
    mu, sigma = feature_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_equal_covariances_leave_the_squared_mean_shift():
    rng = np.random.default_rng(1)
    sigma = random_covariance(rng, 16)
    mu1, shift = rng.standard_normal(16), rng.standard_normal(16)
    assert frechet_distance(mu1, sigma, mu1 + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)


def test_diagonal_covariances_match_the_closed_form():
    # for commuting (diagonal) covariances tr((S1 S2)^1/2) = sum sqrt(a_i b_i), so
    # FID = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, -2.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # 5 + (1 + 1 + 0 + 0.25)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(7.25)


def with_exact_moments(samples: np.ndarray) -> np.ndarray:
    """Samples transformed so that their sample mean is exactly 0 and their sample covariance exactly I."""
    centred = samples - samples.mean(axis=0)
    cholesky = np.linalg.cholesky(np.cov(centred, rowvar=False))
    return centred @ np.linalg.inv(cholesky).T


def test_fid_grows_with_the_mean_shift_as_the_formula_says():
    # two different samples with the same known moments N(0, I): FID = |delta|^2 exactly
    rng = np.random.default_rng(2)
    base = with_exact_moments(rng.standard_normal((2_000, 4)))
    other = with_exact_moments(rng.standard_normal((2_000, 4)))
    mu_base, sigma_base = feature_statistics(base)
    distances = []
    for shift in (0.0, 0.5, 1.0, 2.0):
        mu, sigma = feature_statistics(other + shift / 2)  # shift/2 on each of 4 axes: |delta|^2 = shift^2
        distances.append(frechet_distance(mu_base, sigma_base, mu, sigma))
    assert distances == pytest.approx([0.0, 0.25, 1.0, 4.0], abs=1e-9)


@pytest.mark.parametrize("samples", [500, 10])  # 10 samples in 24 dimensions: singular covariances
def test_agrees_with_scipy_sqrtm(samples):
    rng = np.random.default_rng(3)
    first = rng.standard_normal((samples, 24)) @ rng.standard_normal((24, 24))
    second = rng.standard_normal((samples, 24)) * 1.5 + 0.2
    stats = (*feature_statistics(first), *feature_statistics(second))
    assert frechet_distance(*stats) == pytest.approx(sqrtm_reference(*stats), rel=1e-6)


def test_bad_statistics_are_rejected():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma2 contains NaN"):
        frechet_distance(mu, sigma, mu, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(mu, -np.eye(3), mu, sigma)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.ones((1, 3)))
    with pytest.raises(ValueError, match="NaN or infinity"):
        feature_statistics(np.array([[0.0, np.inf], [1.0, 2.0]]))


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((500, 64))
    kids = []
    for shift in (0.0, 1.0, 2.0):  # |delta|^2 = shift^2
        fake = rng.standard_normal((500, 64)) + shift / 8
        kids.append(kernel_inception_distance(real, fake, n_subsets=50, subset_size=200, seed=0))
    (same, same_std), (shifted, _), (far, _) = kids
    assert abs(same) < 0.01 and same_std > 0   # unbiased: scatters around 0
    assert shifted > 0.03 and far > 3 * shifted  # MMD^2 grows with the squared shift


def test_kid_is_seeded_and_caps_the_subset_size():
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((30, 8)), rng.standard_normal((20, 8)) + 1
    first = kernel_inception_distance(real, fake, n_subsets=10, subset_size=1000, seed=7)  # size -> 20
    assert first == kernel_inception_distance(real, fake, n_subsets=10, subset_size=1000, seed=7)
    assert first != kernel_inception_distance(real, fake, n_subsets=10, subset_size=1000, seed=8)
    # subsets of 20 draw every fake each time: only the real subsets vary
    assert first[0] > 0


def test_kid_rejects_bad_input():
    features = np.zeros((10, 4))
    with pytest.raises(ValueError, match="same D"):
        kernel_inception_distance(features, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(features, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="n_subsets"):
        kernel_inception_distance(features, features, n_subsets=0)
