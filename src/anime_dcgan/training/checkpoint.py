"""Resumable training state: one folder per run identity, written atomically.

The identity is a hash of the training parameters, the exact training data and every source file
of the training package (this folder: the networks, the step, the loop, the CPU kernels...), so rerunning a killed stage resumes its own checkpoint while an experiment with any other setting,
data or code never starts from it ("resume this run" is never "start from these weights").
Checkpoints live outside DVC's outputs (which DVC deletes before rerunning a stage) under
`<repo root>/.cache/checkpoints/<identity>/` and are removed once the run has finished.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anime_dcgan.util.io import atomic_torch_save, file_sha256

CHECKPOINT_FILE = "checkpoint.pt"
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


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    atomic_torch_save({**state, "rng": capture_rng_state()}, folder / CHECKPOINT_FILE)


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none. RNG states are restored by the caller."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    # not weights_only: the state holds Python/NumPy RNG states; the file is our own, never downloaded
    return torch.load(path, map_location="cpu", weights_only=False)


def remove_checkpoints(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
