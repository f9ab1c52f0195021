"""A clean stop of a training loop on SIGINT (Ctrl-C) or SIGTERM (`kill`, a scheduler's preemption notice, a
launcher handing the cores to another job): the first signal asks the loop to write a checkpoint at the end of
its step and stop; a second one, or one outside the loop, acts as it would have without this (KeyboardInterrupt,
or the process ends).

Why by hand: accelerate and torch leave signals to the program (accelerate's `set_trigger` stops at a flag set in
the program, not at a signal), and a run killed between checkpoints loses the steps since the last one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Within `with StopSignals() as stop:`, `stop.armed = True` around the loop: then `stop.received` is the first
    signal's name (None until one comes). Installed only in the main thread (Python's rule): `train` called from
    another thread stops as before."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            # a signal the process ignores (a background job's SIGINT) stays ignored
            for s in (s for s in SIGNALS if signal.getsignal(s) != signal.SIG_IGN):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.armed and self.received is None:
            self.received = signal.Signals(signum).name
            log.warning(
                "%s: writing a checkpoint at the end of this step, then stopping (send it again to stop at once)",
                self.received,
            )
            return
        previous = self._previous.get(signum)
        if callable(previous):  # Python's own SIGINT handler raises KeyboardInterrupt
            previous(signum, frame)
        else:  # the default action (or one set outside Python): end as the process would have
            self.__exit__()
            os.kill(os.getpid(), signum)
