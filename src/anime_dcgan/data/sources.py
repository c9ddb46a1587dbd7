"""The download stage's work: get images from `data.source` into data/raw/, exactly as obtained.

`fetch_source` fills ``raw_dir/images/`` (plus ``raw_dir/attributes.csv`` when the source carries
labels) from one of the forms listed in ACCEPTED_FORMS. The new raw_dir is built under a hidden
sibling name and swapped in only when complete, so an interrupted or failed fetch never leaves a
half-filled raw_dir. Downloads go to `cache_dir`, which survives DVC removing outputs before a rerun.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import heapq
import json
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from anime_dcgan.data.download import TRANSIENT_STATUSES, DownloadError, download, fetch_json
from anime_dcgan.data.synthetic import write_synthetic_dataset
from anime_dcgan.io import file_sha256
from anime_dcgan.layout import repo_root
from anime_dcgan.stage import PipelineError

if TYPE_CHECKING:
    from anime_dcgan.params import DataParams

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".zip", *TAR_SUFFIXES)
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
PARQUET_BATCH_ROWS = 128   # rows held in memory at once while unpacking a parquet file
SKIPPED_EXAMPLES = 5       # skipped files named in the summary line

ACCEPTED_FORMS = """Accepted forms of data.source:
  synthetic                          built-in procedurally drawn faces (works offline)
  path/to/folder                     a local folder of .jpg/.jpeg/.png/.webp/.bmp/.gif files (recursive)
  path/to/faces.zip                  a local archive: .zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz
  path/to/faces.parquet              a parquet file with an image-bytes column (Hugging Face layout)
  https://host/faces.zip             a URL of an archive, a parquet file or a single image
  hf:owner/name[@revision][/path]    a Hugging Face dataset repository (or one file/folder in it)"""

_HF_SOURCE = re.compile(r"^hf:(?P<owner>[\w.-]+)/(?P<name>[\w.-]+)"
                        r"(?:@(?P<revision>[^/\s]+))?(?:/(?P<path>.+))?$")
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"),
                (b"GIF89a", ".gif"), (b"BM", ".bmp"))


class SourceError(PipelineError, ValueError):
    """data.source cannot be turned into images; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class FetchSummary:
    source: str                 # the data.source string as given
    kind: str                   # "synthetic" | "folder" | "archive" | "parquet" | "url" | "hf"
    n_images: int               # image files written under raw_dir/images
    n_skipped: int              # files not taken (not an image by extension, over max_images, ...)
    skipped_examples: tuple[str, ...] = ()   # a few of the skipped names, for the summary line
    detail: str = ""            # what was read, e.g. "zip archive data.zip"

    def line(self) -> str:
        what = f"{self.kind}, {self.detail}" if self.detail else self.kind
        text = f"download: {self.n_images} images from {self.source} ({what})"
        if self.n_skipped:
            examples = ", ".join(self.skipped_examples)
            text += f"; skipped {self.n_skipped}" + (f" (e.g. {examples})" if examples else "")
        return text


@dataclass
class _Tally:
    """Counts while filling the staging folder."""

    n_images: int = 0
    n_skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def skip(self, name: str) -> None:
        self.n_skipped += 1
        if len(self.skipped_examples) < SKIPPED_EXAMPLES:
            self.skipped_examples.append(name)


@dataclass(frozen=True)
class _Fetch:
    """Everything the source readers need besides the source itself."""

    data: DataParams
    seed: int
    staging: Path
    cache_dir: Path
    progress: bool

    @property
    def images_dir(self) -> Path:
        return self.staging / "images"


