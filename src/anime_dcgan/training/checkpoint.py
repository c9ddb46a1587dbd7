"""Resumable training state: one folder per run identity, written atomically.

The identity is a hash of the training parameters, the exact training data and every source file
of the training package (this folder: the networks, the step, the loop, the CPU kernels...), so
rerunning a killed stage resumes its own checkpoint while an experiment with any other setting, data
or code never starts from it ("resume this run" is never "start from these weights").
Checkpoints live outside DVC's outputs (which DVC deletes before rerunning a stage) under
`<repo root>/.cache/checkpoints/<identity>/` and are removed once the run has finished.

Each file carries the sha256 of its content, checked on load: a truncated or corrupted checkpoint is
moved aside (kept for inspection) and the previous one, of the last two kept, is used instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anime_dcgan.util.io import atomic_write_bytes, file_sha256

CHECKPOINT_GLOB = "checkpoint_*.pt"
KEEP = 2                     # checkpoints kept: a damaged last one still leaves one to resume from
_MAGIC = b"anime-dcgan checkpoint sha256="  # then 64 hex digits and a newline, then torch.save's bytes
TRAINING_PACKAGE = Path(__file__).parent


def code_digests(package: Path = TRAINING_PACKAGE) -> dict[str, str]:
    """sha256 of every .py file below `package`, by relative path."""
    return {path.relative_to(package).as_posix(): file_sha256(path) for path in sorted(package.rglob("*.py"))}


def run_identity(train_config: dict[str, Any], data_digest: str, package: Path = TRAINING_PACKAGE) -> str:
    blob = json.dumps({"config": train_config, "data": data_digest, "code": code_digests(package)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def capture_rng_state() -> dict[str, Any]:
    """Every random number generator a step may touch: Python, NumPy, torch CPU and all CUDA devices."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"checkpoint_{step:06d}.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write the state at state["step"] (with every RNG state) and keep only the last KEEP files."""
    buffer = io.BytesIO()
    torch.save({**state, "rng": capture_rng_state()}, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(_checkpoint_path(folder, state["step"]),
                       _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    for old in sorted(folder.glob(CHECKPOINT_GLOB))[:-KEEP]:
        old.unlink()


class DamagedCheckpoint(Exception):
    """A checkpoint file that is truncated, corrupted or not one of ours."""


def _read(path: Path) -> dict[str, Any]:
    content = path.read_bytes()
    header_length = len(_MAGIC) + 65
    if not content.startswith(_MAGIC) or len(content) < header_length:
        raise DamagedCheckpoint("not a checkpoint of this project (no checksum header)")
    expected = content[len(_MAGIC):header_length - 1].decode(errors="replace")
    payload = content[header_length:]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise DamagedCheckpoint("its content does not match its sha256: truncated or corrupted")
    # not weights_only: the state holds Python/NumPy RNG states; the file is our own, never downloaded
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def load_checkpoint(folder: Path, on_damaged: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The newest good saved state, or None. A damaged file is renamed to `<name>.damaged` (kept for
    inspection) and `on_damaged` is told; the next older one is tried. RNG states are restored by the
    caller."""
    for path in sorted(folder.glob(CHECKPOINT_GLOB), reverse=True):
        try:
            return _read(path)
        except DamagedCheckpoint as exc:
            aside = path.with_name(path.name + ".damaged")
            path.rename(aside)
            if on_damaged is not None:
                on_damaged(f"checkpoint {path} is unusable ({exc}); moved aside to {aside.name}")
    return None


def latest_step(folder: Path) -> int | None:
    """The step of the newest checkpoint file in `folder` (unverified), or None."""
    names = sorted(folder.glob(CHECKPOINT_GLOB))
    return int(names[-1].stem.removeprefix("checkpoint_")) if names else None


def remove_checkpoints(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
