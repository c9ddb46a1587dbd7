"""Machine-wide device leases (anime_dcgan/leases.py) between real processes, on the CPU: three
pretended GPUs (ANIME_DCGAN_GPU_COUNT) and CPU slots in a temporary lease folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anime_dcgan import leases
from anime_dcgan.errors import PipelineError
from anime_dcgan.leases import GPU_COUNT_ENV, LEASE_DIR_ENV, cpu_share, gpu_lease, visible_gpus

SRC = Path(__file__).resolve().parents[1] / "src"
DEADLINE_S = 8

# holds a lease until its stdin closes; prints the ids and the CUDA_VISIBLE_DEVICES it sees inside
GPU_HOLDER = """
import os, sys
from anime_dcgan.leases import gpu_lease
with gpu_lease(int(sys.argv[1]), poll_s=0.05) as ids:
    print("holding", ",".join(ids), os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
    sys.stdin.read()
"""
CPU_HOLDER = """
import sys
from anime_dcgan.leases import cpu_share
with cpu_share(cores=int(sys.argv[1])):
    print("holding", flush=True)
    sys.stdin.read()
"""


class Holder:
    """A process running `script` with its output in a file, so the test reads it without blocking."""

    def __init__(self, script: str, argument: int, lease_dir: Path, log: Path):
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(SRC), LEASE_DIR_ENV: str(lease_dir), GPU_COUNT_ENV: "3"}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, "-c", script, str(argument)], stdin=subprocess.PIPE,
                                            stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + DEADLINE_S
        while text not in self.output():
            assert self.process.poll() is None, f"holder exited {self.process.returncode}: {self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} within {DEADLINE_S} s: {self.output()!r}"
            time.sleep(0.02)
        return self.output()

    def leased(self) -> list[str]:
        """The ids leased (once it has them), checked against the CUDA_VISIBLE_DEVICES it saw inside."""
        line = next(line for line in self.wait_for("holding").splitlines() if line.startswith("holding "))
        _, ids, visible = line.split()
        assert visible == ids
        return ids.split(",")

    def release(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=DEADLINE_S) == 0, self.output()

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start(tmp_path: Path):
    """start(script, argument) -> a running Holder sharing tmp_path's lease folder; all are stopped after."""
    started: list[Holder] = []

    def start_holder(script: str, argument: int) -> Holder:
        started.append(Holder(script, argument, tmp_path / "leases", tmp_path / f"holder-{len(started)}.log"))
        return started[-1]

    yield start_holder
    for holder in started:
        holder.stop()


@pytest.fixture
def three_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GPU_COUNT_ENV, "3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_three_gpus_four_stages_the_fourth_waits_and_takes_a_freed_or_killed_holders_gpu(start):
    holders = [start(GPU_HOLDER, 1) for _ in range(3)]
    leased = [holder.leased()[0] for holder in holders]
    assert sorted(leased) == ["0", "1", "2"]

    fourth = start(GPU_HOLDER, 1)
    for holder in holders:  # named with each busy GPU's holder
        fourth.wait_for(f"pid {holder.pid} ")
    waiting = [line for line in fourth.output().splitlines() if line.startswith("waiting")]
    assert waiting[0].startswith("waiting for 1 free GPU of 0, 1, 2: busy 0 (pid")
    assert all(f"{gpu} (pid" in waiting[-1] for gpu in leased)

    holders[0].kill()  # SIGKILL: the kernel releases its lock
    assert fourth.leased() == [leased[0]]

    fifth = start(GPU_HOLDER, 1)
    fifth.wait_for("waiting for 1 free GPU")
    holders[1].release()
    assert fifth.leased() == [leased[1]]


def test_a_lease_is_all_or_none(start):
    first, second = start(GPU_HOLDER, 2), start(GPU_HOLDER, 2)  # each wants 2 of 3, at once
    deadline = time.monotonic() + DEADLINE_S
    while not any("holding" in holder.output() for holder in (first, second)):
        assert time.monotonic() < deadline, (first.output(), second.output())
        time.sleep(0.02)
    holding, waiting = (first, second) if "holding" in first.output() else (second, first)
    held = holding.leased()
    waiting.wait_for("waiting for 2 free GPUs")
    # the waiter holds no part of a lease: the third GPU is free for a stage wanting one
    single = start(GPU_HOLDER, 1)
    [free_gpu] = single.leased()
    assert free_gpu not in held
    assert "holding" not in waiting.output()

    holding.release()
    assert sorted(waiting.leased()) == held


def test_cuda_visible_devices_limits_the_lease_and_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(GPU_COUNT_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert visible_gpus() == ["5", "7"]
    with gpu_lease(1, tmp_path) as ids:
        assert ids == ["5"] and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    with gpu_lease(2, tmp_path) as ids:
        assert ids == ["5", "7"] and os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu-5.lock", "gpu-7.lock"]

    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: no GPU
    assert visible_gpus() == []


def test_a_lease_unsets_cuda_visible_devices_after_when_it_was_unset(tmp_path: Path, three_gpus):
    with gpu_lease(2, tmp_path) as ids:
        assert ids == ["0", "1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_more_gpus_than_visible_is_one_clear_line(tmp_path: Path, three_gpus, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(PipelineError, match="4 GPUs requested but 3 visible") as raised, gpu_lease(4, tmp_path):
        pass
    assert "\n" not in str(raised.value)

    monkeypatch.delenv(GPU_COUNT_ENV)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    limited = r"3 GPUs requested but 2 visible .*CUDA_VISIBLE_DEVICES='5,7' limits"
    with pytest.raises(PipelineError, match=limited), gpu_lease(3, tmp_path):
        pass


def test_the_default_lease_folder_is_shared_by_every_user(tmp_path: Path, three_gpus, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(LEASE_DIR_ENV, raising=False)
    monkeypatch.setattr(leases, "DEFAULT_LEASE_DIR", tmp_path / "shared")
    umask = os.umask(0o022)
    try:
        with gpu_lease(1):
            pass
    finally:
        os.umask(umask)
    assert (tmp_path / "shared").stat().st_mode & 0o7777 == 0o1777  # sticky and world-writable, as /tmp
    assert (tmp_path / "shared/gpu-0.lock").stat().st_mode & 0o777 == 0o666


def wait_for_threads(share, expected: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while share.threads() != expected:
        assert time.monotonic() < deadline, f"share {share.threads()}, expected {expected}"
        time.sleep(0.02)


def test_cpu_share_halves_with_a_second_stage_and_comes_back_when_it_exits_or_is_killed(tmp_path: Path, start):
    with cpu_share(tmp_path / "leases", cores=2) as share:
        assert share.threads() == 2
        other = start(CPU_HOLDER, 2)
        other.wait_for("holding")
        assert share.threads() == 1
        other.release()
        wait_for_threads(share, 2)

        other = start(CPU_HOLDER, 2)
        other.wait_for("holding")
        assert share.threads() == 1
        other.kill()
        wait_for_threads(share, 2)


def test_cpu_share_never_waits_and_an_extra_holder_claims_a_slot_once_one_frees(tmp_path: Path, start):
    with cpu_share(tmp_path / "leases", cores=2) as first:
        other = start(CPU_HOLDER, 2)
        other.wait_for("holding")
        with cpu_share(tmp_path / "leases", cores=2) as extra:  # both slots held: it runs, counting itself
            assert extra.holders() == 3 and extra.threads() == 1
            assert first.holders() == 2  # its peers cannot see it without a slot
            other.release()
            assert extra.holders() == 2  # it took the freed slot
            assert first.holders() == 2 and first.threads() == 1


def test_apply_sets_torch_threads_only_when_the_share_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    with cpu_share(tmp_path, cores=4) as share:
        assert share.apply() == 4 and share.apply() == 4
        with cpu_share(tmp_path, cores=4):
            assert share.apply() == 2
        assert share.apply() == 4
    assert calls == [4, 2, 4]