def fetch_source(data: DataParams, seed: int, raw_dir: Path, cache_dir: Path,
                 progress: bool = True) -> FetchSummary:
    """Fill `raw_dir` with the images of `data.source`; raises SourceError/DownloadError on failure.

    max_images keeps the N images whose relative path (parquet: "<shard>/<row>") has the smallest
    sha1, so the subset does not depend on listing order. On failure the previous raw_dir (if any)
    is left untouched.
    """
    raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
    staging = raw_dir.with_name(f".{raw_dir.name}.partial")
    retired = raw_dir.with_name(f".{raw_dir.name}.old")
    for leftover in (staging, retired):  # from a run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    try:
        job = _Fetch(data, seed, staging, cache_dir, progress)
        kind, detail, tally = _fill(job, raw_dir)
        if tally.n_images == 0:
            skipped = f" ({tally.n_skipped} files skipped, e.g. {', '.join(tally.skipped_examples)})" \
                if tally.n_skipped else ""
            raise SourceError(f"data.source {data.source!r} contains no images{skipped}. Images must "
                              f"end in one of {', '.join(sorted(IMAGE_EXTENSIONS))}.")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if raw_dir.exists():
        raw_dir.rename(retired)
    staging.rename(raw_dir)
    shutil.rmtree(retired, ignore_errors=True)
    return FetchSummary(data.source, kind, tally.n_images, tally.n_skipped,
                        tuple(tally.skipped_examples), detail)


def _fill(job: _Fetch, raw_dir: Path) -> tuple[str, str, _Tally]:
    """Dispatch on the form of data.source; returns (kind, detail, tally)."""
    source = job.data.source.strip()
    if source == "synthetic":
        _require_no_checksum(job.data, "the synthetic source")
        return "synthetic", f"seed {job.seed}", _fill_synthetic(job)
    if source.startswith("hf:"):
        detail, tally = _fill_from_hub(job, source)
        return "hf", detail, tally
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        file = download(source, job.cache_dir, job.data.sha256, progress=job.progress)
        detail, tally = _fill_from_downloads(job, [(file, _url_basename(source))], source)
        return "url", detail, tally
    if "://" in source:
        raise SourceError(f"data.source {source!r}: unsupported URL scheme {scheme!r}.\n"
                          f"{ACCEPTED_FORMS}")

    path = _local_path(source)
    if path.is_dir():
        _require_no_checksum(job.data, f"the folder {path}")
        return "folder", str(path), _fill_from_folder(job, path, excluded=(raw_dir, job.staging))
    if not path.exists():
        raise SourceError(f"data.source {source!r}: no such file or folder (relative paths start "
                          f"at the repository root, {repo_root()}).\n{ACCEPTED_FORMS}")
    file_format = _format_from_name(path.name)
    if file_format not in ("zip", "tar", "parquet"):
        raise SourceError(f"data.source {source!r}: a file of unknown kind (expected an archive "
                          f"ending in {', '.join(ARCHIVE_SUFFIXES)} or a .parquet file).\n"
                          f"{ACCEPTED_FORMS}")
    if job.data.sha256 is not None:
        actual = file_sha256(path)
        if actual != job.data.sha256.lower():
            raise SourceError(f"{path}: checksum mismatch: expected sha256 {job.data.sha256.lower()} "
                              f"(data.sha256), got {actual}. Check data.sha256 and the file.")
    kind = "parquet" if file_format == "parquet" else "archive"
    return kind, f"{file_format} {path.name}", _unpack(job, [(path, path.name)], file_format,
                                                       downloaded=False)


def _local_path(source: str) -> Path:
    """A relative path is looked up in the stage's workspace, then in the main repository: the
    temporary workspace of a queued experiment holds the repository's tracked files only."""
    path = Path(source).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return repo_root() / path


def _require_no_checksum(data: DataParams, what: str) -> None:
    if data.sha256 is not None:
        raise SourceError(f"data.sha256 is set but {what} is not a single file to check; set "
                          "data.sha256 to null, or give an archive, parquet file or URL.")


# -- synthetic -------------------------------------------------------------------------------------

def _fill_synthetic(job: _Fetch) -> _Tally:
    count = min(job.data.synthetic_count, job.data.max_images or job.data.synthetic_count)
    write_synthetic_dataset(job.staging, count, job.seed, job.data.workers, job.progress)
    return _Tally(n_images=sum(1 for path in job.images_dir.rglob("*") if path.is_file()))


# -- file filters and deterministic subsets -------------------------------------------------------

