"""The download stage's work: get images from `data.source` into data/raw/, exactly as obtained.

`fetch_source` fills ``raw_dir/images/`` (plus ``raw_dir/attributes.csv`` when the source carries
labels) from one of the forms listed in ACCEPTED_FORMS, each read by its reader in readers/. The new
raw_dir is built under a hidden sibling name and swapped in only when complete, so an interrupted or
failed fetch never leaves a half-filled raw_dir, and that staging folder is removed with it. Downloads
go to `cache_dir`, which survives DVC removing outputs before a rerun.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from anime_dcgan.data.http import download
from anime_dcgan.data.readers.archive import read_archive
from anime_dcgan.data.readers.base import (
    ARCHIVE_SUFFIXES,
    IMAGE_EXTENSIONS,
    DamagedFile,
    FetchJob,
    SourceError,
    Tally,
    extension_from_magic,
    format_from_name,
    is_damaged_data_error,
)
from anime_dcgan.data.readers.folder import read_folder
from anime_dcgan.data.readers.hub import fetch_hub_files
from anime_dcgan.data.readers.parquet import read_parquet
from anime_dcgan.data.synthetic import write_synthetic_dataset
from anime_dcgan.paths import repo_root
from anime_dcgan.util.io import file_sha256

if TYPE_CHECKING:
    from anime_dcgan.params import DataParams

ACCEPTED_FORMS = """Accepted forms of data.source:
  synthetic                          built-in procedurally drawn faces (works offline)
  path/to/folder                     a local folder of .jpg/.jpeg/.png/.webp/.bmp/.gif files (recursive)
  path/to/faces.zip                  a local archive: .zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz
  path/to/faces.parquet              a parquet file with an image-bytes column (Hugging Face layout)
  https://host/faces.zip             a URL of an archive, a parquet file or a single image
  hf:owner/name[@revision][/path]    a Hugging Face dataset repository (or one file/folder in it)"""

# file format -> the reader of a list of such files (only parquet sources come as several files)
_FILE_READERS = {
    "zip": lambda job, files: read_archive(job, _single(files), "zip"),
    "tar": lambda job, files: read_archive(job, _single(files), "tar"),
    "parquet": read_parquet,
}
_FORMAT_NAMES = {"zip": "zip archive", "tar": "tar archive", "parquet": "parquet file"}


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
        text = f"{self.n_images} images from {self.source} ({what})"
        if self.n_skipped:
            examples = ", ".join(self.skipped_examples)
            text += f"; skipped {self.n_skipped}" + (f" (e.g. {examples})" if examples else "")
        return text


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
    for leftover in (staging, retired):  # from a run that was killed (SIGKILL: its cleanup never ran)
        _remove_tree(leftover)
    try:
        # inside the try: an interrupt between creating staging and its images/ must clean up too
        (staging / "images").mkdir(parents=True)
        job = FetchJob(data, seed, staging, cache_dir, progress)
        kind, detail, tally = _fill(job, raw_dir)
        if tally.n_images == 0:
            skipped = f" ({tally.n_skipped} files skipped, e.g. {', '.join(tally.skipped_examples)})" \
                if tally.n_skipped else ""
            raise SourceError(f"data.source {data.source!r} contains no images{skipped}. Images must "
                              f"end in one of {', '.join(sorted(IMAGE_EXTENSIONS))}.")
    except BaseException:
        # Never kept: what a rerun resumes from lives in cache_dir (a download's .part file), so the
        # staging folder only ever holds an unfinished copy.
        _remove_tree(staging)
        raise
    if raw_dir.exists():
        raw_dir.rename(retired)
    staging.rename(raw_dir)
    _remove_tree(retired)
    return FetchSummary(data.source, kind, tally.n_images, tally.n_skipped,
                        tuple(tally.skipped_examples), detail)


def _remove_tree(folder: Path) -> None:
    """shutil.rmtree that a Ctrl-C or SIGTERM cannot cut short: the removal finishes, then the stop
    goes on. Cut short, it leaves the folder half removed, or empty once images/ is gone: Ctrl-C
    pressed twice lands the second one in the cleanup of the first."""
    stop: KeyboardInterrupt | None = None
    while True:
        try:
            shutil.rmtree(folder, ignore_errors=True)
            break
        except KeyboardInterrupt as exc:  # Terminated (SIGTERM, SIGHUP) is one too
            stop = exc
    if stop is not None:
        raise stop


def _fill(job: FetchJob, raw_dir: Path) -> tuple[str, str, Tally]:
    """Dispatch on the form of data.source; returns (kind, detail, tally)."""
    source = job.data.source.strip()
    if source == "synthetic":
        _require_no_checksum(job.data, "the synthetic source")
        return "synthetic", f"seed {job.seed}", _fill_synthetic(job)
    if source.startswith("hf:"):
        return "hf", *_read_downloads(job, fetch_hub_files(job, source), source)
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        file = download(source, job.cache_dir, job.data.sha256, progress=job.progress)
        return "url", *_read_downloads(job, [(file, PurePosixPath(urlsplit(source).path).name)], source)
    if "://" in source:
        raise SourceError(f"data.source {source!r}: unsupported URL scheme {scheme!r}.\n"
                          f"{ACCEPTED_FORMS}")

    path = _local_path(source)
    if path.is_dir():
        _require_no_checksum(job.data, f"the folder {path}")
        return "folder", str(path), read_folder(job, path, excluded=(raw_dir, job.staging))
    if not path.exists():
        raise SourceError(f"data.source {source!r}: no such file or folder (relative paths start "
                          f"at the repository root, {repo_root()}).\n{ACCEPTED_FORMS}")
    file_format = format_from_name(path.name)
    if file_format not in _FILE_READERS:
        raise SourceError(f"data.source {source!r}: a file of unknown kind (expected an archive "
                          f"ending in {', '.join(ARCHIVE_SUFFIXES)} or a .parquet file).\n"
                          f"{ACCEPTED_FORMS}")
    if job.data.sha256 is not None:
        actual = file_sha256(path)
        if actual != job.data.sha256.lower():
            raise SourceError(f"{path}: checksum mismatch: expected sha256 {job.data.sha256.lower()} "
                              f"(data.sha256), got {actual}. Check data.sha256 and the file.")
    kind = "parquet" if file_format == "parquet" else "archive"
    return kind, f"{file_format} {path.name}", _read_files(job, [(path, path.name)], file_format,
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


def _fill_synthetic(job: FetchJob) -> Tally:
    count = min(job.data.synthetic_count, job.data.max_images or job.data.synthetic_count)
    write_synthetic_dataset(job.staging, count, job.seed, job.data.workers, job.progress)
    return Tally(n_images=sum(1 for path in job.images_dir.rglob("*") if path.is_file()))


def _single(files: list[tuple[Path, str]]) -> Path:
    (path, _), = files
    return path


def _html_hint(path: Path) -> str:
    with open(path, "rb") as file:
        head = file.read(64).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return " It is an HTML page: the URL leads to a web page, not to the file itself."
    return ""


def _read_files(job: FetchJob, files: list[tuple[Path, str]], file_format: str, downloaded: bool) -> Tally:
    """Unpack one zip/tar file or a list of parquet files; a damaged download leaves the cache."""
    try:
        try:
            return _FILE_READERS[file_format](job, files)
        except DamagedFile:
            raise
        except Exception as exc:
            if is_damaged_data_error(exc):
                raise DamagedFile(files[0][0], exc) from exc
            raise
    except DamagedFile as damaged:
        hint = ("The downloaded copy was deleted from the download cache; run again to download it "
                "anew, and check the URL if this repeats." if downloaded else
                "Re-create or re-download it.") + _html_hint(damaged.path)
        if downloaded:
            damaged.path.unlink(missing_ok=True)
        raise SourceError(f"{damaged.path}: not a readable {_FORMAT_NAMES[file_format]}; it is corrupt "
                          f"or truncated ({damaged.cause}). {hint}") from damaged.cause


def _format_from_content(path: Path) -> str | None:
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head[257:262] == b"ustar" or head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        return "tar"
    return "image" if extension_from_magic(head) != ".bin" else None


def _read_downloads(job: FetchJob, files: list[tuple[Path, str]], source: str) -> tuple[str, Tally]:
    """Read downloaded files by their kind (known by name, else by content): (detail, tally)."""
    formats = []
    for path, name in files:
        file_format = format_from_name(name) or _format_from_content(path)
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
        return f"parquet {names}", _read_files(job, files, "parquet", downloaded=True)
    if len(files) != 1:
        raise SourceError(f"data.source {source!r}: expected one archive or image, or only parquet "
                          f"files, got {', '.join(name for _, name in files)}.")
    (path, name), file_format = files[0], formats[0]
    if file_format == "image":
        if format_from_name(name) != "image":  # a URL without an image extension
            name = f"image{extension_from_magic(path.read_bytes()[:16])}"
        shutil.copyfile(path, job.images_dir / name)
        return f"image {name}", Tally(n_images=1)
    return f"{file_format} {name}", _read_files(job, files, file_format, downloaded=True)
