"""What every reader shares: the job it fills, the tally it keeps, which names count as images, the
deterministic max_images subset, and how damaged files are told from disk errors."""

from __future__ import annotations

import gzip
import hashlib
import heapq
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import pyarrow as pa
from tqdm import tqdm

from anime_dcgan.errors import PipelineError

if TYPE_CHECKING:
    from anime_dcgan.params import DataParams

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".zip", *TAR_SUFFIXES)
SKIPPED_EXAMPLES = 5       # skipped files named in the summary line
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"),
                (b"GIF89a", ".gif"), (b"BM", ".bmp"))


class SourceError(PipelineError, ValueError):
    """data.source cannot be turned into images; the message says what is wrong and what to do."""


@dataclass
class Tally:
    """Counts while filling the staging folder."""

    n_images: int = 0
    n_skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def skip(self, name: str) -> None:
        self.n_skipped += 1
        if len(self.skipped_examples) < SKIPPED_EXAMPLES:
            self.skipped_examples.append(name)


@dataclass(frozen=True)
class FetchJob:
    """Everything the readers need besides the source itself."""

    data: DataParams
    seed: int
    staging: Path      # becomes data/raw/ once complete
    cache_dir: Path    # downloads, kept across runs
    progress: bool

    @property
    def images_dir(self) -> Path:
        return self.staging / "images"

    def progress_bar(self, total: int, what: str) -> tqdm:
        return tqdm(total=total, unit="img", desc=what, disable=not self.progress, leave=False)


def classify_member(name: str) -> str:
    """"ignore" (hidden files, macOS resource forks), "image", or "skip" (counted as skipped)."""
    parts = PurePosixPath(name).parts
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return "ignore"
    return "image" if PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS else "skip"


def _subset_key(key: str) -> tuple[str, str]:
    return hashlib.sha1(key.encode()).hexdigest(), key


def select(keys: Iterable[str], max_images: int | None, tally: Tally) -> set[str]:
    """The keys kept under max_images: the N with the smallest sha1, whatever the listing order."""
    keys = list(keys)
    if max_images is None or len(keys) <= max_images:
        return set(keys)
    kept = set(heapq.nsmallest(max_images, keys, key=_subset_key))
    tally.n_skipped += len(keys) - len(kept)  # not named among the examples: they are images
    return kept


def extension_from_magic(content: bytes) -> str:
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return ".webp"
    for magic, extension in _IMAGE_MAGIC:
        if content.startswith(magic):
            return extension
    return ".bin"  # kept as obtained; preprocess reports it as undecodable


class DamagedFile(Exception):
    """A reader met a file it cannot decode; turned into a SourceError by the caller."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = path
        self.cause = cause


def is_damaged_data_error(exc: BaseException) -> bool:
    """True for the errors damaged archives/parquet files raise; false for disk errors (errno set)."""
    if isinstance(exc, (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error,
                        lzma.LZMAError, gzip.BadGzipFile, pa.ArrowException)):
        return True
    return isinstance(exc, OSError) and exc.errno is None  # bz2: "Invalid data stream"


def format_from_name(name: str) -> str | None:
    """"zip", "tar", "parquet", "image" or None, by the file name alone."""
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