def _classify_member(name: str) -> str:
    """"ignore" (hidden files, macOS resource forks), "image", or "skip" (counted as skipped)."""
    parts = PurePosixPath(name).parts
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return "ignore"
    return "image" if PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS else "skip"


def _subset_key(key: str) -> tuple[str, str]:
    return hashlib.sha1(key.encode()).hexdigest(), key


def _select(keys: Iterable[str], max_images: int | None, tally: _Tally) -> set[str]:
    """The keys kept under max_images: the N with the smallest sha1, whatever the listing order."""
    keys = list(keys)
    if max_images is None or len(keys) <= max_images:
        return set(keys)
    kept = set(heapq.nsmallest(max_images, keys, key=_subset_key))
    tally.n_skipped += len(keys) - len(kept)  # not named among the examples: they are images
    return kept


def _progress_bar(job: _Fetch, total: int, what: str) -> tqdm:
    return tqdm(total=total, unit="img", desc=what, disable=not job.progress, leave=False)


# -- local folder ----------------------------------------------------------------------------------

def _fill_from_folder(job: _Fetch, folder: Path, excluded: tuple[Path, ...]) -> _Tally:
    tally = _Tally()
    excluded_dirs = {path.resolve() for path in excluded}
    images: list[str] = []
    for current, dirnames, filenames in os.walk(folder):
        current_path = Path(current)
        # sorted walk: the skipped examples and the copy order do not depend on the file system
        dirnames[:] = sorted(name for name in dirnames
                             if (current_path / name).resolve() not in excluded_dirs)
        for filename in sorted(filenames):
            relative = (current_path / filename).relative_to(folder).as_posix()
            verdict = _classify_member(relative)
            if verdict == "image":
                images.append(relative)
            elif verdict == "skip":
                tally.skip(relative)
    kept = _select(images, job.data.max_images, tally)
    with _progress_bar(job, len(kept), "copy") as bar:
        for relative in images:
            if relative in kept:
                destination = job.images_dir / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / relative, destination)
                tally.n_images += 1
                bar.update()
    return tally


# -- archives --------------------------------------------------------------------------------------

def _safe_member_name(name: str, archive: Path) -> str:
    """The member's path relative to images/; refuses names that would land outside it."""
    normalized = name.replace("\\", "/")
    parts = normalized.split("/")
    is_absolute = normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized) is not None
    if is_absolute or ".." in parts:
        raise SourceError(f"{archive}: member {name!r} would be written outside the output folder "
                          "(an absolute path or '..'); refusing to unpack this archive. Re-create it "
                          "with relative member names.")
    return "/".join(part for part in parts if part not in ("", "."))


