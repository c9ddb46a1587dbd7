"""The errors a user can cause or fix, shared by every layer of the library."""

from __future__ import annotations

import errno
import shutil
import signal
from pathlib import Path


class PipelineError(Exception):
    """A problem the user can fix (bad input data, bad parameters, an unreachable server...):
    the stage prints the message, which says what is wrong and what to do, and exits with status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: runs end KILLED and temporary files are removed."""

    def __init__(self, signum: int):
        super().__init__(f"received signal {signal.Signals(signum).name}")
        self.signum = signum


STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the filesystem is read-only"}


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes / 2**10:,.0f} KB"


def storage_problem(exc: BaseException, path: str | Path | None = None, needed_bytes: int | None = None) -> str | None:
    """One line for a full or read-only filesystem (an OSError with such an errno anywhere in `exc`'s
    chain), naming the path, the space free and the space the write needed when known; else None."""
    while exc is not None and not (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS):
        # Python's own chain rules: an explicit cause, else the context unless `from None` hid it
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    if exc is None:
        return None
    target = Path(path or exc.filename or "a file")
    what = STORAGE_ERRNOS[exc.errno]
    if exc.errno == errno.EROFS:
        return f"cannot write {target}: {what}; run from a writable copy of the repository"
    free = next((shutil.disk_usage(folder).free for folder in (target, *target.parents) if folder.exists()), None)
    facts = [f"{_size(free)} free there" if free is not None else "",
             f"the write needed {_size(needed_bytes)}" if needed_bytes else ""]
    facts = "; ".join(fact for fact in facts if fact)
    return (f"cannot write {target}: {what}" + (f" ({facts})" if facts else "")
            + "; free some space and rerun: finished work (checkpoints, downloads, cached stages) is kept")


class StorageError(PipelineError):
    """A write failed because its filesystem is full or read-only (the message says which and where)."""
