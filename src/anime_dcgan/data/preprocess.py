"""Turn every raw image into one row of a cached uint8 tensor file (the preprocess stage's library).

Reads every file under ``raw_dir/images`` (recursively, ordered by relative POSIX path) and writes to
``out_dir``:

- ``images.npy``: uint8 ``(N, 3, image_size, image_size)``, loadable with ``np.load(mmap_mode="r")``;
- ``manifest.csv``: one row per kept image (``index, source, sha256, width, height`` then the label
  columns of ``raw_dir/attributes.csv`` when it exists);
- ``rejected.csv``: ``source, reason`` for every file that was skipped (header only when none).

Each image is decoded with Pillow (first frame of an animation, EXIF orientation applied), converted
to 8-bit RGB (alpha composited on white, 16-bit scaled to 8-bit), resized so its short side equals
``image_size`` with the LANCZOS filter (large JPEGs are first decoded at a reduced DCT scale that stays
at least twice the target size), and centre-cropped to a square. The manifest's width and height are
the original size as shown (after EXIF orientation). The result does not depend on
the number of worker processes: ``images.npy`` and both CSV files are byte-identical for any
``workers``. All three files are written under temporary names and renamed only after every image
was processed, so a failed or interrupted run never leaves half-written outputs where the next stage
reads, and never replaces the previous run's outputs.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple, TextIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from anime_dcgan.errors import PipelineError
from anime_dcgan.util.io import atomic_path, stream_sha256
from anime_dcgan.util.parallel import default_workers, ordered_map

IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.csv"
REJECTED_FILE = "rejected.csv"
ATTRIBUTES_FILE = "attributes.csv"
ATTRIBUTES_KEY = "file"  # the attributes.csv column naming each image relative to raw_dir
MANIFEST_COLUMNS = ("index", "source", "sha256", "width", "height")

# Rejection kinds: the first word(s) of each reason in rejected.csv, counted in the summary line.
EMPTY = "empty"
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not an image"
CORRUPT = "corrupt"
TOO_LARGE = "too large"
TOO_SMALL = "too small"

WHITE = (255, 255, 255, 255)
# A decompression bomb is a small file that claims an enormous canvas; Pillow's own limit (about
# 89.5 megapixels, a 9,459 x 9,459 image) is far above any face crop, and checking it before decoding
# keeps a worker's memory bounded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class PreprocessError(PipelineError, ValueError):
    """The raw images cannot become a dataset; the message says which files and what to do."""


@dataclass(frozen=True)
class PreprocessSummary:
    """What the preprocess stage kept and dropped; ``line()`` is the one line the stage prints."""

    n_images: int
    n_rejected: int  # unusable files (duplicates are counted apart, in n_duplicates)
    n_duplicates: int
    image_size: int
    rejected_by_kind: tuple[tuple[str, int], ...] = ()  # (kind, count), most common first
    rejected_csv: Path | None = None

    def line(self) -> str:
        kept = f"kept {self.n_images:,} image{'s' if self.n_images != 1 else ''} " \
               f"({self.image_size}x{self.image_size})"
        rejected = f"rejected {self.n_rejected:,}"
        if self.n_rejected:
            kinds = ", ".join(f"{count:,} {kind}" for kind, count in self.rejected_by_kind)
            where = f": see {self.rejected_csv}" if self.rejected_csv is not None else ""
            rejected += f" ({kinds}{where})"
        duplicates = f"{self.n_duplicates:,} exact duplicate{'s' if self.n_duplicates != 1 else ''} dropped"
        return f"{kept}; {rejected}; {duplicates}"


class _Decoded(NamedTuple):
    """One file's outcome, sent from a worker to the main process (its pixels go straight to the file)."""

    sha256: str
    width: int  # as displayed (after EXIF orientation); 0 when the file could not be read
    height: int
    rejection_kind: str | None = None  # None: the image was decoded
    rejection_detail: str = ""