class _DamagedFile(Exception):
    """A reader met a file it cannot decode; turned into a SourceError by `_unpack`."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = path
        self.cause = cause


def _is_damaged_data_error(exc: BaseException) -> bool:
    """True for the errors damaged archives/parquet files raise; false for disk errors (errno set)."""
    if isinstance(exc, (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error,
                        lzma.LZMAError, gzip.BadGzipFile, pa.ArrowException)):
        return True
    return isinstance(exc, OSError) and exc.errno is None  # bz2: "Invalid data stream"


def _html_hint(path: Path) -> str:
    with open(path, "rb") as file:
        head = file.read(64).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return " It is an HTML page: the URL leads to a web page, not to the file itself."
    return ""


def _unpack(job: _Fetch, files: list[tuple[Path, str]], file_format: str, downloaded: bool) -> _Tally:
    """Unpack one zip/tar file or a list of parquet files; a damaged download leaves the cache."""
    try:
        if file_format == "parquet":
            return _fill_from_parquet(job, files)
        (path, _), = files
        reader = _fill_from_zip if file_format == "zip" else _fill_from_tar
        try:
            return reader(job, path)
        except Exception as exc:
            if _is_damaged_data_error(exc):
                raise _DamagedFile(path, exc) from exc
            raise
    except _DamagedFile as damaged:
        what = {"zip": "zip archive", "tar": "tar archive", "parquet": "parquet file"}[file_format]
        hint = ("The downloaded copy was deleted from the download cache; run again to download it "
                "anew, and check the URL if this repeats." if downloaded else
                "Re-create or re-download it.") + _html_hint(damaged.path)
        if downloaded:
            damaged.path.unlink(missing_ok=True)
        raise SourceError(f"{damaged.path}: not a readable {what}; it is corrupt or truncated "
                          f"({damaged.cause}). {hint}") from damaged.cause


def _fill_from_zip(job: _Fetch, archive: Path) -> _Tally:
    tally = _Tally()
    with zipfile.ZipFile(archive) as zip_file:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in zip_file.infolist():
            name = _safe_member_name(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise SourceError(f"{archive}: member {info.filename!r} is a symbolic link; refusing "
                                  "to unpack links. Re-create the archive without links.")
            if info.is_dir() or not name:
                continue
            verdict = _classify_member(name)
            if verdict == "skip" or (verdict == "image" and name in members):
                tally.skip(name)
            elif verdict == "image":
                if info.flag_bits & 0x1:
                    raise SourceError(f"{archive}: member {info.filename!r} is encrypted; unpack "
                                      "the archive with its password and give the folder instead.")
                members[name] = info
        kept = _select(members, job.data.max_images, tally)
        with _progress_bar(job, len(kept), "unzip") as bar:
            for name, info in members.items():
                if name in kept:
                    destination = job.images_dir / name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with zip_file.open(info) as source, open(destination, "wb") as out:
                        shutil.copyfileobj(source, out)
                    tally.n_images += 1
                    bar.update()
    return tally


def _fill_from_tar(job: _Fetch, archive: Path) -> _Tally:
    tally = _Tally()
    with tarfile.open(archive, "r:*") as tar:
        members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            name = _safe_member_name(member.name, archive)
            if member.issym() or member.islnk():
                raise SourceError(f"{archive}: member {member.name!r} is a link; refusing to unpack "
                                  "links. Re-create the archive without links (tar --dereference).")
            if member.isdev():
                raise SourceError(f"{archive}: member {member.name!r} is a device or pipe; refusing "
                                  "to unpack it. Re-create the archive from image files only.")
            if not member.isfile() or not name:
                continue
            verdict = _classify_member(name)
            if verdict == "skip" or (verdict == "image" and name in members):
                tally.skip(name)
            elif verdict == "image":
                members[name] = member
        kept = _select(members, job.data.max_images, tally)
        # archive order: a compressed tar is read forward once instead of rewound per member
        with _progress_bar(job, len(kept), "untar") as bar:
            for name, member in members.items():
                if name in kept:
                    destination = job.images_dir / name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None  # regular files always have content
                    with source, open(destination, "wb") as out:
                        shutil.copyfileobj(source, out)
                    tally.n_images += 1
                    bar.update()
    return tally


# -- parquet ---------------------------------------------------------------------------------------

def _image_column_kind(data_type: pa.DataType) -> str | None:
    """"struct" for the Hugging Face Image feature {bytes, path}, "binary" for raw bytes, else None."""
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return "binary"
    if pa.types.is_struct(data_type):
        index = data_type.get_field_index("bytes")
        if index >= 0 and _image_column_kind(data_type.field(index).type) == "binary":
            return "struct"
    return None


def _is_label_type(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        return _is_label_type(data_type.value_type)
    return (pa.types.is_integer(data_type) or pa.types.is_floating(data_type)
            or pa.types.is_boolean(data_type) or pa.types.is_string(data_type)
            or pa.types.is_large_string(data_type))


def _choose_image_column(schema: pa.Schema, requested: str | None, path: Path) -> str:
    described = ", ".join(f"{name} ({schema.field(name).type})" for name in schema.names)
    if requested is not None:
        if requested not in schema.names:
            raise SourceError(f"{path}: data.image_column {requested!r} is not a column; the columns "
                              f"are: {described}.")
        if _image_column_kind(schema.field(requested).type) is None:
            raise SourceError(f"{path}: data.image_column {requested!r} holds "
                              f"{schema.field(requested).type}, not image bytes (a binary column or "
                              f"a struct with a 'bytes' field); the columns are: {described}.")
        return requested
    candidates = [name for name in schema.names if _image_column_kind(schema.field(name).type)]
    if len(candidates) != 1:
        found = "no column" if not candidates else f"several columns ({', '.join(candidates)})"
        raise SourceError(f"{path}: {found} could hold image bytes; set data.image_column to the "
                          f"one that does. The columns are: {described}.")
    return candidates[0]


def _extension_from_magic(content: bytes) -> str:
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return ".webp"
    for magic, extension in _IMAGE_MAGIC:
        if content.startswith(magic):
            return extension
    return ".bin"  # kept as obtained; preprocess reports it as undecodable


def _shard_names(names: list[str]) -> list[str]:
    """Folder names for the shards: the file stem, or the whole path when stems collide."""
    stems = [PurePosixPath(name).stem for name in names]
    if len(set(stems)) == len(stems):
        return stems
    return [str(PurePosixPath(name).with_suffix("")).replace("/", "_") for name in names]


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as exc:
        if _is_damaged_data_error(exc):
            raise _DamagedFile(path, exc) from exc
        raise


def _batches(parquet_file: pq.ParquetFile, path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Row batches of `columns`, one row group at a time so memory stays bounded on any file size.

    (One iter_batches over the whole file reads ahead: 188 MB held for a 182 MB file, against
    10 MB per row group; measured with pyarrow 25.)
    """
    for row_group in range(parquet_file.num_row_groups):
        try:
            yield from parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[row_group],
                                                 columns=columns)
        except Exception as exc:
            if _is_damaged_data_error(exc):
                raise _DamagedFile(path, exc) from exc
            raise


