"""Errors raised for user mistakes: the CLI turns them into one line and exit code 2."""


class RCDMError(ValueError):
    """A bad input from the user (a path, a spec, a shape). The message names the value and the fix."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept on disk."""


class DiskFullError(RCDMError):
    """A write failed for lack of disk space; the message names the folder and what was kept intact."""
