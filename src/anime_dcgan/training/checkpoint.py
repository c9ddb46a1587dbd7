"""Resumable training state: one folder per run identity, written atomically.

The identity is a hash of the training parameters, the exact training data and every source file
of the training package (this folder: the networks, the step, the loop, the CPU kernels...), so
rerunning a killed stage resumes its own checkpoint while an experiment with any other setting, data
or code never starts from it ("resume this run" is never "start from these weights").
Checkpoints live outside DVC's outputs (which DVC deletes before rerunning a stage) under
`<repo root>/.cache/checkpoints/<identity>/`.

A finished run's final state (with its progress grids and step choice) is kept beside them, under
`<repo root>/.cache/finished_runs/<lineage>-<steps>/`, where the lineage is the identity without `steps`: nothing in a step
depends on the run's length, so a run asked for more steps starts from the longest finished run of
its lineage (copied into its own folder) and ends bit-identical to one trained from scratch. The
newest FINISHED_KEEP finished runs are kept, the oldest removed.

Each file carries the sha256 of its content, checked on load: a truncated or corrupted checkpoint is
moved aside (kept for inspection) and the previous one, of the last two kept, is used instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
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
FINISHED_DIR = "finished_runs"  # beside the checkpoint root: the final states of finished runs
FINISHED_KEEP = 4            # finished runs kept (each a few times the networks' size), the oldest removed
RUN_FILE = "run.json"        # a finished run's MLflow run id and steps; in a run folder: the run it extends
KEPT_WITH_STATE = ("progress", "step_choice.json")  # beside the final state: its grids, its step variant
_MAGIC = b"anime-dcgan checkpoint sha256="  # then 64 hex digits and a newline, then torch.save's bytes
TRAINING_PACKAGE = Path(__file__).parent


def code_digests(package: Path = TRAINING_PACKAGE) -> dict[str, str]:
    """sha256 of every .py file below `package`, by relative path."""
    return {path.relative_to(package).as_posix(): file_sha256(path) for path in sorted(package.rglob("*.py"))}


def run_identity(train_config: dict[str, Any], data_digest: str, package: Path = TRAINING_PACKAGE) -> str:
    blob = json.dumps({"config": train_config, "data": data_digest, "code": code_digests(package)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def lineage(train_config: dict[str, Any], data_digest: str, package: Path = TRAINING_PACKAGE) -> str:
    """The identity of the run without its length: the runs that continue one another."""
    return run_identity({key: value for key, value in train_config.items() if key != "steps"}, data_digest, package)


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


def finished_root(checkpoint_root: Path) -> Path:
    return checkpoint_root.parent / FINISHED_DIR


def keep_finished(folder: Path, finished: Path, lineage_id: str, steps: int, mlflow_run_id: str) -> Path:
    """Move the final state of the run in `folder` (its checkpoint at `steps`) to the finished runs
    in `finished`, then remove the run folder and the oldest finished runs beyond FINISHED_KEEP.
    Returns the finished run's folder."""
    target = finished / f"{lineage_id}-{steps:07d}"
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    final = _checkpoint_path(folder, steps)
    # moved, not renamed: the checkpoints may be on another filesystem (a mount of their own)
    shutil.move(final, staging / final.name)
    for name in KEPT_WITH_STATE:
        if (folder / name).exists():
            shutil.move(folder / name, staging / name)
    (staging / RUN_FILE).write_text(json.dumps({"mlflow_run_id": mlflow_run_id, "steps": steps}))
    shutil.rmtree(target, ignore_errors=True)  # the same run finished before (dvc repro -f)
    os.replace(staging, target)
    remove_checkpoints(folder)
    runs = sorted((path for path in finished.iterdir() if not path.name.endswith(".partial")),
                  key=lambda path: path.stat().st_mtime)
    for old in runs[:-FINISHED_KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def longest_finished(finished: Path, lineage_id: str, steps: int, step_multiple: int) -> Path | None:
    """The finished run of this lineage that a run of `steps` steps continues: the longest with fewer
    steps, among those that ended on a multiple of `step_multiple` (the logging interval: a run that
    ended mid-interval logged a partial one, which a longer run would not have)."""
    candidates = []
    for path in finished.glob(f"{lineage_id}-*"):
        length = path.name.rpartition("-")[2]
        if length.isdigit() and int(length) < steps and int(length) % step_multiple == 0 \
                and (path / RUN_FILE).is_file():
            candidates.append((int(length), path))
    return max(candidates)[1] if candidates else None


def continue_finished(finished: Path, folder: Path) -> dict[str, Any]:
    """Copy a finished run's final state into the run folder `folder` (which holds no checkpoint),
    which then resumes from it; returns the finished run's record (mlflow_run_id, steps), which the
    folder keeps as the run it extends. The checkpoint is copied last: its presence means "resume"."""
    record = json.loads((finished / RUN_FILE).read_text())
    for name in KEPT_WITH_STATE:
        source, target = finished / name, folder / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        elif source.is_file():
            shutil.copy2(source, target)
    (folder / RUN_FILE).write_text(json.dumps(record))
    checkpoint = _checkpoint_path(finished, record["steps"])
    atomic_write_bytes(folder / checkpoint.name, checkpoint.read_bytes())
    return record


def extended_run(folder: Path) -> dict[str, Any] | None:
    """The record of the finished run that the run in `folder` continues, if it continues one."""
    path = folder / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None
