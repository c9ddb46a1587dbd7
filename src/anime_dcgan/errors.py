"""The errors a user can cause or fix, shared by every layer of the library."""

import signal


class PipelineError(Exception):
    """A problem the user can fix (bad input data, bad parameters, an unreachable server...):
    the stage prints the message, which says what is wrong and what to do, and exits with status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: runs end KILLED and temporary files are removed."""

    def __init__(self, signum: int):
        super().__init__(f"received signal {signal.Signals(signum).name}")
        self.signum = signum
