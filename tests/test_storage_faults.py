"""Full and read-only disks under real stages: a real size-limited tmpfs mounted where the stage writes
(skipped where this machine does not allow mounting one)."""

from __future__ import annotations

import errno
import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_train import assert_same_models, client, make_workspace, run_library, start_stage

from anime_dcgan.errors import StorageError, storage_problem
from anime_dcgan.training import checkpoint as ckpt
from anime_dcgan.util.io import atomic_write_bytes

PAGE = 4096
SETTINGS = {"steps": 12, "checkpoint_every": 4, "sample_every": 4, "log_every": 2}


def pages(n_bytes: int) -> int:
    """What a file of n_bytes takes on a tmpfs (whole pages)."""
    return math.ceil(n_bytes / PAGE) * PAGE


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, int], None]]:
    """mount(folder, size) mounts a tmpfs of `size` bytes on `folder`; resize with mount(folder, new)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: int, read_only: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        if folder in mounted:
            command = ["mount", "-o", f"remount,{options}", str(folder)]
        else:
            command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
        if folder not in mounted:
            mounted.append(folder)

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def finished(root: Path) -> tuple[int, str, str]:
    process = start_stage(root)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def only_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if "error:" in line]
    return line


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if ".tmp-" in path.name]


def test_a_disk_full_during_training_stops_in_one_line_and_the_rerun_resumes_bit_identical(tmp_path, monkeypatch, tmpfs):
    # what a checkpoint and a progress grid of this run take, from a run that keeps its checkpoints
    monkeypatch.setattr(ckpt, "keep_finished", lambda *args: None)
    sizing = make_workspace(tmp_path / "sizing")
    run_library(sizing, **{**SETTINGS, "steps": 8})
    [folder] = (sizing / ".cache/checkpoints").iterdir()
    first, second = (path.stat().st_size for path in sorted(folder.glob(ckpt.CHECKPOINT_GLOB)))
    grids = sum(pages(path.stat().st_size) for path in (folder / "progress").iterdir())
    reference = make_workspace(tmp_path / "reference", **SETTINGS)
    assert finished(reference)[0] == 0

    root = make_workspace(tmp_path / "full", **SETTINGS)
    checkpoints = root / ".cache/checkpoints"
    tmpfs(checkpoints, pages(first) + grids + pages(second // 2))  # the second checkpoint does not fit
    status, out, err = finished(root)

    assert status == 1
    line = only_error_line(err)
    assert "checkpoint_000008.pt: no space left on the device" in line
    assert "free there" in line and "the write needed" in line and "free some space and rerun" in line
    assert not leftovers(checkpoints)
    assert ckpt.load_checkpoint(next(checkpoints.iterdir()))["step"] == 4
    assert not (root / "models").exists()
    [run] = client(root).search_runs(["1"])
    assert run.info.status == "FAILED"

    tmpfs(checkpoints, 64 << 20)  # space freed
    status, out, err = finished(root)
    assert status == 0, err
    assert "resuming at step 4 of 12" in out
    assert_same_models(root, reference)
    assert {r.info.status for r in client(root).search_runs(["1"])} == {"FAILED", "FINISHED"}


def test_a_disk_full_when_writing_the_models_keeps_the_final_checkpoint(tmp_path, tmpfs):
    reference = make_workspace(tmp_path / "reference", **SETTINGS)
    assert finished(reference)[0] == 0
    root = make_workspace(tmp_path / "full", **SETTINGS)
    tmpfs(root / "models", PAGE)  # smaller than any of the networks
    status, out, err = finished(root)

    assert status == 1
    assert "models/generator.pt: no space left on the device" in only_error_line(err)
    assert not leftovers(root / "models")
    assert ckpt.load_checkpoint(next((root / ".cache/checkpoints").iterdir()))["step"] == 12

    tmpfs(root / "models", 64 << 20)
    status, out, err = finished(root)
    assert status == 0, err
    assert "resuming at step 12 of 12" in out  # nothing trained twice
    assert_same_models(root, reference)


def test_a_finished_run_whose_state_cannot_be_kept_warns_and_keeps_its_models(tmp_path, tmpfs):
    root = make_workspace(tmp_path / "kept", **SETTINGS)
    tmpfs(root / ".cache" / ckpt.FINISHED_DIR, PAGE, read_only=True)
    status, out, err = finished(root)
    assert status == 0, err
    [warning] = [line for line in out.splitlines() if "WARNING" in line]
    assert warning.startswith("train: WARNING: the final state was not kept for longer runs (")
    assert "Read-only file system" in warning and "will train from step 0" in warning
    assert "Traceback" not in err
    assert (root / "models/generator_ema.pt").is_file() and (root / "metrics/train.json").is_file()
    [run] = client(root).search_runs(["1"])
    assert run.info.status == "FINISHED"
    # the run's own checkpoints stay where they were: a rerun of the same run resumes at its end
    assert ckpt.load_checkpoint(next((root / ".cache/checkpoints").iterdir()))["step"] == 12


def test_a_read_only_repository_fails_in_one_line(tmp_path, tmpfs):
    root = tmp_path / "ro"
    tmpfs(root, 16 << 20)
    make_workspace(root, **SETTINGS)
    tmpfs(root, 16 << 20, read_only=True)
    status, out, err = finished(root)
    assert status == 1
    line = only_error_line(err)
    assert "the filesystem is read-only" in line and str(root) in line
    assert "writable copy" in line


def test_a_full_disk_met_inside_a_library_is_found_in_the_exception_chain(tmp_path):
    # as torch.save or an MLflow artifact copy report it: another exception raised from the OSError
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("file write failed") from cause
    except RuntimeError as wrapped:
        line = storage_problem(wrapped, tmp_path / "model.pt", needed_bytes=3 << 20)
    assert line.startswith(f"cannot write {tmp_path / 'model.pt'}: no space left on the device")
    assert " free there; the write needed 3.0 MB" in line
    assert storage_problem(RuntimeError("unrelated")) is None


def test_the_atomic_writer_names_the_file_and_leaves_no_temporary(tmp_path, tmpfs):
    folder = tmp_path / "small"
    tmpfs(folder, PAGE)
    with pytest.raises(StorageError, match=r"big\.bin: no space left on the device.*needed 1\.0 MB"):
        atomic_write_bytes(folder / "big.bin", bytes(1 << 20))
    assert list(folder.iterdir()) == []
    shutil.rmtree(folder, ignore_errors=True)


def test_a_download_onto_a_full_disk_names_its_part_file_and_keeps_it(tmp_path, tmpfs, http_server):
    from anime_dcgan.data.http import download

    (http_server.root / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    cache = tmp_path / "cache"
    tmpfs(cache, 64 * PAGE)
    with pytest.raises(StorageError, match=r"\.part: no space left on the device.*the write needed"):
        download(http_server.url("big.bin"), cache, progress=False)
    [part] = [path for path in cache.iterdir() if path.name.endswith(".part")]
    assert part.stat().st_size > 0, "the bytes received stay for the rerun to resume from"