def _rejected(sha256: str, kind: str, detail: str, width: int = 0, height: int = 0) -> tuple[_Decoded, None]:
    return _Decoded(sha256, width, height, kind, detail), None


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grey to 8-bit, 0..65535 -> 0..255 rounded; Pillow would clip."""
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)  # (H, W)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def _float_to_l(image: Image.Image) -> Image.Image:
    """Float grey to 8-bit: images whose values all lie in [0, 1] are scaled by 255 (the usual
    normalised convention), others are taken as 0..255 and clipped, as Pillow's own conversion does."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)  # (H, W)
    if values.max(initial=0.0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparent pixels become white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = _sixteen_bit_to_l(image)
    elif image.mode == "F":
        image = _float_to_l(image)
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        # composite before resizing, so the colour hidden under transparent pixels never bleeds in
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resize_and_crop(image: Image.Image, image_size: int) -> Image.Image:
    """Scale so the short side is image_size (LANCZOS, antialiased when shrinking), then keep the
    centre image_size x image_size square."""
    width, height = image.size
    scale = image_size / min(width, height)
    new_width = max(image_size, round(width * scale))
    new_height = max(image_size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.LANCZOS)
    left = (new_width - image_size) // 2
    top = (new_height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def _decode(path: str, image_size: int, min_size: int) -> tuple[_Decoded, np.ndarray | None]:
    """Hash one file and decode it to a (3, S, S) uint8 array, or say why it cannot be used (None).

    Runs in the worker processes, so it never raises for a bad file: every failure is a rejection.
    """
    try:
        with open(path, "rb") as file:
            sha256 = stream_sha256(file)
            if file.tell() == 0:
                return _rejected(sha256, EMPTY, "0-byte file")
            file.seek(0)
            # Pillow warns about odd files (huge canvases, broken EXIF); the verdict is the rejection
            # reason, and the stage prints nothing per image.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _decode_open_file(file, sha256, image_size, min_size)
    except OSError as error:  # the file itself could not be read (permissions, I/O error)
        return _rejected("", UNREADABLE, f"{type(error).__name__}: {error}")


def _decode_open_file(file: BinaryIO, sha256: str, image_size: int,
                      min_size: int) -> tuple[_Decoded, np.ndarray | None]:
    try:
        image = Image.open(file)
    except UnidentifiedImageError:
        return _rejected(sha256, NOT_AN_IMAGE,
                         "Pillow does not recognise the file format (not an image, or its header is damaged)")
    except Image.DecompressionBombError as error:
        return _rejected(sha256, TOO_LARGE, str(error))
    except Exception as error:  # a decoder failing on a malformed header: the file is corrupt
        return _rejected(sha256, CORRUPT, f"{type(error).__name__}: {error}")
    with image:
        stored_width, stored_height = image.size
        area = stored_width * stored_height
        if area > MAX_PIXELS:
            return _rejected(sha256, TOO_LARGE, f"{stored_width}x{stored_height} = {area:,} pixels exceeds "
                             f"the decompression-bomb limit of {MAX_PIXELS:,}", stored_width, stored_height)
        if min(stored_width, stored_height) < min_size:
            return _rejected(sha256, TOO_SMALL,
                             f"{stored_width}x{stored_height} pixels; the short side must be at least "
                             f"min_size={min_size}", stored_width, stored_height)
        try:
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            # the size the picture is shown at: orientations 5-8 turn it by 90 degrees
            turned = orientation in (5, 6, 7, 8)
            width, height = (stored_height, stored_width) if turned else (stored_width, stored_height)
            if image.format == "JPEG":
                # Decode big JPEGs at 1/2, 1/4 or 1/8 scale (DCT scaling: much faster, far less memory)
                # while staying at least twice the final size, so LANCZOS still does the last reduction.
                scale = 2 * image_size / min(stored_width, stored_height)
                image.draft(None, (round(stored_width * scale), round(stored_height * scale)))
            image.load()  # the first frame of an animation: files open positioned on frame 0
            rgb = to_rgb(ImageOps.exif_transpose(image) if orientation != 1 else image)
            pixels = np.asarray(resize_and_crop(rgb, image_size), dtype=np.uint8)  # (S, S, 3)
        except Exception as error:  # truncated data, bad chunks, decoder errors: all mean corrupt
            return _rejected(sha256, CORRUPT, f"{type(error).__name__}: {error}", stored_width, stored_height)
    return _Decoded(sha256, width, height), pixels.transpose(2, 0, 1)  # (3, S, S)


def _files_under(directory: str, prefix: str) -> Iterator[str]:
    """Relative paths of the regular files (or links to them) below `directory`; links to folders are
    not followed, so a link cycle cannot loop. os.scandir reads file types from the directory itself:
    20x faster than pathlib's rglob + is_file for 60,000 files."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _files_under(entry.path, f"{prefix}{entry.name}/")
            elif entry.is_file():
                yield prefix + entry.name


def list_sources(raw_dir: Path) -> list[str]:
    """Every file under raw_dir/images, as POSIX paths relative to raw_dir, in sorted order."""
    images_dir = raw_dir / "images"
    if not images_dir.is_dir():
        raise PreprocessError(f"{images_dir} does not exist: run the download stage first "
                              "(`dvc repro download`), or check data.source in params.yaml")
    sources = sorted(_files_under(str(images_dir), "images/"))
    if not sources:
        raise PreprocessError(f"{images_dir} contains no files: check data.source in params.yaml and "
                              "rerun the download stage")
    return sources


def read_attributes(raw_dir: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Label columns and {source: values} from raw_dir/attributes.csv; ([], {}) when it is absent."""
    path = raw_dir / ATTRIBUTES_FILE
    if not path.is_file():
        return [], {}
    with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: tolerate a BOM from spreadsheets
        reader = csv.reader(file)
        header = next(reader, [])
        if ATTRIBUTES_KEY not in header:
            raise PreprocessError(f"{path} has no '{ATTRIBUTES_KEY}' column (columns: {header}); it must "
                                  "name each image relative to the raw folder, e.g. images/000001.png")
        key_index = header.index(ATTRIBUTES_KEY)
        columns = [name for name in header if name != ATTRIBUTES_KEY]
        clashes = sorted(set(columns) & set(MANIFEST_COLUMNS))
        if clashes:
            raise PreprocessError(f"{path}: column(s) {clashes} clash with the manifest's own columns "
                                  f"{list(MANIFEST_COLUMNS)}; rename them")
        labels: dict[str, list[str]] = {}
        for line_number, row in enumerate(reader, start=2):
            if not row:  # a blank line
                continue
            row = row + [""] * (len(header) - len(row))
            source = row[key_index]
            if source in labels:
                raise PreprocessError(f"{path} line {line_number}: '{source}' is listed twice; keep one row "
                                      "per image")
            labels[source] = [value for index, value in enumerate(row[:len(header)]) if index != key_index]
    return columns, labels


class _ImageRows:
    """images.npy preallocated with one row per source file, at the source's index.

    Each process writes its decoded images straight into their rows, so only hashes and sizes cross
    between processes (sending the 12 KB of pixels back through the pool's pipe cost the main process
    as much time as a worker spent decoding). The main process then keeps the usable rows, in order,
    by moving each one down over the rows of rejected files and duplicates (``keep``), and finally
    cuts the file to the rows kept. The file is written with ordinary seeks and writes, never mapped,
    so no process keeps the written pages resident, whatever the number of images (numpy's
    open_memmap doing the same work took longer: benchmarks/preprocess.md).
    """

    def __init__(self, path: Path, capacity: int, row_shape: tuple[int, int, int]) -> None:
        self.path = path
        self.row_shape = row_shape
        self.row_bytes = int(np.prod(row_shape))
        self.capacity = capacity
        self.rows_kept = 0
        with open(path, "wb") as file:
            self.header_bytes = self._write_header(file, capacity)
            file.truncate(self.header_bytes + capacity * self.row_bytes)  # sparse: no bytes written yet

    def _write_header(self, file: BinaryIO, rows: int) -> int:
        """The .npy header for `rows` rows at the start of `file`; returns its length. numpy (>= 1.24)
        pads the header with room for a first dimension of up to 21 digits, so a shape with fewer rows
        keeps the same length and close() rewrites it in place without moving the data."""
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (rows, *self.row_shape)}
        file.seek(0)
        np.lib.format.write_array_header_1_0(file, header)
        return file.tell()

    def open(self) -> BinaryIO:
        """The file for write() and keep(), unbuffered: a buffer could hold bytes read ahead of rows
        that another process has written since."""
        return open(self.path, "r+b", buffering=0)

    def write(self, file: BinaryIO, row: int, pixels: np.ndarray) -> None:
        """Write one (3, S, S) uint8 image at `row` of the file open in `file` (any process)."""
        file.seek(self.header_bytes + row * self.row_bytes)
        file.write(pixels.tobytes())

    def keep(self, file: BinaryIO, row: int) -> None:
        """Make the image written at `row` the next kept one (rows are kept in increasing order, and
        only once every process has finished writing them)."""
        if row != self.rows_kept:
            file.seek(self.header_bytes + row * self.row_bytes)
            pixels = file.read(self.row_bytes)
            file.seek(self.header_bytes + self.rows_kept * self.row_bytes)
            file.write(pixels)
        self.rows_kept += 1

    def close(self) -> None:
        """Cut the file to the rows kept: rewrite the header's shape, truncate the unused tail."""
        if self.rows_kept == self.capacity:
            return
        with open(self.path, "r+b") as file:
            header_bytes = self._write_header(file, self.rows_kept)
            assert header_bytes == self.header_bytes, "the shrunk .npy header must keep its length"
            file.truncate(self.header_bytes + self.rows_kept * self.row_bytes)


def _decode_chunk(chunk: tuple[Sequence[str], int], rows: _ImageRows, image_size: int,
                  min_size: int) -> list[_Decoded]:
    """One worker task: several files, so the inter-process overhead is paid per chunk, not per image.
    chunk = (paths, first_row): the image of paths[i] is written at row first_row + i."""
    paths, first_row = chunk
    outcomes = []
    with rows.open() as file:
        for row, path in enumerate(paths, start=first_row):
            outcome, pixels = _decode(path, image_size, min_size)
            if pixels is not None:
                rows.write(file, row, pixels)
            outcomes.append(outcome)
    return outcomes


@contextlib.contextmanager
def _decoded_in_order(paths: Sequence[str], rows: _ImageRows, image_size: int, min_size: int,
                      workers: int) -> Iterator[Iterator[_Decoded]]:
    """Outcomes for `paths`, in their order, each yielded once its image is in `rows`: decoded in this
    process for one worker, else in worker processes."""
    # chunks keep every worker busy to the end while amortising the inter-process overhead
    size = max(1, min(64, len(paths) // (workers * 8)))
    chunks = [(paths[start:start + size], start) for start in range(0, len(paths), size)]
    decode = partial(_decode_chunk, rows=rows, image_size=image_size, min_size=min_size)
    results = ordered_map(decode, chunks, workers)
    with contextlib.closing(results):
        yield itertools.chain.from_iterable(results)


def _by_count(kinds: Counter[str]) -> tuple[tuple[str, int], ...]:
    """(kind, count) pairs, most common first, ties by name (so the order never depends on workers)."""
    return tuple(sorted(kinds.items(), key=lambda kind_count: (-kind_count[1], kind_count[0])))


def _describe_failure(n_files: int, images_dir: Path, rejections: list[tuple[str, str]],
                      kinds: Counter[str]) -> str:
    by_kind = ", ".join(f"{count:,} {kind}" for kind, count in _by_count(kinds))
    examples = "; ".join(f"{source}: {reason}" for source, reason in rejections[:3])
    return (f"none of the {n_files:,} files under {images_dir} is a usable image ({by_kind}); for example "
            f"{examples}. Replace or remove these files, lower data.min_size if they are only small, or "
            "check data.source in params.yaml; the previous outputs were left unchanged")


class _Outcome(NamedTuple):
    n_kept: int
    rejections: list[tuple[str, str]]  # (source, reason) of the unusable files, duplicates apart
    kinds: Counter[str]  # rejection kind -> count
    n_duplicates: int


def _open_csv(path: Path) -> TextIO:
    # backslashreplace: a file name that is not valid UTF-8 (possible on Linux) is written escaped
    return path.open("w", newline="", encoding="utf-8", errors="backslashreplace")


def _write_temporaries(raw_dir: Path, sources: list[str], label_columns: list[str],
                       labels: dict[str, list[str]], image_size: int, min_size: int, workers: int,
                       progress: bool, images_path: Path, manifest_path: Path, rejected_path: Path) -> _Outcome:
    """Decode every image into images_path and write both CSV files, in source order."""
    first_source_by_sha256: dict[str, str] = {}
    rejections: list[tuple[str, str]] = []
    kinds: Counter[str] = Counter()
    n_duplicates = 0
    rows = _ImageRows(images_path, len(sources), (3, image_size, image_size))
    with _open_csv(manifest_path) as manifest_file, _open_csv(rejected_path) as rejected_file, \
            rows.open() as images_file, \
            _decoded_in_order([os.path.join(raw_dir, source) for source in sources], rows, image_size, min_size,
                              workers) as results:
        manifest = csv.writer(manifest_file, lineterminator="\n")
        rejected = csv.writer(rejected_file, lineterminator="\n")
        manifest.writerow([*MANIFEST_COLUMNS, *label_columns])
        rejected.writerow(["source", "reason"])
        no_labels = [""] * len(label_columns)
        for row, (source, decoded) in tqdm(enumerate(zip(sources, results)), total=len(sources),
                                           desc="preprocess", unit="img", disable=not progress, mininterval=0.5):
            if decoded.rejection_kind is not None:
                reason = f"{decoded.rejection_kind}: {decoded.rejection_detail}"
                rejections.append((source, reason))
                kinds[decoded.rejection_kind] += 1
                rejected.writerow([source, reason])
                continue
            first = first_source_by_sha256.setdefault(decoded.sha256, source)
            if first != source:
                n_duplicates += 1
                rejected.writerow([source, f"duplicate of {first}"])
                continue
            manifest.writerow([rows.rows_kept, source, decoded.sha256, decoded.width, decoded.height,
                               *labels.get(source, no_labels)])
            rows.keep(images_file, row)
    rows.close()
    return _Outcome(rows.rows_kept, rejections, kinds, n_duplicates)


def preprocess_images(raw_dir: Path, out_dir: Path, image_size: int, min_size: int, workers: int = 0,
                      progress: bool = True) -> PreprocessSummary:
    """Decode every file under raw_dir/images into out_dir/images.npy + manifest.csv + rejected.csv.

    workers=0 uses one process per available core, workers=1 decodes in this process. Raises PreprocessError
    when raw_dir/images is missing or empty, attributes.csv is malformed, or no file is usable; the
    previous outputs are then left as they were.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if image_size < 1 or min_size < 1:
        raise PreprocessError(f"image_size ({image_size}) and min_size ({min_size}) must be positive; "
                              "fix data.image_size / data.min_size in params.yaml")
    if workers < 0:
        raise PreprocessError(f"workers must be 0 (one per CPU core) or a positive count, got {workers}")
    sources = list_sources(raw_dir)
    label_columns, labels = read_attributes(raw_dir)
    workers = min(workers or default_workers(), len(sources))

    out_dir.mkdir(parents=True, exist_ok=True)
    finals = [out_dir / IMAGES_FILE, out_dir / MANIFEST_FILE, out_dir / REJECTED_FILE]
    for final in finals:  # temporaries that a killed run (SIGKILL, power cut) could not remove
        for stale in out_dir.glob(f".{final.name}.tmp-*"):  # atomic_path's naming
            stale.unlink()
    # each output is written under a temporary name and renamed over the final one only when the
    # whole block succeeds (images.npy last); after any error every temporary is removed instead
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(atomic_path(final)) for final in finals]
        outcome = _write_temporaries(raw_dir, sources, label_columns, labels, image_size, min_size, workers,
                                     progress, *temporaries)
        if outcome.n_kept == 0:
            raise PreprocessError(_describe_failure(len(sources), raw_dir / "images", outcome.rejections,
                                                    outcome.kinds))

    return PreprocessSummary(n_images=outcome.n_kept, n_rejected=len(outcome.rejections),
                             n_duplicates=outcome.n_duplicates, image_size=image_size,
                             rejected_by_kind=_by_count(outcome.kinds), rejected_csv=out_dir / REJECTED_FILE)
