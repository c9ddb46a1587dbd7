"""Mode coverage: an attribute classifier trained on coloured-pattern images with known labels."""

import numpy as np
import pandas as pd
import pytest
import torch

from anime_dcgan.errors import PipelineError
from anime_dcgan.evaluation.attributes import (
    load_attribute_classifier,
    mode_coverage,
    predict_attributes,
    save_attribute_classifier,
    train_attribute_classifier,
)

HAIR = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
EYES = {"dark": (20, 20, 20), "white": (250, 250, 250), "cyan": (30, 220, 230)}


def pattern_images(count: int, seed: int, hair: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """uint8 (count, 3, 32, 32) 'faces': a hair-coloured top band and two small eye squares of the
    eye colour at a jittered height, on a random grey; labels drawn uniformly unless ``hair`` is fixed."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 32, 32, 3), np.uint8)
    rows = []
    for index in range(count):
        hair_name = hair or rng.choice(list(HAIR))
        eye_name = rng.choice(list(EYES))
        canvas = np.full((32, 32, 3), rng.integers(90, 170), np.int64)
        canvas[: rng.integers(8, 12)] = HAIR[hair_name]
        eye_row = rng.integers(14, 20)
        for eye_col in (8, 21):
            canvas[eye_row:eye_row + 3, eye_col:eye_col + 3] = EYES[eye_name]
        canvas += rng.integers(-12, 13, canvas.shape)  # pixel noise
        images[index] = np.clip(canvas, 0, 255)
        rows.append({"index": index, "hair_color": hair_name, "eye_color": eye_name})
    return images.transpose(0, 3, 1, 2).copy(), pd.DataFrame(rows)


@pytest.fixture(scope="module")
def trained():
    images, labels = pattern_images(600, seed=0)
    model, report = train_attribute_classifier(images, labels, ["hair_color", "eye_color"], seed=0, epochs=4)
    return images, labels, model, report


def test_the_classifier_learns_clean_labels(trained):
    _, _, model, report = trained
    assert report["val_accuracy_hair_color"] > 0.95
    assert report["val_accuracy_eye_color"] > 0.9
    assert report["train_images"] == 540 and report["val_images"] == 60
    assert model.config.classes == {"hair_color": ("blue", "green", "red", "yellow"),
                                    "eye_color": ("cyan", "dark", "white")}


def test_shuffled_real_images_cover_every_mode(trained):
    images, labels, model, _ = trained
    shuffled = images[np.random.default_rng(1).permutation(len(images))]
    result = mode_coverage(model, shuffled, labels)
    assert set(result) == {"tvd_hair_color", "tvd_eye_color", "tvd_mean"}
    assert result["tvd_hair_color"] < 0.03 and result["tvd_eye_color"] < 0.05
    assert result["tvd_mean"] == pytest.approx((result["tvd_hair_color"] + result["tvd_eye_color"]) / 2)


def test_a_single_class_is_far_from_the_real_shares(trained):
    _, labels, model, _ = trained
    all_red, _ = pattern_images(200, seed=2, hair="red")
    result = mode_coverage(model, torch.from_numpy(all_red), labels)
    real_red_share = (labels["hair_color"] == "red").mean()
    # every sample predicted red: tvd = 1 - (real share of red)
    assert result["tvd_hair_color"] == pytest.approx(1 - real_red_share, abs=0.02)
    assert result["tvd_hair_color"] > 0.6 and result["tvd_eye_color"] < 0.15


@pytest.mark.filterwarnings("error")  # e.g. torch's warning about non-writable arrays from a memory map
def test_saved_classifier_is_self_contained(trained, tmp_path):
    images, _, model, report = trained
    path = tmp_path / "classifier" / "attributes.pt"
    save_attribute_classifier(path, model, report)
    assert [p.name for p in path.parent.iterdir()] == ["attributes.pt"]  # no temporary file left
    loaded = load_attribute_classifier(path)
    assert loaded.config == model.config and not loaded.training
    np.save(tmp_path / "images.npy", images[:50])
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    before, after = predict_attributes(model, images[:50]), predict_attributes(loaded, mapped)
    assert all((before[a] == after[a]).all() for a in before)


def test_training_is_seeded():
    images, labels = pattern_images(80, seed=3)
    first, _ = train_attribute_classifier(images, labels, ["hair_color"], seed=4, epochs=1, max_images=60)
    second, _ = train_attribute_classifier(images, labels, ["hair_color"], seed=4, epochs=1, max_images=60)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_bad_labels_and_files_are_reported(trained, tmp_path):
    images, labels, model, _ = trained
    with pytest.raises(PipelineError, match=r"\['mouth'\] are missing"):
        train_attribute_classifier(images, labels, ["hair_color", "mouth"])
    with pytest.raises(PipelineError, match="do not match"):
        train_attribute_classifier(images[:10], labels, ["hair_color"])
    with pytest.raises(PipelineError, match="empty values"):
        train_attribute_classifier(images, labels.assign(hair_color=None), ["hair_color"])
    unknown = labels.assign(hair_color="silver")
    with pytest.raises(PipelineError, match=r"values \['silver'\] that the classifier does not know"):
        mode_coverage(model, images[:5], unknown)
    with pytest.raises(PipelineError, match="not found"):
        load_attribute_classifier(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(PipelineError, match="not an attribute classifier file"):
        load_attribute_classifier(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00 not a torch file")
    with pytest.raises(PipelineError, match="not a readable attribute classifier"):
        load_attribute_classifier(garbage)
