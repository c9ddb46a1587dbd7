"""The metric registry, its inputs, and the reference statistics file of the fid_reference stage."""

import numpy as np
import pytest
from test_metrics_attributes import pattern_images
from test_metrics_swd import blob_images

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation import registry
from anime_dcgan.evaluation.attributes import train_attribute_classifier
from anime_dcgan.evaluation.reference import PROTOCOL, compute_reference, load_reference, save_reference
from anime_dcgan.evaluation.registry import METRICS, EvalInputs, compute_metrics, count_label, default_metric_names


@pytest.mark.parametrize(("count", "label"), [(1000, "1k"), (2000, "2k"), (5000, "5k"), (50_000, "50k"),
                                              (1500, "1500"), (999, "999"), (40, "40")])
def test_sample_counts_are_written_as_in_metric_names(count, label):
    assert count_label(count) == label


def feature_inputs(n_fake: int = 40, **overrides) -> EvalInputs:
    """Small inputs whose features are given (16-D Gaussians), so no Inception network runs."""
    rng = np.random.default_rng(0)
    fields = dict(fake_images=blob_images(n_fake, 1), real_images=blob_images(60, 2),
                  real_features=rng.standard_normal((60, 16)), fake_features=rng.standard_normal((n_fake, 16)),
                  seed=0, ms_ssim_pairs=40)
    return EvalInputs(**{**fields, **overrides})


def test_default_metrics_return_every_named_float():
    results = compute_metrics(feature_inputs())
    assert set(results) == {"fid_40", "kid_40", "precision_k3", "recall_k3", "swd_64", "swd_32",
                            "swd_16", "swd_mean", "ms_ssim_fake", "ms_ssim_real", "copy_fraction",
                            "nn_distance_ratio"}
    assert all(type(value) is float and np.isfinite(value) for value in results.values())
    assert results == compute_metrics(feature_inputs())  # seeded: the same inputs give the same numbers


def test_names_carry_the_sample_count_and_copies_score_as_copies():
    real = np.random.default_rng(1).standard_normal((1000, 8))
    images = np.zeros((1000, 3, 16, 16), np.uint8)
    inputs = EvalInputs(fake_images=images, real_images=images, real_features=real, fake_features=real.copy())
    results = compute_metrics(inputs, ["fid", "kid", "memorization"])
    assert set(results) == {"fid_1k", "kid_1k", "copy_fraction", "nn_distance_ratio"}
    assert results["fid_1k"] == pytest.approx(0.0, abs=1e-8)
    assert results["copy_fraction"] == 1.0


def test_kid_spread_is_reported_only_when_its_subsets_differ(monkeypatch):
    whole_sets = compute_metrics(feature_inputs(), ["kid"])
    monkeypatch.setattr(registry, "KID_SUBSET", 10)  # subsets of 10 rows out of 40 and 60: they differ
    subsets = compute_metrics(feature_inputs(), ["kid"])
    assert set(whole_sets) == {"kid_40"} and set(subsets) == {"kid_40", "kid_40_std"}
    assert subsets["kid_40_std"] > 1e-6


def test_mode_coverage_runs_only_with_a_classifier_and_labels():
    assert "mode_coverage" in METRICS and "mode_coverage" not in default_metric_names(feature_inputs())
    with pytest.raises(ValueError, match="attribute_classifier and real_labels"):
        compute_metrics(feature_inputs(), ["mode_coverage"])
    images, labels = pattern_images(120, seed=0)
    classifier, _ = train_attribute_classifier(images, labels, ["hair_color"], seed=0, epochs=1)
    inputs = EvalInputs(fake_images=images, real_images=images, real_features=np.zeros((2, 4)),
                        real_labels=labels, attribute_classifier=classifier)
    assert "mode_coverage" in default_metric_names(inputs)
    assert set(compute_metrics(inputs, ["mode_coverage"])) == {"tvd_hair_color", "tvd_mean"}


