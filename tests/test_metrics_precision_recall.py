"""Improved precision and recall (k = 3) on point clouds whose answers are known."""

import numpy as np
import pytest

from anime_dcgan.evaluation import neighbours
from anime_dcgan.evaluation.precision_recall import manifold_radii, precision_recall


def two_clusters(rng: np.random.Generator, per_cluster: int, dim: int = 8) -> np.ndarray:
    centres = np.zeros((2, dim))
    centres[:, 0] = (-6.0, 6.0)
    return np.concatenate([centre + rng.standard_normal((per_cluster, dim)) for centre in centres])


def test_identical_sets_have_full_precision_and_recall():
    features = np.random.default_rng(0).standard_normal((300, 16))
    assert precision_recall(features, features.copy()) == (1.0, 1.0)


def test_covering_one_of_two_clusters_halves_recall_but_keeps_precision():
    rng = np.random.default_rng(1)
    real = two_clusters(rng, 200, dim=2)
    fresh = two_clusters(rng, 200, dim=2)  # new samples of both clusters
    both_precision, both_recall = precision_recall(real, fresh)
    one_precision, one_recall = precision_recall(real, fresh[200:])  # the second cluster only
    assert both_precision > 0.9 and both_recall > 0.9
    assert one_precision > 0.9
    assert one_recall == pytest.approx(both_recall / 2, abs=0.05)


def test_far_away_fakes_have_no_precision():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((200, 8))
    near = rng.standard_normal((200, 8))
    far = rng.standard_normal((200, 8)) + 30.0
    near_precision, near_recall = precision_recall(real, near)
    far_precision, far_recall = precision_recall(real, far)
    assert near_precision > 0.8 and near_recall > 0.8
    assert far_precision == 0.0 and far_recall == 0.0


def test_radii_are_the_third_neighbour_distance():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    radii = manifold_radii(neighbours.as_feature_tensor(points, "cpu", "points"), k=3)
    # third nearest other point: 0 -> 6, 1 -> 6 (from 1: 0, 3, 6 at 1, 2, 5), 3 -> 3, 6 -> 5, 10 -> 9
    assert radii.tolist() == pytest.approx([6.0, 5.0, 3.0, 5.0, 9.0], abs=1e-4)


def test_chunked_distances_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((150, 8)), rng.standard_normal((120, 8)) + 0.5
    whole = precision_recall(real, fake)
    monkeypatch.setattr(neighbours, "DISTANCE_BUDGET", 1000)  # blocks of 6 to 8 rows
    assert precision_recall(real, fake) == whole


def test_bad_input_is_rejected():
    features = np.zeros((10, 4))
    with pytest.raises(ValueError, match="differ in size"):
        precision_recall(features, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(features, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(np.full((10, 4), np.nan), features)
    with pytest.raises(ValueError, match=r"non-empty \(N, D\)"):
        precision_recall(np.zeros(10), features)