def _fill_from_parquet(job: _Fetch, shards: list[tuple[Path, str]]) -> _Tally:
    """Write each row's image bytes to images/<shard>/<row:06d>.<ext>; labels to attributes.csv."""
    tally = _Tally()
    files = [_open_parquet(path) for path, _ in shards]
    first_path = shards[0][0]
    image_column = _choose_image_column(files[0].schema_arrow, job.data.image_column, first_path)
    for (path, _), parquet_file in zip(shards, files):
        schema = parquet_file.schema_arrow
        if image_column not in schema.names or not _image_column_kind(schema.field(image_column).type):
            raise SourceError(f"{path}: has no image column {image_column!r} like {first_path}; "
                              "all parquet files of a source must share their columns.")
    label_columns = [name for name in files[0].schema_arrow.names if name != image_column
                     and all(_has_label_column(file.schema_arrow, name) for file in files)]
    shard_names = _shard_names([name for _, name in shards])
    # row keys come from the metadata alone, so the subset is chosen before any image is read
    keys = [f"{shard}/{row:06d}" for shard, parquet_file in zip(shard_names, files)
            for row in range(parquet_file.metadata.num_rows)]
    kept = _select(keys, job.data.max_images, tally)
    with ExitStack() as stack:
        bar = stack.enter_context(_progress_bar(job, len(kept), "parquet"))
        writer = None
        if label_columns:
            attributes = stack.enter_context(open(job.staging / "attributes.csv", "w", newline=""))
            writer = csv.writer(attributes)
            writer.writerow(["file", *label_columns])
        for (path, _), shard, parquet_file in zip(shards, shard_names, files):
            (job.images_dir / shard).mkdir(parents=True, exist_ok=True)
            first_row = 0
            for batch in _batches(parquet_file, path, [image_column, *label_columns]):
                images = batch.column(0).to_pylist()
                labels = [batch.column(index).to_pylist() for index in range(1, batch.num_columns)]
                for index, value in enumerate(images):
                    key = f"{shard}/{first_row + index:06d}"
                    if key not in kept:
                        continue
                    content = value.get("bytes") if isinstance(value, dict) else value
                    if not content:
                        tally.skip(f"{key} (no image bytes)")
                        continue
                    relative = f"images/{key}{_extension_from_magic(content)}"
                    (job.staging / relative).write_bytes(content)
                    if writer:
                        writer.writerow([relative, *(column[index] for column in labels)])
                    tally.n_images += 1
                    bar.update()
                first_row += batch.num_rows
    return tally


