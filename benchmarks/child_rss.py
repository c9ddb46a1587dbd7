"""Run a benchmark child process while sampling the peak resident memory of its process tree."""

from __future__ import annotations

import subprocess
import threading
import time

import psutil

SAMPLE_INTERVAL_S = 0.02


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and its descendants (processes that vanish count 0; forked
    children's shared pages count once per process)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_sampling_rss(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str, int]:
    """(return code, stdout, peak tree RSS in bytes); Ctrl-C or SIGTERM here stops the child too."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    process = psutil.Process(child.pid)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(process))
            except psutil.NoSuchProcess:
                return
            time.sleep(SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, _ = child.communicate()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        done.set()
        sampler.join()
    return child.returncode, stdout, peak
