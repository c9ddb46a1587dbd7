"""What every DVC stage script shares: Ctrl-C and SIGTERM handled, and the errors a user can fix
printed as one clear message rather than a traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from anime_dcgan.errors import PipelineError, Terminated


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def run_stage(name: str, main: Callable[[], None]) -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main()
    except KeyboardInterrupt as exc:
        reason = str(exc) or "interrupted"
        print(f"{name}: {reason}; stopped, no partial output was left behind", file=sys.stderr)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except PipelineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