def _has_label_column(schema: pa.Schema, name: str) -> bool:
    return name in schema.names and _is_label_type(schema.field(name).type)


# -- downloaded files ------------------------------------------------------------------------------

def _url_basename(url: str) -> str:
    return PurePosixPath(urlsplit(url).path).name


def _format_from_name(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    if lower.endswith(".parquet"):
        return "parquet"
    if PurePosixPath(lower).suffix in IMAGE_EXTENSIONS:
        return "image"
    return None


def _format_from_content(path: Path) -> str | None:
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head[257:262] == b"ustar" or head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        return "tar"
    return "image" if _extension_from_magic(head) != ".bin" else None


def _fill_from_downloads(job: _Fetch, files: list[tuple[Path, str]], source: str) -> tuple[str, _Tally]:
    """Handle downloaded files by their kind (known by name, else by content): (detail, tally)."""
    formats = []
    for path, name in files:
        file_format = _format_from_name(name) or _format_from_content(path)
        if file_format is None:
            head = path.read_bytes()[:32]
            hint = _html_hint(path)
            path.unlink()
            raise SourceError(f"data.source {source!r}: the downloaded file {name!r} is neither an "
                              f"archive, a parquet file nor an image (it starts with {head!r}).{hint} "
                              "It was deleted from the download cache; check that the URL leads to "
                              "the file itself.")
        formats.append(file_format)
    if set(formats) == {"parquet"}:
        names = ", ".join(name for _, name in files[:3]) + (", ..." if len(files) > 3 else "")
        return f"parquet {names}", _unpack(job, files, "parquet", downloaded=True)
    if len(files) != 1:
        raise SourceError(f"data.source {source!r}: expected one archive or image, or only parquet "
                          f"files, got {', '.join(name for _, name in files)}.")
    (path, name), file_format = files[0], formats[0]
    if file_format == "image":
        if _format_from_name(name) != "image":  # a URL without an image extension
            name = f"image{_extension_from_magic(path.read_bytes()[:16])}"
        shutil.copyfile(path, job.images_dir / name)
        return f"image {name}", _Tally(n_images=1)
    return f"{file_format} {name}", _unpack(job, files, file_format, downloaded=True)


# -- Hugging Face hub ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HubSource:
    """A parsed `hf:owner/name[@revision][/path]`."""

    repo_id: str
    revision: str
    path: str | None

    @classmethod
    def parse(cls, source: str) -> HubSource:
        match = _HF_SOURCE.match(source.strip())
        if match is None:
            raise SourceError(f"data.source {source!r}: expected hf:owner/name[@revision][/path], "
                              "e.g. hf:huggan/anime-faces or hf:huggan/anime-faces@main/data.zip.")
        path = (match["path"] or "").strip("/") or None
        return cls(f"{match['owner']}/{match['name']}", match["revision"] or "main", path)

    def resolve_url(self, endpoint: str, path: str) -> str:
        return (f"{endpoint}/datasets/{self.repo_id}/resolve/{quote(self.revision, safe='')}/"
                f"{quote(path)}")

    def tree_url(self, endpoint: str) -> str:
        return (f"{endpoint}/api/datasets/{self.repo_id}/tree/{quote(self.revision, safe='')}"
                "?recursive=true")


def hub_endpoint_and_headers() -> tuple[str, dict[str, str]]:
    """HF_ENDPOINT (default https://huggingface.co) and the Authorization header from HF_TOKEN."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_HF_ENDPOINT
    token = os.environ.get("HF_TOKEN", "").strip()
    return endpoint, ({"Authorization": f"Bearer {token}"} if token else {})


def _fill_from_hub(job: _Fetch, source: str) -> tuple[str, _Tally]:
    hub = HubSource.parse(source)
    endpoint, headers = hub_endpoint_and_headers()
    if hub.path is not None and _format_from_name(hub.path) is not None:
        chosen = [(hub.path, None)]  # a file named outright: no listing needed
    else:
        listing = _list_hub_files(hub, endpoint, headers, job.cache_dir)
        chosen = _choose_hub_files(listing, hub, source)
    if job.data.sha256 is not None and len(chosen) > 1:
        raise SourceError(f"data.sha256 is set but {source} has {len(chosen)} files; set data.sha256 "
                          f"to null or name one file (hf:{hub.repo_id}/<path>).")
    files = []
    for path, listed_sha256 in chosen:
        url = hub.resolve_url(endpoint, path)
        try:
            file = download(url, job.cache_dir, job.data.sha256 or listed_sha256, headers=headers,
                            progress=job.progress)
        except DownloadError as exc:
            if exc.status == 404:
                raise SourceError(f"data.source {source!r}: the file {path!r} is not in the Hugging "
                                  f"Face dataset {hub.repo_id} at revision {hub.revision!r} ({url}). "
                                  f"Check the path and revision on {endpoint}/datasets/{hub.repo_id}.") \
                    from exc
            raise
        files.append((file, PurePosixPath(path).name))
    return _fill_from_downloads(job, files, source)


def _list_hub_files(hub: HubSource, endpoint: str, headers: dict[str, str],
                    cache_dir: Path) -> list[dict[str, Any]]:
    """The repo's file entries ({type, path, size, lfs?}), following the listing's pages.

    The listing is kept in the cache so that a rerun works offline, like the cached downloads.
    """
    first_url = hub.tree_url(endpoint)
    saved = cache_dir / f"hf-tree-{hashlib.sha256(first_url.encode()).hexdigest()[:12]}.json"
    entries: list[dict[str, Any]] = []
    url: str | None = first_url
    try:
        while url is not None:
            # with a saved listing, an unreachable hub is not worth a long retry loop
            page, url = fetch_json(url, headers, retries=0 if saved.is_file() else 5)
            if not isinstance(page, list):
                raise SourceError(f"{first_url}: expected a JSON list of files, got "
                                  f"{json.dumps(page)[:200]}. Check HF_ENDPOINT.")
            entries.extend(entry for entry in page if isinstance(entry, dict))
    except DownloadError as exc:
        if exc.status == 404:
            raise SourceError(f"Hugging Face dataset {hub.repo_id!r} (revision {hub.revision!r}) not "
                              f"found on {endpoint}: check the owner/name and revision in data.source; "
                              "for a private dataset set HF_TOKEN.") from exc
        unreachable = exc.status is None or exc.status in TRANSIENT_STATUSES
        if not (unreachable and saved.is_file()):
            raise
        log.warning("%s is unreachable (%s); using the file listing saved in %s", endpoint, exc, saved)
        return json.loads(saved.read_text())
    saved.parent.mkdir(parents=True, exist_ok=True)
    temporary = saved.with_name(saved.name + ".tmp")
    temporary.write_text(json.dumps(entries))
    os.replace(temporary, saved)
    return entries


def _choose_hub_files(listing: list[dict[str, Any]], hub: HubSource,
                      source: str) -> list[tuple[str, str | None]]:
    """All parquet files (sorted) if any, else the single archive: [(path, sha256 from LFS)]."""
    prefix = f"{hub.path}/" if hub.path else ""
    files = {entry["path"]: (entry.get("lfs") or {}).get("oid") for entry in listing
             if entry.get("type") == "file" and str(entry.get("path", "")).startswith(prefix)}
    parquet = sorted(path for path in files if _format_from_name(path) == "parquet")
    archives = sorted(path for path in files if _format_from_name(path) in ("zip", "tar"))
    if parquet:
        return [(path, files[path]) for path in parquet]
    if len(archives) == 1:
        return [(archives[0], files[archives[0]])]
    candidates = archives or sorted(files)
    where = f"{hub.repo_id}/{hub.path}" if hub.path else hub.repo_id
    listed = ", ".join(candidates[:20]) + (", ..." if len(candidates) > 20 else "") or "(no files)"
    reason = "several archives" if archives else "no parquet file and no archive"
    raise SourceError(f"data.source {source!r}: {reason} in {where}; name the file to use as "
                      f"hf:{hub.repo_id}/<path>. Files: {listed}")
