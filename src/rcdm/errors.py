"""Errors raised for user mistakes: the CLI turns them into one line and exit code 2."""

import errno
import signal

# The errno values of a full disk or an exhausted quota: a DiskFullError, not a bug.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class RCDMError(ValueError):
    """A bad input from the user (a path, a spec, a shape). The message names the value and the fix."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept on disk."""


class DiskFullError(RCDMError):
    """A write failed for lack of disk space; the message names the folder and what was kept intact."""


def first_line(e: BaseException) -> str:
    """An exception as one line: its first non-empty line, else its type name."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


class TrainingInterrupted(Exception):
    """Training stopped on a signal (Ctrl-C, SIGTERM) after writing a checkpoint; `resume` goes on from it. The CLI
    prints the message and exits 128 + the signal's number, as a process killed by it would."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @classmethod
    def at(cls, signal_name: str, where: str) -> "TrainingInterrupted":
        """'SIGTERM: stopped at the checkpoint of WHERE; resuming (--resume) goes on from it'."""
        return cls(
            f"{signal_name}: stopped at the checkpoint of {where}; resuming (--resume) goes on from it",
            signal.Signals[signal_name].value,
        )
