"""Zip and tar archives: one member loop for both, refusing names that escape the output folder,
links, devices and encrypted members."""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from anime_dcgan.data.readers.base import FetchJob, SourceError, Tally, classify_member, select

if TYPE_CHECKING:
    from anime_dcgan.params import DataParams


@dataclass(frozen=True)
class _Member:
    name: str              # as stored in the archive
    is_file: bool
    refusal: str | None    # why this member alone makes the archive unsafe to unpack
    encrypted: bool
    size: int              # declared uncompressed bytes
    packed_size: int | None  # compressed bytes (zip), None where members are not compressed one by one
    handle: Any            # ZipInfo / TarInfo


def _zip_members(archive: zipfile.ZipFile) -> Iterator[_Member]:
    for info in archive.infolist():
        link = stat.S_ISLNK(info.external_attr >> 16)
        yield _Member(info.filename, not info.is_dir(),
                      "is a symbolic link; refusing to unpack links. Re-create the archive without links."
                      if link else None, bool(info.flag_bits & 0x1), info.file_size, info.compress_size, info)


def _tar_members(archive: tarfile.TarFile) -> Iterator[_Member]:
    for member in archive.getmembers():
        refusal = None
        if member.issym() or member.islnk():
            refusal = "is a link; refusing to unpack links. Re-create the archive without links (tar --dereference)."
        elif member.isdev():
            refusal = "is a device or pipe; refusing to unpack it. Re-create the archive from image files only."
        yield _Member(member.name, member.isfile(), refusal, False, member.size, None, member)


@contextmanager
def _open(path: Path, file_format: str) -> Iterator[tuple[Iterator[_Member], Callable[[Any], IO[bytes]], str]]:
    """(members, open a member, progress label) of a zip or tar file."""
    if file_format == "zip":
        with zipfile.ZipFile(path) as archive:
            yield _zip_members(archive), archive.open, "unzip"
    else:
        with tarfile.open(path, "r:*") as archive:
            yield _tar_members(archive), archive.extractfile, "untar"


def safe_member_name(name: str, archive: Path) -> str:
    """The member's path relative to images/; refuses names that would land outside it."""
    normalized = name.replace("\\", "/")
    parts = normalized.split("/")
    is_absolute = normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized) is not None
    if is_absolute or ".." in parts:
        raise SourceError(f"{archive}: member {name!r} would be written outside the output folder "
                          "(an absolute path or '..'); refusing to unpack this archive. Re-create it "
                          "with relative member names.")
    return "/".join(part for part in parts if part not in ("", "."))


def _max_bytes(data: DataParams) -> int:
    return int(data.max_file_mb * 2**20)


def _too_large(what: str, archive: Path, name: str) -> SourceError:
    return SourceError(f"{archive}: member {name!r} {what}; refusing to unpack it (an archive bomb, or "
                       "not an image). Raise data.max_file_mb / data.max_compression_ratio if the file "
                       "is genuine.")


def _check_size(member: _Member, archive: Path, data: DataParams) -> None:
    """Refuse, before writing anything, a member that declares a size or a compression ratio over
    the limits (zipfile and tarfile never return more bytes than a member declares: a member that
    holds more fails its CRC check as damaged)."""
    if member.size > _max_bytes(data):
        raise _too_large(f"declares {member.size / 2**20:,.1f} MB (data.max_file_mb: {data.max_file_mb:g})",
                         archive, member.name)
    if member.packed_size is not None and member.size > data.max_compression_ratio * max(member.packed_size, 1):
        raise _too_large(f"inflates {member.size / max(member.packed_size, 1):,.0f}-fold "
                         f"(data.max_compression_ratio: {data.max_compression_ratio:g})", archive, member.name)


def read_archive(job: FetchJob, path: Path, file_format: str) -> Tally:
    """Unpack the image members of a zip (`file_format` "zip") or tar ("tar") file."""
    tally = Tally()
    with _open(path, file_format) as (members, open_member, label):
        images: dict[str, _Member] = {}
        for member in members:
            name = safe_member_name(member.name, path)
            if member.refusal:
                raise SourceError(f"{path}: member {member.name!r} {member.refusal}")
            if not member.is_file or not name:
                continue
            verdict = classify_member(name)
            if verdict == "skip" or (verdict == "image" and name in images):
                tally.skip(name)
            elif verdict == "image":
                if member.encrypted:
                    raise SourceError(f"{path}: member {member.name!r} is encrypted; unpack the "
                                      "archive with its password and give the folder instead.")
                _check_size(member, path, job.data)
                images[name] = member
        kept = select(images, job.data.max_images, tally)
        # archive order: a compressed tar is read forward once instead of rewound per member
        with job.progress_bar(len(kept), label) as bar:
            for name, member in images.items():
                if name in kept:
                    destination = job.images_dir / name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with open_member(member.handle) as source, open(destination, "wb") as out:
                        shutil.copyfileobj(source, out)
                    tally.n_images += 1
                    bar.update()
    return tally