@pytest.mark.filterwarnings("error")  # e.g. torch's warning about non-writable arrays from a memory map
def test_memory_mapped_images_are_read_cleanly(tmp_path):
    np.save(tmp_path / "fake.npy", blob_images(40, 1))
    np.save(tmp_path / "real.npy", blob_images(60, 2))
    mapped = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("fake", "real")}
    inputs = feature_inputs(fake_images=mapped["fake"], real_images=mapped["real"])
    assert compute_metrics(inputs, ["swd", "ms_ssim"]) == compute_metrics(feature_inputs(), ["swd", "ms_ssim"])


def test_bad_requests_and_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['fid50k'\]; registered: fid, kid"):
        compute_metrics(feature_inputs(), ["fid50k"])
    with pytest.raises(ValueError, match="differ in shape"):
        feature_inputs(real_images=blob_images(4, 0, size=32))
    with pytest.raises(ValueError, match="both real_mu and real_sigma"):
        feature_inputs(real_mu=np.zeros(16))
    with pytest.raises(ValueError, match="fake_images must be uint8"):
        feature_inputs(fake_images=blob_images(40, 1).astype(np.float32))
    with pytest.raises(ValueError, match="39 fake features for 40 fake images"):
        feature_inputs(fake_features=np.zeros((39, 16)))


def test_reference_round_trip_and_features_computed_on_demand(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, blob_images(6, 3, size=16))
    images = np.load(path, mmap_mode="r")
    reference = compute_reference(images, n=4, seed=0)
    assert len(reference["indices"]) == 4 and list(reference["indices"]) == sorted(set(reference["indices"]))
    assert reference["features"].shape == (4, 2048) and reference["features"].dtype == np.float32
    assert reference["mu"].dtype == np.float64 and reference["sigma"].shape == (2048, 2048)
    # the choice is a seeded permutation; asking for more images than there are takes them all
    assert np.array_equal(np.sort(np.random.default_rng(0).permutation(6)[:4]), reference["indices"])
    assert compute_reference(images[:2], n=100, seed=0)["indices"].tolist() == [0, 1]

    saved = tmp_path / "reference" / "reference.npz"
    save_reference(saved, reference)
    assert [p.name for p in saved.parent.iterdir()] == ["reference.npz"]  # no temporary file left
    loaded = load_reference(saved)
    assert loaded["protocol"] == PROTOCOL and loaded["seed"] == 0
    for key in ("indices", "features", "mu", "sigma"):
        assert np.array_equal(loaded[key], reference[key]) and loaded[key].dtype == reference[key].dtype

    # the generated images are the reference images: the same features, every sample a copy
    inputs = EvalInputs(fake_images=images[loaded["indices"]], real_images=images, real_features=loaded["features"],
                        real_mu=loaded["mu"], real_sigma=loaded["sigma"])
    results = compute_metrics(inputs, ["memorization"])
    assert inputs.fake_features.shape == (4, 2048)  # computed on first use, kept for the other metrics
    assert np.allclose(inputs.fake_features, loaded["features"], atol=1e-3)
    assert results["copy_fraction"] == 1.0


def test_bad_reference_files_say_to_rerun_the_stage(tmp_path):
    with pytest.raises(PipelineError, match="not found; rerun the fid_reference stage"):
        load_reference(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz file")
    with pytest.raises(PipelineError, match="not a readable .npz file"):
        load_reference(garbage)
    reference = {"indices": np.arange(2), "features": np.zeros((2, 2048), np.float32), "mu": np.zeros(2048),
                 "sigma": np.zeros((2048, 2048)), "seed": 0, "protocol": "another network"}
    other = tmp_path / "other.npz"
    save_reference(other, reference)
    with pytest.raises(PipelineError, match="another feature protocol"):
        load_reference(other)
    save_reference(other, {**reference, "protocol": PROTOCOL, "mu": np.zeros(10)})
    with pytest.raises(PipelineError, match=r"mu has shape \(10,\), expected \(2048,\)"):
        load_reference(other)
    with pytest.raises(ValueError, match="lacks"):
        save_reference(other, {"mu": np.zeros(2048)})
    with pytest.raises(ValueError, match="at least 2 images"):
        compute_reference(np.zeros((5, 3, 16, 16), np.uint8), n=1, seed=0)
    with pytest.raises(PipelineError, match="only 1 real image"):
        compute_reference(np.zeros((1, 3, 16, 16), np.uint8), n=10, seed=0)
