"""The built-in synthetic source: deterministic, balanced, structured faces whose labels are drawn."""

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_dcgan.data.synthetic import (
    ATTRIBUTE_VALUES,
    draw_face,
    render_face,
    sample_attributes,
    write_synthetic_dataset,
)

# more than one worker task (64 images each), so two workers really split the work
MULTI_TASK_COUNT = 130


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)  # (64, 64, 3)


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def dataset_one_worker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("one_worker")
    assert write_synthetic_dataset(out_dir, MULTI_TASK_COUNT, seed=11, workers=1, progress=False) \
        == MULTI_TASK_COUNT
    return out_dir


def test_draw_face_depends_only_on_seed_and_index() -> None:
    first, attributes = draw_face(5, 3)
    again, attributes_again = draw_face(5, 3)
    assert first.tobytes() == again.tobytes()
    assert attributes == attributes_again == sample_attributes(5, 3)
    other_seed, _ = draw_face(6, 3)
    other_index, _ = draw_face(5, 4)
    assert np.abs(_pixels(first) - _pixels(other_seed)).mean() > 5
    assert np.abs(_pixels(first) - _pixels(other_index)).mean() > 5


def test_size_sets_the_image_size() -> None:
    image, _ = draw_face(0, 0, size=32)
    assert image.size == (32, 32) and image.mode == "RGB"


def test_two_workers_write_the_same_bytes_as_one(dataset_one_worker: Path, tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, MULTI_TASK_COUNT, seed=11, workers=2, progress=False)
    assert _folder_bytes(tmp_path) == _folder_bytes(dataset_one_worker)


def test_an_image_does_not_depend_on_the_count(dataset_one_worker: Path, tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, 24, seed=11, workers=1, progress=False)
    for index in (0, 23):
        name = f"images/{index:06d}.png"
        assert (tmp_path / name).read_bytes() == (dataset_one_worker / name).read_bytes()


def test_another_seed_draws_other_images(dataset_one_worker: Path, tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, 24, seed=12, workers=1, progress=False)
    for index in range(24):
        name = f"images/{index:06d}.png"
        assert (tmp_path / name).read_bytes() != (dataset_one_worker / name).read_bytes()


def test_csv_lists_every_image_with_valid_attributes(dataset_one_worker: Path) -> None:
    columns, rows = _read_csv(dataset_one_worker / "attributes.csv")
    assert columns == ["file", *ATTRIBUTE_VALUES]
    assert [row["file"] for row in rows] == [f"images/{i:06d}.png" for i in range(MULTI_TASK_COUNT)]
    for index, row in enumerate(rows):
        assert (dataset_one_worker / row["file"]).is_file()
        for key, allowed in ATTRIBUTE_VALUES.items():
            assert row[key] in allowed, (row["file"], key, row[key])
        assert {key: row[key] for key in ATTRIBUTE_VALUES} == sample_attributes(11, index)
    # nothing half-written is left behind
    assert not list(dataset_one_worker.rglob("*.partial"))
    assert sorted(p.name for p in dataset_one_worker.iterdir()) == ["attributes.csv", "images"]


def test_rewriting_with_fewer_images_removes_the_extra_ones(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, 30, seed=0, workers=1, progress=False)
    write_synthetic_dataset(tmp_path, 24, seed=0, workers=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i:06d}.png" for i in range(24)]
    assert len(_read_csv(tmp_path / "attributes.csv")[1]) == 24


def test_attribute_values_are_balanced() -> None:
    draws = 600
    samples = [sample_attributes(0, index) for index in range(draws)]
    for key, allowed in ATTRIBUTE_VALUES.items():
        counts = Counter(sample[key] for sample in samples)
        expected = draws / len(allowed)
        assert set(counts) == set(allowed), key
        assert max(counts.values()) < 1.5 * expected, (key, counts)
        assert min(counts.values()) > 0.5 * expected, (key, counts)


def test_images_are_structured_not_noise(dataset_one_worker: Path) -> None:
    images = [Image.open(dataset_one_worker / f"images/{i:06d}.png") for i in range(24)]
    assert all(image.size == (64, 64) and image.mode == "RGB" for image in images)
    pixels = np.stack([_pixels(image) for image in images])  # (24, 64, 64, 3)
    neighbour_difference = np.abs(np.diff(pixels, axis=2)).mean()
    shuffled = np.random.default_rng(0).permutation(pixels.reshape(-1, 3)).reshape(pixels.shape)
    shuffled_difference = np.abs(np.diff(shuffled, axis=2)).mean()
    assert neighbour_difference < 0.35 * shuffled_difference
    # every image differs clearly from every other one
    for i in range(len(pixels)):
        for j in range(i + 1, len(pixels)):
            assert np.abs(pixels[i] - pixels[j]).mean() > 8, (i, j)


