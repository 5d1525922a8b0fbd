"""A study run trained in a process of its own: ``python -m cifarzoo.study.worker FD``.

:class:`cifarzoo.study.executors.LocalExecutor` with ``jobs > 1`` starts one of these per
run, in a session of its own (a Ctrl-C at the terminal reaches only the study's process,
which passes one on to each worker, so that each saves a resumable checkpoint once), with
its share of the CPU in ``OMP_NUM_THREADS`` (which ``fit`` reads as torchrun's and Ray's
workers). ``FD`` is the worker's end of a connection to the study's process: it receives
``(spec, action, dataset)`` and sends back events, each ``(kind, payload)``:

- ``("epoch", row)`` after every epoch (the row of metrics.csv);
- ``("done", (status, summary, seconds))`` when the run finished or failed (``train_one``
  records failures in the run's summary.json);
- ``("interrupted", None)`` after a Ctrl-C (a resumable checkpoint was saved);
- ``("error", message)`` when the run could not be trained at all (e.g. its folder is busy).

While it trains it may receive ``("threads", n)``: train on ``n`` torch threads from the next
step on (the study's last runs take up the cores that the finished ones left idle).

A worker whose study process has gone away stops at the end of the epoch, as after a Ctrl-C.
A fresh interpreter rather than a ``multiprocessing`` child: nothing of the caller's
``__main__`` is imported again, so a script without ``if __name__ == "__main__":`` works.
"""
from __future__ import annotations

import sys
import time
from multiprocessing.connection import Connection

from cifarzoo.train.loop import Reporter


class _EpochEvents(Reporter):
    """Sends each epoch's row to the study's process; stops the run if that process is gone."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def on_step(self, epoch: int, step: int, steps: int, global_step: int) -> None:
        # Here, in the training thread: OpenMP's thread count is a setting of the thread that calls it.
        try:
            while self.conn.poll():
                kind, value = self.conn.recv()
                if kind == "threads":
                    import torch

                    torch.set_num_threads(int(value))
        except (EOFError, OSError):  # the study's process has gone: on_epoch_end stops the run
            pass

    def on_epoch_end(self, row: dict) -> None:
        try:
            self.conn.send(("epoch", row))
        except OSError:  # the study's process has gone: save and stop, as after Ctrl-C
            raise KeyboardInterrupt from None


def serve(conn: Connection) -> None:
    """Receive one run, train it, send the events of the module doc."""
    from cifarzoo.study.training import train_one

    spec, action, dataset = conn.recv()
    t0 = time.perf_counter()
    try:
        status, summary = train_one(spec, dataset, action=action, reporter=_EpochEvents(conn))
    except KeyboardInterrupt:
        event = ("interrupted", None)
    except Exception as exc:  # train_one records training failures itself; this is anything else
        event = ("error", f"{type(exc).__name__}: {exc}")
    else:
        event = ("done", (status, summary, time.perf_counter() - t0))
    try:
        conn.send(event)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    serve(Connection(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
