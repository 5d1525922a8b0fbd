"""Callbacks: code of the user's that ``fit`` calls at the run's start, each epoch, each step and the end.

    class Callback:
        on_start(info)                  info: the run's config.json (config, run_dir, data, device, ...)
        on_epoch_start(epoch, steps)    1-based epoch, steps in it
        on_step(epoch, step, steps, global_step)
        on_epoch_end(row)               the metrics.csv row, plus "eval_split": "val" | "test"
        on_end(summary)                 the summary.json content ("status": "finished" | "stopped")

A callback asks the run to stop by raising :class:`StopTraining` (the reason as its message)
from ``on_epoch_end``; from another hook the run stops once the current epoch is recorded.
A stopped run still does its final evaluation and writes its checkpoint and summary, with
``status: "stopped"`` and ``stop_reason``. Any other exception from a callback propagates
after the run keeps its progress as after Ctrl-C (a resumable checkpoint).

Callbacks only read: they are called between steps, on rank 0 only under torchrun (a stop
request is shared with the other ranks), and never change the numbers of a run they do
not stop. A callback with ``state_dict()`` / ``load_state_dict(state)`` (plain numbers and
strings) has its state saved in the checkpoint, so that a resumed run continues it exactly
(:class:`EarlyStopping` does).
"""
from __future__ import annotations

import math

from cifarzoo.errors import CifarzooError

MONITORS = {"val_acc": ("eval_acc", +1), "val_loss": ("eval_loss", -1)}  # the row's column, +1: higher is better


class Callback:
    """Does nothing; subclass it and override the hooks you need (see the module doc)."""

    def on_start(self, info: dict) -> None: ...
    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def on_step(self, epoch: int, step: int, steps: int, global_step: int) -> None: ...
    def on_epoch_end(self, row: dict) -> None: ...
    def on_end(self, summary: dict) -> None: ...


class StopTraining(Exception):
    """Raised by a callback to end the run after this epoch; the message is the summary's ``stop_reason``."""


class EarlyStopping(Callback):
    """Stop when ``monitor`` ("val_acc" or "val_loss") has not improved by more than ``min_delta``
    for ``patience`` evaluated epochs in a row. Only on a validation split (``val_split``): the test
    set is never used to choose when to stop."""

    needs_validation = True

    def __init__(self, monitor: str = "val_acc", patience: int = 5, min_delta: float = 0.0):
        if monitor not in MONITORS:
            raise CifarzooError(f"EarlyStopping(monitor={monitor!r}): expected one of {', '.join(MONITORS)}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise CifarzooError(f"EarlyStopping(patience={patience!r}): expected an integer >= 1 (evaluated epochs)")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (
                math.isfinite(min_delta) and min_delta >= 0):
            raise CifarzooError(f"EarlyStopping(min_delta={min_delta!r}): expected a finite number >= 0")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.best, self.best_epoch, self.wait = None, None, 0

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta})"

    def on_epoch_end(self, row: dict) -> None:
        column, sign = MONITORS[self.monitor]
        value = row[column]
        if math.isnan(value):  # not evaluated this epoch (eval_every): not counted
            return
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.wait = value, int(row["epoch"]), 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            raise StopTraining(f"early stopping: {self.monitor} did not improve by more than {self.min_delta:g} "
                               f"in {self.patience} evaluated epochs (best {self.best:.4f} at epoch "
                               f"{self.best_epoch})")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], int(state["wait"])


class Callbacks:
    """The callbacks of one run, called in order. Records a stop request (``stop_reason``) and the
    exception a callback raised (``error``: ``fit`` keeps the run's progress before it propagates).

    ``legacy``: the ``reporter=`` of before callbacks, kept for one release as it was: its
    exceptions propagate without a save, as a crash does.
    """

    HOOKS = ("on_start", "on_epoch_start", "on_step", "on_epoch_end", "on_end")

    def __init__(self, callbacks=(), legacy: Callback | None = None):
        self.callbacks = list(callbacks)
        self.legacy = legacy
        self.stop_reason: str | None = None
        self.error: BaseException | None = None

    def __iter__(self):
        return iter(self.callbacks + ([self.legacy] if self.legacy is not None else []))

    def _call(self, hook: str, *args) -> None:
        for cb in self:
            try:
                getattr(cb, hook)(*args)
            except StopTraining as exc:
                self.stop_reason = self.stop_reason or str(exc) or type(cb).__name__
            except Exception as exc:
                if cb is not self.legacy:
                    self.error = exc
                raise

    def on_start(self, info: dict) -> None:
        self._call("on_start", info)

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self._call("on_epoch_start", epoch, steps)

    def on_step(self, epoch: int, step: int, steps: int, global_step: int) -> None:
        self._call("on_step", epoch, step, steps, global_step)

    def on_epoch_end(self, row: dict) -> None:
        self._call("on_epoch_end", row)

    def on_end(self, summary: dict) -> None:
        self._call("on_end", summary)

    def state_dict(self) -> dict:
        """``{"<position>:<class name>": state}`` of the callbacks that have a state."""
        return {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)
                if callable(getattr(cb, "state_dict", None))}

    def load_state_dict(self, states: dict) -> None:
        for i, cb in enumerate(self.callbacks):
            state = states.get(f"{i}:{type(cb).__name__}")
            if state is not None and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(state)


def check_callbacks(callbacks, eval_split: str) -> list:
    """``callbacks`` as a list; one line for something that is not a callback, or a callback that selects
    on the evaluation split when that is the test set."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    for cb in callbacks:
        missing = [h for h in Callbacks.HOOKS if not callable(getattr(cb, h, None))]
        if missing:
            raise CifarzooError(f"callbacks: {cb!r} is not a callback (no {', '.join(missing)}); "
                                "subclass cifarzoo.Callback")
        if getattr(cb, "needs_validation", False) and eval_split != "val":
            raise CifarzooError(f"callbacks: {cb!r} selects on the evaluation split, which is the test set here; "
                                "give val_split (--val-split): the test set is never used for selection")
    return list(callbacks)
