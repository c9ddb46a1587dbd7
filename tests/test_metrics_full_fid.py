"""fid_50k_full: streamed statistics equal the whole-array ones, the full-set reference, the FID of
streamed generated images, and the refusal of a reference without full-set statistics (by the
evaluate stage before any other metric)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from project_repo import PROJECT, committed_params_text

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation import full_fid
from anime_dcgan.evaluation.fid import RunningStatistics, feature_statistics, frechet_distance
from anime_dcgan.evaluation.inception import inception_features
from anime_dcgan.evaluation.reference import compute_reference, load_reference, save_reference
from anime_dcgan.training.networks import Generator, ModelConfig
from anime_dcgan.training.sample import generate_for_seeds


def test_running_statistics_added_in_chunks_equal_those_of_the_whole_array():
    features = np.random.default_rng(0).normal(3.0, 2.0, (301, 12))
    statistics = RunningStatistics(12)
    for start in range(0, 301, 64):
        statistics.add(features[start:start + 64])
    mean, covariance = statistics.mean_and_covariance()
    expected_mean, expected_covariance = feature_statistics(features)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        RunningStatistics(3).mean_and_covariance()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (24, 3, 16, 16), dtype=np.uint8)


def test_a_full_reference_holds_the_statistics_of_every_image_and_survives_saving(images, tmp_path, monkeypatch):
    monkeypatch.setattr("anime_dcgan.evaluation.reference.FULL_CHUNK", 10)  # three chunks
    reference = compute_reference(images, 8, seed=0, full=True)
    mu, sigma = feature_statistics(inception_features(images))
    np.testing.assert_allclose(reference["full_mu"], mu, rtol=1e-9)
    np.testing.assert_allclose(reference["full_sigma"], sigma, rtol=1e-6, atol=1e-9)
    assert len(reference["indices"]) == 8  # the subset protocol's reference is unchanged
    save_reference(tmp_path / "full.npz", reference)
    loaded = load_reference(tmp_path / "full.npz")
    np.testing.assert_array_equal(loaded["full_sigma"], reference["full_sigma"])
    save_reference(tmp_path / "subset.npz", compute_reference(images, 8, seed=0))
    assert "full_mu" not in load_reference(tmp_path / "subset.npz")


def test_fid_full_streams_the_generated_images_and_needs_a_full_reference(images, monkeypatch):
    monkeypatch.setattr(full_fid, "CHUNK", 7)  # chunks that do not divide the sample count
    reference = compute_reference(images, 8, seed=0, full=True)
    torch.manual_seed(0)
    generator = Generator(ModelConfig("dcgan", image_size=16, nz=8, ngf=4, ndf=4)).eval()
    streamed = full_fid.fid_full(generator, reference, "cpu", samples=20)
    mu, sigma = feature_statistics(inception_features(generate_for_seeds(generator, range(20))))
    assert streamed == pytest.approx(frechet_distance(mu, sigma, reference["full_mu"], reference["full_sigma"]),
                                     rel=1e-6)
    with pytest.raises(PipelineError, match="rerun the fid_reference stage with fid_50k_full: true"):
        full_fid.fid_full(generator, compute_reference(images, 8, seed=0), "cpu", samples=20)


def test_the_evaluate_stage_refuses_a_reference_without_full_statistics_before_any_other_work(images, tmp_path):
    params = yaml.safe_load(committed_params_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "fid_50k_full": True}))
    (tmp_path / "reference").mkdir()
    save_reference(tmp_path / "reference/inception.npz", compute_reference(images, 8, seed=0))
    # no metrics/train.json, samples or models: reaching any of them would fail with another message
    result = subprocess.run([sys.executable, str(PROJECT / "stages/evaluate.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "evaluate: error: the reference statistics hold none of every real image; rerun the fid_reference "
        "stage with fid_50k_full: true (dvc repro)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml", "reference"]
