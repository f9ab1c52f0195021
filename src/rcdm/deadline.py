"""A wall-clock limit on the long loops (sampling, inversion, attacks), set by whoever serves many users.

`with time_limit(120): ...` makes every loop step inside the block (in this thread or task) call `check_deadline`,
which raises TimeLimitError once the limit has passed: the app stops a request that would hold its only queue slot
for minutes, and says why in the page. Outside such a block `check_deadline` costs one lookup and does nothing.
A context variable, not a global: concurrent requests each keep their own limit.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

from .errors import RCDMError

_DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "rcdm_deadline", default=None
)


class TimeLimitError(RCDMError):
    """The work ran past the limit of the `time_limit` block around it."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Limit the loops inside the block to `seconds` of wall-clock time (None: no limit)."""
    if seconds is None:
        yield
        return
    token = _DEADLINE.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    """Raise TimeLimitError when the enclosing `time_limit` has run out; a no-op outside one."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        raise TimeLimitError(
            f"stopped after {deadline[1]:g} s, the limit on one request: ask for fewer samples, steps or models"
        )
