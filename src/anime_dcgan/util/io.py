"""Atomic file writes: a later stage never reads a half-written file.

Everything is written to a temporary name in the destination folder and renamed over the final
name only once complete (a rename within one filesystem is atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from anime_dcgan.errors import StorageError, storage_problem


@contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.
    A full or read-only filesystem becomes a StorageError naming ``path`` (and ``size``, the bytes to
    be written, when the caller knows it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as handle:  # flush to disk before the rename makes it visible
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        problem = storage_problem(exc, path, size)
        if problem is not None:
            raise StorageError(problem) from None
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        yield staging
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        problem = storage_problem(exc, path)
        if problem is not None:
            raise StorageError(problem) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through memory: its own file writer reports a full disk without the errno."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def stream_sha256(handle: BinaryIO) -> str:
    """sha256 of what is left to read in an open binary file."""
    return hashlib.file_digest(handle, "sha256").hexdigest()


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return stream_sha256(handle)
