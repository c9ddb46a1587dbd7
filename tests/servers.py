"""Processes for end-to-end tests: free ports, commands started in their own process group, waits,
and stopping a whole process group by its own id (never by name).

A command started with `start_in_session` leads a new session, so it and every process it starts
(a stage script, `mlflow ui`'s uvicorn workers and job runners...) share its process group: one
`os.killpg` reaches them all, as Ctrl-C in a terminal or a service manager's stop would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it; it stays closed after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(path: Path, n_chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-n_chars:] if path.is_file() else f"({path} was not written)"


def start_in_session(command: Sequence[str], cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start `command` as the leader of a new session and process group, stdout and stderr to
    `log_path` (a file, not a pipe: a chatty process never blocks on a full pipe)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def group_members(process: subprocess.Popen) -> list[psutil.Process]:
    """The live processes of the group that `process` leads, found by their group id: also those whose
    parent died first (a stage script still cleaning up after dvc was killed)."""
    members = []
    for candidate in psutil.process_iter():
        try:
            if os.getpgid(candidate.pid) == process.pid:
                members.append(candidate)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str,
               process: subprocess.Popen | None = None, log_path: Path | None = None,
               poll_s: float = 0.01) -> None:
    """Poll `condition`; fail naming `what` on timeout, or at once when `process` has exited."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before {what}:\n"
                                 f"{log_tail(log_path) if log_path else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}:\n"
                                 f"{log_tail(log_path) if log_path else ''}")
        time.sleep(poll_s)


def wait_for_http(url: str, timeout_s: float, process: subprocess.Popen, log_path: Path) -> None:
    """Wait until GET `url` answers 200 (e.g. a server's /health)."""
    def answers() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(answers, timeout_s, f"{url} to answer", process, log_path, poll_s=0.25)


def signal_group(process: subprocess.Popen, signum: int) -> list[psutil.Process]:
    """Send `signum` to the process group that `process` leads; returns the group's processes as they
    were just before, so the caller can wait for each of them."""
    members = group_members(process)
    os.killpg(process.pid, signum)
    return members


def stop_group(process: subprocess.Popen, timeout_s: float = 30) -> list[psutil.Process]:
    """SIGTERM the group `process` leads and wait for all its processes; whatever is still alive after
    `timeout_s` is SIGKILLed and returned (an empty list: everything stopped on SIGTERM)."""
    try:
        members = signal_group(process, signal.SIGTERM)
    except ProcessLookupError:  # the whole group has exited already
        members = []
    _, alive = psutil.wait_procs(members, timeout=timeout_s)
    for leftover in alive:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    process.wait(timeout=10)
    return alive


@contextmanager
def stopped_on_failure(process: subprocess.Popen, timeout_s: float = 5) -> Iterator[subprocess.Popen]:
    """Stop `process`'s group when the block fails, so a failing test leaves no background job
    running (a block that ends normally has waited for the process itself)."""
    try:
        yield process
    except BaseException:
        stop_group(process, timeout_s)
        raise