def _nearest_centroid_accuracy(features: np.ndarray, labels: list[str]) -> float:
    """Fit class means on the first half, score the second half."""
    half = len(labels) // 2
    classes = sorted(set(labels[:half]))
    train_labels = np.array(labels[:half])
    centroids = np.stack([features[:half][train_labels == c].mean(axis=0) for c in classes])
    distances = ((features[half:, None, :] - centroids[None]) ** 2).sum(axis=-1)  # (N/2, classes)
    predicted = np.array(classes)[distances.argmin(axis=1)]
    return float((predicted == np.array(labels[half:])).mean())


def test_csv_labels_match_the_drawn_hair_and_eyes() -> None:
    # Fails if the attributes were written to the CSV but drawn differently (or not at all):
    # a simple colour feature must then predict the label no better than chance.
    faces = [draw_face(21, index) for index in range(240)]
    pixels = np.stack([_pixels(image) for image, _ in faces])  # (240, 64, 64, 3)
    hair_band = pixels[:, 2:10, 16:48].reshape(len(faces), -1, 3)  # the crown and fringe
    hair_accuracy = _nearest_centroid_accuracy(np.median(hair_band, axis=1),
                                               [attributes["hair_color"] for _, attributes in faces])
    assert hair_accuracy > 0.9  # chance: 1 / 10
    eye_band = pixels[:, 28:46, 12:52].reshape(len(faces), -1, 3)
    saturation = eye_band.max(axis=-1) - eye_band.min(axis=-1)
    most_saturated = np.argsort(-saturation, axis=1)[:, :30]
    eye_feature = np.take_along_axis(eye_band, most_saturated[..., None], axis=1).mean(axis=1)
    eye_accuracy = _nearest_centroid_accuracy(eye_feature,
                                              [attributes["eye_color"] for _, attributes in faces])
    assert eye_accuracy > 0.35  # chance: 1 / 7; hair and blush also fall in this crude band


@pytest.mark.parametrize("index", range(6))
def test_changing_one_colour_changes_only_its_region(index: int) -> None:
    attributes = sample_attributes(3, index)
    blue_eyes = _pixels(render_face({**attributes, "eye_color": "blue"}, 3, index))
    gold_eyes = _pixels(render_face({**attributes, "eye_color": "gold"}, 3, index))
    changed = np.abs(blue_eyes - gold_eyes).sum(axis=-1) > 30  # (64, 64)
    rows, cols = np.nonzero(changed)
    assert 30 < changed.sum() < 400  # two irises of several pixels each, nothing else
    assert 22 < rows.mean() < 46 and cols.min() < 30 and cols.max() > 34  # both eyes, mid-face
    assert (blue_eyes[changed, 2] - gold_eyes[changed, 2]).mean() > 60  # blue where it changed

    black_hair = _pixels(render_face({**attributes, "hair_color": "black"}, 3, index))
    blonde_hair = _pixels(render_face({**attributes, "hair_color": "blonde"}, 3, index))
    top = slice(0, 12), slice(16, 48)  # crown and fringe, whatever the jitter
    assert (blonde_hair[top].mean(axis=-1) - black_hair[top].mean(axis=-1)).mean() > 100


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"count": 0}, "count must be a positive"),
    ({"count": -5}, "count must be a positive"),
    ({"count": 2.5}, "count must be a positive"),
    ({"count": 3, "workers": -1}, "workers must be 0"),
    ({"count": 3, "seed": -1}, "seed must be a non-negative"),
])
def test_bad_dataset_arguments_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        write_synthetic_dataset(tmp_path, progress=False, **arguments)
    assert not list(tmp_path.iterdir())  # refused before writing anything


def test_bad_face_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="index must be a non-negative"):
        draw_face(0, -1)
    with pytest.raises(ValueError, match="size must be at least 16"):
        draw_face(0, 0, size=8)
    with pytest.raises(ValueError, match="'hair_color' must be one of black, brown"):
        render_face({**sample_attributes(0, 0), "hair_color": "teal"}, 0, 0)
    with pytest.raises(ValueError, match="'mouth' must be one of"):
        without_mouth = {key: value for key, value in sample_attributes(0, 0).items() if key != "mouth"}
        render_face(without_mouth, 0, 0)
