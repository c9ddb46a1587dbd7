"""Machine-wide leases on the devices that training stages run on.

`dvc queue start -j N` runs N training stages at once, each in its own workspace, and gives none of
them its own CUDA_VISIBLE_DEVICES: without leases every one of them would train on cuda:0, and on
the CPU each would start one thread per core, N times as many threads as cores. So a stage leases
what it runs on, in a folder shared by every clone and user of the machine ($ANIME_DCGAN_LEASE_DIR,
default /tmp/anime-dcgan-leases):

- GPUs (`gpu_lease`): one lock file per GPU id. A stage takes all the GPUs it needs or none, waits
  while too few are free (saying which are busy and who holds them) and sets CUDA_VISIBLE_DEVICES
  to its lease, so that it and the torchrun workers it starts see exactly those GPUs as cuda:0...
- CPU (`cpu_share`): one of `cores` slots. The holders are counted by probing the slots, and each
  takes cores // holders threads, re-counted as stages come and go.

The locks are flock(2) locks, which the kernel releases when their holder exits, SIGKILL included:
a killed stage never leaves a device leased. The lock files' contents (holder pid, host, start
time) only feed the waiting message. The folder must be on a local filesystem, where flock works.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from anime_dcgan.errors import PipelineError

LEASE_DIR_ENV = "ANIME_DCGAN_LEASE_DIR"  # the machine-wide folder; default below
GPU_COUNT_ENV = "ANIME_DCGAN_GPU_COUNT"  # tests: pretend this many GPUs exist (ids "0".."n-1")
DEFAULT_LEASE_DIR = Path("/tmp/anime-dcgan-leases")
SHARED_FOLDER_MODE = 0o1777              # as /tmp: every user creates lock files, none removes another's
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
LEASED_ENV = "ANIME_DCGAN_LEASED_GPUS"  # the lease's ids, for the stage's records (torchrun's workers inherit it)
NVIDIA_SMI_TIMEOUT_S = 30


def _say_now(message: str) -> None:
    print(message, flush=True)  # at once, also into a pipe (`dvc queue logs`)


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES spells them."""
    return _visible_gpus()[0]


def _visible_gpus() -> tuple[list[str], str]:
    """The visible GPU ids, and what decided them (for the error message of a too large request)."""
    if os.environ.get(GPU_COUNT_ENV):
        count = int(os.environ[GPU_COUNT_ENV])
        return [str(index) for index in range(count)], f"{GPU_COUNT_ENV}={count} pretends so"
    if VISIBLE_ENV in os.environ:
        spelled = os.environ[VISIBLE_ENV]
        ids = []
        for entry in spelled.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break  # CUDA ignores the list from its first invalid entry on ("-1" hides every GPU)
            ids.append(entry)
        return ids, f"{VISIBLE_ENV}={spelled!r} limits them; widen or unset it"
    ids = _machine_gpus()
    return ids, f"this machine has {len(ids)}"


def leased_gpus() -> str:
    """The GPU ids the lease of this stage (or of the torchrun launcher that started it) holds: "" for none."""
    return os.environ.get(LEASED_ENV, "")


def _machine_gpus() -> list[str]:
    """Every NVIDIA GPU of the machine by index; [] without a driver. Asked of nvidia-smi, not of
    torch.cuda: that initialises CUDA in this process, which then ignores the CUDA_VISIBLE_DEVICES
    the lease sets. Only the count matters: the lease hands the indices to CUDA_VISIBLE_DEVICES,
    which reads them in CUDA's own order, as it reads a user's indices."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):  # no nvidia-smi, no driver, or a driver that hangs
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def _lease_folder(folder: Path | None) -> Path:
    shared_default = folder is None and not os.environ.get(LEASE_DIR_ENV)
    folder = Path(folder or os.environ.get(LEASE_DIR_ENV) or DEFAULT_LEASE_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    status = folder.stat()
    if shared_default and status.st_uid == os.getuid() and stat.S_IMODE(status.st_mode) != SHARED_FOLDER_MODE:
        folder.chmod(SHARED_FOLDER_MODE)  # mkdir's mode is cut by the umask
    return folder


def _open_lock_file(path: Path) -> int:
    """A descriptor on the lock file at `path`, created with mode 0666 when absent. An existing one is
    opened without O_CREAT: with fs.protected_regular (the default of many distributions), O_CREAT on
    another user's file in a sticky world-writable folder is refused even when its mode allows writing."""
    while True:
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            pass
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue  # another process created it in between
        os.fchmod(descriptor, 0o666)  # the umask cut the mode given to open
        return descriptor


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(descriptor: int) -> None:
    fcntl.flock(descriptor, fcntl.LOCK_UN)


def _write_holder(descriptor: int) -> None:
    note = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(note).encode(), 0)


def _read_holder(descriptor: int) -> str:
    try:
        note = json.loads(os.pread(descriptor, 4096, 0))
        return f"pid {note['pid']} on {note['host']} since {note['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or by a holder being replaced
        return "holder unknown"


def _gpu_lock_name(gpu_id: str) -> str:
    # UUIDs and old MIG ids ("MIG-GPU-<uuid>/1/0") hold characters a file name should not. A GPU
    # spelled by UUID here and by index elsewhere gets two lock files: spell them alike machine-wide.
    return "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", gpu_id) + ".lock"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@contextmanager
