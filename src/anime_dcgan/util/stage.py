"""What every DVC stage script shares: Ctrl-C, SIGTERM and SIGHUP handled, and the errors a user can fix
(a PipelineError, a full or read-only disk) printed as one clear message rather than a traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from anime_dcgan.errors import PipelineError, Terminated, storage_problem


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated(signum)


def run_stage(name: str, main: Callable[[], None]) -> None:
    # SIGHUP (the terminal or SSH session closed) ends a stage as SIGTERM does
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_terminated)
    try:
        main()
    except KeyboardInterrupt as exc:
        reason = str(exc) or "interrupted"
        print(f"{name}: {reason}; stopped, no partial output was left behind", file=sys.stderr)
        sys.exit(128 + exc.signum if isinstance(exc, Terminated) else 130)
    except PipelineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        problem = storage_problem(exc)  # a full disk met outside the atomic writers (a library's own write)
        if problem is None:
            raise
        print(f"{name}: error: {problem}", file=sys.stderr)
        sys.exit(1)
