"""The errors a user can cause or fix, shared by every layer of the library."""


class PipelineError(Exception):
    """A problem the user can fix (bad input data, bad parameters, an unreachable server...):
    the stage prints the message, which says what is wrong and what to do, and exits with status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: runs end KILLED and temporary files are removed."""