def gpu_lease(count: int, lease_dir: Path | None = None, say: Callable[[str], None] = _say_now,
              poll_s: float = 1.0) -> Iterator[list[str]]:
    """Hold `count` free GPUs among visible_gpus() (waiting while too few are free) and set
    CUDA_VISIBLE_DEVICES and ANIME_DCGAN_LEASED_GPUS to them while held; yields their ids."""
    if count < 1:
        raise ValueError(f"a GPU lease needs at least one GPU, not {count}")
    ids, why = _visible_gpus()
    if count > len(ids):
        raise PipelineError(f"{_plural(count, 'GPU')} requested but {len(ids)} visible to this stage ({why})")
    folder = _lease_folder(lease_dir)
    locks = {gpu_id: _open_lock_file(folder / _gpu_lock_name(gpu_id)) for gpu_id in ids}
    try:
        leased = _take_all_or_none(locks, count, say, poll_s)
        settings = {name: os.environ.get(name) for name in (VISIBLE_ENV, LEASED_ENV)}
        os.environ[VISIBLE_ENV] = os.environ[LEASED_ENV] = ",".join(leased)
        try:
            yield leased
        finally:
            for name, setting in settings.items():
                if setting is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = setting
    finally:
        for descriptor in locks.values():
            os.close(descriptor)  # releases the locks held


def _take_all_or_none(locks: dict[str, int], count: int, say: Callable[[str], None], poll_s: float) -> list[str]:
    """The ids of `count` GPUs locked, taken in one sweep. A sweep that finds too few free releases
    what it took before waiting: holding part of a lease while waiting for the rest would deadlock
    two stages that each want 2 of 3 GPUs."""
    waiting_since, last_report = None, None
    while True:
        taken = []
        for gpu_id, descriptor in locks.items():
            if _try_lock(descriptor):
                taken.append(gpu_id)
                if len(taken) == count:
                    break
        if len(taken) == count:
            for gpu_id in taken:
                _write_holder(locks[gpu_id])
            if waiting_since is not None:
                say(f"leased {_plural(count, 'GPU')}: {', '.join(taken)} after waiting "
                    f"{time.monotonic() - waiting_since:.0f} s")
            return taken
        for gpu_id in taken:
            _unlock(locks[gpu_id])
        busy = [(gpu_id, _read_holder(descriptor)) for gpu_id, descriptor in locks.items() if gpu_id not in taken]
        if busy != last_report:  # said once, and again only when the busy GPUs or their holders change
            say(f"waiting for {_plural(count, 'free GPU')} of {', '.join(locks)}: busy "
                + ", ".join(f"{gpu_id} ({holder})" for gpu_id, holder in busy))
            last_report = busy
        waiting_since = waiting_since or time.monotonic()
        time.sleep(poll_s)


class CpuShare:
    """This process's share of the cores among the training stages that hold one on the machine now."""

    def __init__(self, slot_locks: list[int], cores: int):
        self.cores = cores
        self._slot_locks = slot_locks
        self._own_slot: int | None = None
        self._applied_threads: int | None = None
        self._applied_holders = 1
        self._claim_slot()

    def _claim_slot(self) -> None:
        self._own_slot = next((slot for slot, descriptor in enumerate(self._slot_locks) if _try_lock(descriptor)),
                              None)

    def holders(self) -> int:
        """The holders now, this one included: a slot this process cannot lock is another's. One
        without a slot counts itself as one more, and claims a slot as soon as one is free (its
        peers cannot count it until then)."""
        if self._own_slot is None:
            self._claim_slot()
        others = 0
        for slot, descriptor in enumerate(self._slot_locks):
            if slot == self._own_slot:
                continue
            if _try_lock(descriptor):
                _unlock(descriptor)
            else:
                others += 1
        return others + 1

    def threads(self) -> int:
        return self._share_of(self.holders())

    def _share_of(self, holders: int) -> int:
        return max(1, self.cores // holders)

    def describe(self) -> str:
        """The share that apply() last set, in words (no new count: it says what training runs on)."""
        others = self._applied_holders - 1
        return (f"{self._applied_threads} of {self.cores} CPU threads"
                + (f", shared with {_plural(others, 'other training')} on this machine" if others else ""))

    def apply(self) -> int:
        """Set torch's thread count to this share when it changed; returns the share."""
        self._applied_holders = self.holders()
        threads = self._share_of(self._applied_holders)
        if threads != self._applied_threads:
            import torch  # here: a stage takes its leases before it needs torch, whose import costs seconds

            torch.set_num_threads(threads)
            self._applied_threads = threads
        return threads


@contextmanager
def cpu_share(lease_dir: Path | None = None, cores: int | None = None) -> Iterator[CpuShare]:
    """Hold one of the `cores` CPU slots (default: the cores this process may run on) while inside;
    when all are held, run anyway, never wait."""
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    folder = _lease_folder(lease_dir)
    slot_locks = [_open_lock_file(folder / f"cpu-{slot}.lock") for slot in range(cores)]
    try:
        yield CpuShare(slot_locks, cores)
    finally:
        for descriptor in slot_locks:
            os.close(descriptor)  # releases the slot held
