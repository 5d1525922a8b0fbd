"""Ctrl-C between two steps: a SIGINT that arrives during a step is held until the step is done."""
from __future__ import annotations

import signal
import threading

from cifarzoo.train import distributed as dist_mod


class DeferredInterrupt:
    """Holds a first Ctrl-C (SIGINT) until the step in progress has completed (``check`` raises it
    then); a second one interrupts at once. Only in the main thread with Python's own handler in place."""

    def __init__(self):
        self.pending = False
        self.previous = None

    def __enter__(self) -> "DeferredInterrupt":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def check(self, step: int = 0, steps: int = 1) -> None:
        """Raise a pending Ctrl-C after 0-based ``step`` of ``steps``; under torchrun only where every
        rank agrees to (:func:`distributed.agree_to_stop`), so all ranks stop after the same step."""
        if dist_mod.agree_to_stop(self.pending, step, steps):
            self.pending = False
            raise KeyboardInterrupt

    def __exit__(self, exc_type, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.pending and exc_type is None:  # arrived after the last step's check
            raise KeyboardInterrupt
