"""The preprocess stage's library: raw image files -> images.npy + manifest.csv + rejected.csv.

Every fixture image is drawn here with Pillow and written as a real file; preprocess_images runs for
real (in-process, and with a real process pool where the worker count matters).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from anime_dcgan.data.preprocess import (
    PreprocessError,
    PreprocessSummary,
    _ImageRows,
    preprocess_images,
    resize_and_crop,
)

OUTPUT_FILES = ["images.npy", "manifest.csv", "rejected.csv"]
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", size, color), fmt)


def write_raw(root: Path, files: dict[str, bytes], attributes: str | None = None) -> Path:
    """A raw folder as the download stage leaves it: raw/images/<name> (+ raw/attributes.csv)."""
    raw = root / "raw"
    for name, data in files.items():
        path = raw / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (raw / "images").mkdir(parents=True, exist_ok=True)
    if attributes is not None:
        (raw / "attributes.csv").write_text(attributes)
    return raw


def run(raw: Path, out: Path, image_size: int = 16, min_size: int = 8, workers: int = 1) -> PreprocessSummary:
    return preprocess_images(raw, out, image_size=image_size, min_size=min_size, workers=workers,
                             progress=False)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def load_images(out: Path) -> np.ndarray:
    return np.load(out / "images.npy", mmap_mode="r")  # (N, 3, S, S)


def preprocess_one(tmp_path: Path, name: str, data: bytes, image_size: int = 8) -> np.ndarray:
    """The single image `data` after preprocessing, as (S, S, 3) uint8."""
    out = tmp_path / "out"
    summary = run(write_raw(tmp_path, {name: data}), out, image_size=image_size, min_size=1)
    assert summary.n_images == 1, read_csv(out / "rejected.csv")
    return np.asarray(load_images(out)[0]).transpose(1, 2, 0)


# --- colour modes -------------------------------------------------------------------------------------

def test_rgba_transparent_becomes_white_and_opaque_keeps_colour(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (4, 0, 8, 8))  # opaque blue right half
    rgba.putpixel((0, 7), (0, 0, 0, 128))  # half-transparent black
    pixels = preprocess_one(tmp_path, "a.png", encode(rgba))
    assert tuple(pixels[0, 0]) == WHITE
    assert tuple(pixels[0, 7]) == BLUE
    assert np.all(np.abs(pixels[7, 0].astype(int) - 127) <= 1)  # 50% black over white


def test_la_transparent_becomes_white(tmp_path: Path) -> None:
    gray_alpha = Image.new("LA", (8, 8), (50, 0))
    gray_alpha.paste((50, 255), (0, 0, 8, 4))  # opaque top half
    pixels = preprocess_one(tmp_path, "a.png", encode(gray_alpha))
    assert tuple(pixels[0, 0]) == (50, 50, 50)
    assert tuple(pixels[7, 7]) == WHITE


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_image_uses_its_palette_and_transparency(tmp_path: Path, transparent: bool) -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    palette.paste(1, (0, 0, 8, 4))  # top half is palette entry 1
    options = {"transparency": 1} if transparent else {}
    pixels = preprocess_one(tmp_path, "a.png", encode(palette, **options))
    assert tuple(pixels[7, 7]) == (10, 20, 30)
    assert tuple(pixels[0, 0]) == (WHITE if transparent else (200, 100, 50))


def test_grayscale_and_bilevel_become_gray_rgb(tmp_path: Path) -> None:
    gray = preprocess_one(tmp_path / "l", "a.png", encode(Image.new("L", (8, 8), 77)))
    assert tuple(gray[3, 3]) == (77, 77, 77)
    bilevel = Image.new("1", (8, 8), 0)
    bilevel.paste(1, (0, 0, 8, 4))
    pixels = preprocess_one(tmp_path / "1", "a.png", encode(bilevel))
    assert tuple(pixels[0, 0]) == WHITE and tuple(pixels[7, 0]) == BLACK


def test_16_bit_gray_is_scaled_and_keeps_its_ordering(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 64).round().astype(np.uint16)
    values[32] = 128 * 257  # exactly mid-grey in 16 bits
    values.sort()
    source = Image.fromarray(values.reshape(8, 8))
    data = encode(source)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    gray = preprocess_one(tmp_path, "a.png", data)[..., 0].ravel()  # row-major, same order as `values`
    assert gray[0] == 0 and gray[-1] == 255
    assert np.all(np.diff(gray.astype(int)) >= 0)
    assert len(np.unique(gray)) == 64  # no two steps collapse (a clip to 0..255 would flatten them)
    assert gray[np.flatnonzero(values == 128 * 257)[0]] == 128


def test_32_bit_integer_gray_is_read_as_16_bit(tmp_path: Path) -> None:
    values = (np.arange(64, dtype=np.int32) * 1000).reshape(8, 8)  # 0 .. 63,000
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    gray = preprocess_one(tmp_path, "a.tif", data)[..., 0]
    expected = np.rint(values / 257).astype(np.uint8)
    assert np.array_equal(gray, expected)


def test_float_gray_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    gray = preprocess_one(tmp_path, "a.tif", data)[..., 0]
    assert gray[0, 0] == 0 and gray[7, 7] == 255
    assert np.array_equal(gray, np.rint(values * 255).astype(np.uint8))


def test_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((0, 255, 255, 0), (0, 0, 4, 8))  # magenta + yellow: red
    cmyk.paste((0, 0, 0, 255), (0, 7, 8, 8))  # key: black
    pixels = preprocess_one(tmp_path, "a.tif", encode(cmyk, "TIFF"))
    assert tuple(pixels[0, 0]) == RED
    assert tuple(pixels[0, 7]) == WHITE
    assert tuple(pixels[7, 7]) == BLACK


def test_animated_gif_uses_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert np.all(preprocess_one(tmp_path, "a.gif", data) == RED)


def test_exif_orientation_is_applied_and_recorded(tmp_path: Path) -> None:
    stored = Image.new("RGB", (16, 8), WHITE)  # stored landscape, red left half
    stored.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: portrait, red on top
    pixels = preprocess_one(tmp_path, "a.png", encode(stored, exif=exif))
    assert tuple(pixels[0, 4]) == RED and tuple(pixels[7, 4]) == WHITE  # 8 x 16 shown, centre rows 4..11
    row = read_csv(tmp_path / "out" / "manifest.csv")[0]
    assert (row["width"], row["height"]) == ("8", "16")


# --- geometry -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("portrait", [False, True])
def test_resize_keeps_the_centre_of_a_non_square_image(tmp_path: Path, portrait: bool) -> None:
    marked = Image.new("RGB", (40, 20), WHITE)
    marked.paste(RED, (0, 0, 5, 20))  # bands at the far ends: cropped away
    marked.paste(RED, (35, 0, 40, 20))
    marked.paste(BLACK, (18, 8, 22, 12))  # the centre marker
    if portrait:
        marked = marked.transpose(Image.Transpose.ROTATE_90)
    pixels = preprocess_one(tmp_path, "a.png", encode(marked), image_size=16).astype(int)  # (16, 16, 3)
    assert pixels.shape == (16, 16, 3)
    assert pixels[7:9, 7:9].max() < 100  # the marker sits in the middle
    assert pixels[0, 0].min() > 200 and pixels[15, 15].min() > 200
    reddish = (pixels[..., 0] - pixels[..., 1]) > 60
    assert not reddish.any()
    row = read_csv(tmp_path / "out" / "manifest.csv")[0]
    assert (int(row["width"]), int(row["height"])) == ((20, 40) if portrait else (40, 20))


def test_small_image_is_upscaled_to_image_size(tmp_path: Path) -> None:
    pixels = preprocess_one(tmp_path, "a.png", solid(GREEN, (10, 12)), image_size=16)
    assert pixels.shape == (16, 16, 3) and np.all(pixels == GREEN)


def test_large_jpeg_matches_a_full_resolution_decode(tmp_path: Path) -> None:
    # big JPEGs are decoded at a reduced DCT scale; the result must look like the full-size path
    ys, xs = np.mgrid[0:768, 0:1024]
    pattern = np.stack([xs % 256, ys % 256, ((xs // 64 + ys // 64) % 2) * 255], axis=-1).astype(np.uint8)
    data = encode(Image.fromarray(pattern), "JPEG", quality=95)
    pixels = preprocess_one(tmp_path, "a.jpg", data, image_size=64).astype(int)
    reference = np.asarray(resize_and_crop(Image.open(io.BytesIO(data)).convert("RGB"), 64)).astype(int)
    # decoding at 1/8 scale (128x96) and resizing would differ by 1.1 on average; the 2x margin gives 0.4
    assert np.abs(pixels - reference).mean() < 0.75


# --- bad input ----------------------------------------------------------------------------------------

def decompression_bomb() -> bytes:
    return encode(Image.new("1", (10_000, 10_000)))  # 100 megapixels in 12 kB


def test_each_bad_file_is_rejected_with_its_reason_and_the_rest_kept(tmp_path: Path) -> None:
    good_png = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    good_jpeg = solid(BLUE, fmt="JPEG")
    files = {
        "bomb.png": decompression_bomb(),
        "corrupt.jpg": good_jpeg[:300] + bytes(range(256)) * 3,
        "empty.png": b"",
        "good.png": good_png,
        "notes.txt": b"these are not pixels\n",
        "sub/good.jpg": good_jpeg,
        "tiny.png": solid(RED, (6, 30)),
        "truncated.png": good_png[: len(good_png) // 2],
    }
    out = tmp_path / "out"
    summary = run(write_raw(tmp_path, files), out, image_size=16, min_size=8)

    reasons = {row["source"]: row["reason"] for row in read_csv(out / "rejected.csv")}
    assert sorted(reasons) == ["images/bomb.png", "images/corrupt.jpg", "images/empty.png", "images/notes.txt",
                               "images/tiny.png", "images/truncated.png"]
    assert reasons["images/bomb.png"].startswith("too large: 10000x10000")
    assert reasons["images/corrupt.jpg"].startswith("corrupt: ")
    assert reasons["images/empty.png"] == "empty: 0-byte file"
    assert reasons["images/notes.txt"].startswith("not an image: ")
    assert reasons["images/tiny.png"] == "too small: 6x30 pixels; the short side must be at least min_size=8"
    assert reasons["images/truncated.png"].startswith("corrupt: ")
    assert "truncated" in reasons["images/truncated.png"]
    kept = [row["source"] for row in read_csv(out / "manifest.csv")]
    assert kept == ["images/good.png", "images/sub/good.jpg"]
    assert load_images(out).shape == (2, 3, 16, 16)
    assert (summary.n_images, summary.n_rejected, summary.n_duplicates) == (2, 6, 0)
    assert summary.line() == ("kept 2 images (16x16); rejected 6 (2 corrupt, 1 empty, 1 not an image, "
                              f"1 too large, 1 too small: see {out / 'rejected.csv'}); "
                              "0 exact duplicates dropped")


def test_file_names_that_are_not_utf8_are_kept_and_written_escaped(tmp_path: Path) -> None:
    raw = write_raw(tmp_path, {"ok.png": solid(RED)})
    odd = raw / "images" / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    odd.write_bytes(solid(BLUE))
    (raw / "images" / os.fsdecode(b"\xff.txt")).write_bytes(b"junk")
    out = tmp_path / "out"
    summary = run(raw, out)
    assert (summary.n_images, summary.n_rejected) == (2, 1)
    kept = [row["source"] for row in read_csv(out / "manifest.csv")]
    assert kept == ["images/caf\\udce9.png", "images/ok.png"]
    assert read_csv(out / "rejected.csv")[0]["source"] == "images/\\udcff.txt"


def test_exact_duplicates_keep_the_first_by_path(tmp_path: Path) -> None:
    copy = solid(GREEN)
    files = {"b.png": copy, "a.png": copy, "c/d.png": copy, "other.png": solid(RED)}
    out = tmp_path / "out"
    summary = run(write_raw(tmp_path, files), out)
    assert [row["source"] for row in read_csv(out / "manifest.csv")] == ["images/a.png", "images/other.png"]
    assert read_csv(out / "rejected.csv") == [
        {"source": "images/b.png", "reason": "duplicate of images/a.png"},
        {"source": "images/c/d.png", "reason": "duplicate of images/a.png"},
    ]
    assert (summary.n_images, summary.n_rejected, summary.n_duplicates) == (2, 0, 2)
    assert summary.line() == "kept 2 images (16x16); rejected 0; 2 exact duplicates dropped"


def test_no_usable_image_is_a_clear_error(tmp_path: Path) -> None:
    files = {"a.png": b"", "b.png": b"junk", "c.png": b"more junk", "d.png": solid(RED, (4, 4))}
    raw = write_raw(tmp_path, files)
    with pytest.raises(PreprocessError) as caught:
        run(raw, tmp_path / "out", min_size=8)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "none of the 4 files" in message
    assert "2 not an image, 1 empty, 1 too small" in message
    assert "images/a.png: empty: 0-byte file" in message
    assert not (tmp_path / "out" / "images.npy").exists()


def test_missing_or_empty_images_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PreprocessError, match="does not exist: run the download stage"):
        run(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(PreprocessError, match="contains no files"):
        run(write_raw(tmp_path, {}), tmp_path / "out")


def test_bad_attributes_file_is_a_clear_error(tmp_path: Path) -> None:
    raw = write_raw(tmp_path, {"a.png": solid(RED)}, attributes="path,hair_color\nimages/a.png,red\n")
    with pytest.raises(PreprocessError, match=r"attributes.csv has no 'file' column \(columns: \['path'"):
        run(raw, tmp_path / "out")
    (raw / "attributes.csv").write_text("file,width\nimages/a.png,3\n")
    with pytest.raises(PreprocessError, match=r"\['width'\] clash with the manifest"):
        run(raw, tmp_path / "out")
    (raw / "attributes.csv").write_text("file,hair_color\nimages/a.png,red\nimages/a.png,blue\n")
    with pytest.raises(PreprocessError, match="line 3: 'images/a.png' is listed twice"):
        run(raw, tmp_path / "out")


# --- outputs ------------------------------------------------------------------------------------------

def varied_raw(root: Path, count: int = 24) -> Path:
    """Distinct coloured images of several sizes and formats, plus one corrupt file and one duplicate."""
    rng = np.random.default_rng(0)
    files = {}
    for index in range(count):
        size = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
        noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        files[f"{index:03d}.{'png' if index % 2 else 'jpg'}"] = encode(Image.fromarray(noise),
                                                                     "PNG" if index % 2 else "JPEG")
    files["005_broken.png"] = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
    files["zz_duplicate.png"] = files["001.png"]
    return write_raw(root, files)


def test_outputs_are_byte_identical_for_one_or_two_workers(tmp_path: Path) -> None:
    raw = varied_raw(tmp_path)
    single = run(raw, tmp_path / "single", workers=1)
    pooled = run(raw, tmp_path / "pooled", workers=2)
    assert (single.n_images, single.n_rejected, single.n_duplicates) == (24, 1, 1)
    assert (pooled.n_images, pooled.n_rejected, pooled.n_duplicates) == (24, 1, 1)
    for name in OUTPUT_FILES:
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "pooled" / name).read_bytes(), name


def test_images_npy_is_memory_mappable_uint8_rows_in_manifest_order(tmp_path: Path) -> None:
    colors = [RED, GREEN, BLUE]
    files = {f"{index}.png": solid(color) for index, color in enumerate(colors)}
    files["1b.png"] = b"not an image"  # rejected between kept rows: the file shrinks to 3 rows
    out = tmp_path / "out"
    run(write_raw(tmp_path, files), out)
    images = load_images(out)
    assert isinstance(images, np.memmap)
    assert images.dtype == np.uint8 and images.shape == (3, 3, 16, 16)
    for row, color in zip(images, colors):
        assert np.all(row.transpose(1, 2, 0) == color)
    assert [row["index"] for row in read_csv(out / "manifest.csv")] == ["0", "1", "2"]
    assert (out / "images.npy").stat().st_size == images.offset + images.nbytes  # no unused tail


@pytest.mark.parametrize(("capacity", "kept_rows"), [(10, []), (10, [0, 1, 2]), (10, [1, 4, 9]),
                                                   (10, list(range(10))), (100_000, [7, 99_999])])
def test_image_rows_keep_the_chosen_rows_in_order_and_shrink_the_file(tmp_path: Path, capacity: int,
                                                                      kept_rows: list[int]) -> None:
    path = tmp_path / "rows.npy"
    rows = _ImageRows(path, capacity, row_shape=(3, 2, 2))
    images = {row: np.full((3, 2, 2), row % 251, dtype=np.uint8) + np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
              for row in [*kept_rows, *range(min(capacity, 10))]}  # (3, 2, 2) each; rejected rows written too
    with rows.open() as file:
        for row, image in images.items():
            rows.write(file, row, image)
        for row in kept_rows:
            rows.keep(file, row)
    rows.close()
    loaded = np.load(path)
    assert loaded.shape == (len(kept_rows), 3, 2, 2)
    assert np.array_equal(loaded, np.array([images[row] for row in kept_rows], np.uint8).reshape(-1, 3, 2, 2))
    assert path.stat().st_size == rows.header_bytes + len(kept_rows) * 12


def test_attribute_columns_are_joined_by_source_path(tmp_path: Path) -> None:
    attributes = ("file,hair_color,eye_color\n"
                  "images/b.png,blue,green\n"
                  "images/a.png,red,brown\n"
                  "images/broken.png,black,black\n"
                  "images/elsewhere.png,gold,gold\n")
    raw = write_raw(tmp_path, {"a.png": solid(RED), "b.png": solid(BLUE), "broken.png": b"junk",
                               "c.png": solid(GREEN)}, attributes)
    out = tmp_path / "out"
    run(raw, out)
    rows = read_csv(out / "manifest.csv")
    assert list(rows[0]) == ["index", "source", "sha256", "width", "height", "hair_color", "eye_color"]
    assert [(row["source"], row["hair_color"], row["eye_color"]) for row in rows] == [
        ("images/a.png", "red", "brown"), ("images/b.png", "blue", "green"), ("images/c.png", "", "")]


def test_manifest_records_hash_and_original_size(tmp_path: Path) -> None:
    data = solid(RED, (30, 20))
    out = tmp_path / "out"
    run(write_raw(tmp_path, {"a.png": data}), out)
    row = read_csv(out / "manifest.csv")[0]
    assert row == {"index": "0", "source": "images/a.png", "sha256": hashlib.sha256(data).hexdigest(),
                   "width": "30", "height": "20"}
    assert (out / "rejected.csv").read_text() == "source,reason\n"


def test_success_leaves_only_the_three_outputs_even_after_an_interrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".images.npy.tmp-99999").write_bytes(b"half-written by a killed run")
    run(write_raw(tmp_path, {"a.png": solid(RED)}), out)
    assert sorted(os.listdir(out)) == OUTPUT_FILES


def test_a_failed_run_keeps_the_previous_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(varied_raw(tmp_path / "good"), out, workers=2)
    before = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    bad = write_raw(tmp_path / "bad", {"a.png": b"junk", "b.png": b""})
    with pytest.raises(PreprocessError):
        run(bad, out, workers=2)
    assert sorted(os.listdir(out)) == OUTPUT_FILES
    assert {name: (out / name).read_bytes() for name in OUTPUT_FILES} == before


STAGE_SCRIPT = """
import sys
from pathlib import Path

