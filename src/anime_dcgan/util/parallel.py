"""Worker processes for the data stages: results in order, bounded memory, clean stops.

Ctrl-C reaches every process of the terminal's process group, and so does a SIGTERM sent to the group
(as a job runner stops a job). Only the main process acts on either: the workers ignore both, finish
their current task and are shut down by the main process, so a stop prints one message, not a
traceback per worker, and never leaves a worker holding a queue lock. (Workers killed by the signal
instead could leave the main process waiting forever in the executor's shutdown: seen once in ~5
runs of the SIGTERM fault test.)
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TASKS_IN_FLIGHT_PER_WORKER = 4  # keeps every worker busy while bounding the results held in memory


def default_workers() -> int:
    """The cores this process may use (containers and taskset restrict them), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows
        return os.cpu_count() or 1


def _worker_setup() -> None:
    for signum in _STOP_SIGNALS:  # also replaces the handlers a forked worker inherits from the stage
        signal.signal(signum, signal.SIG_IGN)


@contextmanager
def _stop_signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends, then deliver them to the usual handlers.

    Interrupting the pool's start (inside multiprocessing's fork handlers) loses the signal; a second
    Ctrl-C interrupting its shutdown leaves workers waiting for work forever. Both take a fraction
    of a second (the shutdown waits for the running tasks only)."""
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


def ordered_map(function: Callable[[Task], Result], tasks: Iterable[Task], workers: int) -> Iterator[Result]:
    """function(task) for every task, yielded in task order: in this process for workers <= 1, else in
    a pool of `workers` processes with at most TASKS_IN_FLIGHT_PER_WORKER tasks each in flight.

    Close the iterator (or run it to the end) to shut the pool down; an exception or an interruption
    while iterating lets the running tasks finish and cancels the rest.
    """
    if workers <= 1:
        yield from map(function, tasks)
        return
    with _stop_signals_deferred():
        pool = ProcessPoolExecutor(workers, initializer=_worker_setup)
        pool.submit(int).result()  # with fork, the first task starts every worker: now, signals held
    try:
        pending: deque[Future[Result]] = deque()
        for task in tasks:
            pending.append(pool.submit(function, task))
            if len(pending) >= workers * TASKS_IN_FLIGHT_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        with _stop_signals_deferred():
            pool.shutdown(wait=True, cancel_futures=True)