from anime_dcgan.data.preprocess import preprocess_images
from anime_dcgan.util.stage import run_stage

if __name__ == "__main__":
    run_stage("preprocess", lambda: preprocess_images(Path(sys.argv[1]), Path(sys.argv[2]), 16, 8, workers=2,
                                                      progress=False))
"""


def test_sigterm_mid_run_stops_quietly_and_keeps_the_previous_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(varied_raw(tmp_path / "good"), out)
    before = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    ys, xs = np.mgrid[0:2000, 0:2000]
    gradient = ((xs + ys) % 256).astype(np.uint8)  # 2000 x 2000: ~40 ms to decode, 57 kB as PNG
    big = encode(Image.fromarray(np.stack([gradient, gradient.T, gradient], axis=-1)), compress_level=1)
    raw = write_raw(tmp_path / "slow", {f"{index:03d}.png": big for index in range(100)})  # ~2 s on 2 workers
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    stage = subprocess.Popen([sys.executable, str(script), str(raw), str(out)], stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 30
    workers = psutil.Process(stage.pid).children  # (with forkserver, the server and its workers)
    while len(workers(recursive=True)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # into the first chunks: the whole run needs about 2 s more
    assert stage.poll() is None, "the stage finished before it could be interrupted"
    stage.send_signal(signal.SIGTERM)
    _, stderr = stage.communicate(timeout=30)
    assert stage.returncode == 143, stderr
    assert "Traceback" not in stderr  # neither the main process nor a pool worker
    assert "preprocess: received signal SIGTERM; stopped, no partial output was left behind" in stderr
    assert sorted(os.listdir(out)) == OUTPUT_FILES
    assert {name: (out / name).read_bytes() for name in OUTPUT_FILES} == before


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    raw = write_raw(tmp_path, {"a.png": solid(RED)})
    with pytest.raises(PreprocessError, match="must be positive"):
        run(raw, tmp_path / "out", image_size=0)
    with pytest.raises(PreprocessError, match="workers must be 0"):
        run(raw, tmp_path / "out", workers=-1)


# --- the shared real sample ---------------------------------------------------------------------------

def test_shared_sample_becomes_4712_distinct_64px_images(shared_sample_zip: Path, tmp_path: Path) -> None:
    # The zip holds 4,998 JPEGs, 64x64 RGB, all decodable, but only 4,712 distinct files: 286 are
    # byte-for-byte copies of an earlier file (253 pairs, 12 triples and 3 quadruples in the source
    # dataset), and exact duplicates are dropped, so 4,712 images are kept, not 4,998.
    raw = tmp_path / "raw"
    with zipfile.ZipFile(shared_sample_zip) as archive:
        archive.extractall(raw / "images")
    out = tmp_path / "out"
    summary = run(raw, out, image_size=64, min_size=32, workers=2)
    assert (summary.n_images, summary.n_rejected, summary.n_duplicates) == (4712, 0, 286)
    images = load_images(out)
    assert images.shape == (4712, 3, 64, 64) and images.dtype == np.uint8
    manifest = read_csv(out / "manifest.csv")
    assert len({row["sha256"] for row in manifest}) == 4712
    # already 64x64, so each row is exactly the decoded JPEG (rows after duplicates were moved)
    for index in (0, 2000, 4711):
        decoded = np.asarray(Image.open(raw / manifest[index]["source"]).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(images[index], decoded)
