"""Test-only runner for tests/test_interrupt.py: `cifarzoo ARGS...` in this process, sent a real
SIGINT (as Ctrl-C in a terminal would) at one named point of its work.

    python tests/sigint_at.py POINT N cifarzoo ARGS...

POINT   ``call:MODULE:ATTR``  at the start of the Nth call of ``MODULE.ATTR``
                              (e.g. ``cifarzoo.train.loop:predict_logits``, an epoch's evaluation)
        ``write:NAME``        in the Nth atomic write of a file named NAME, once its bytes are
                              written and before it is renamed into place (at its fsync)

The words after N are a command line as printed by cifarzoo (its first word, ``cifarzoo``, is dropped).
"""
from __future__ import annotations

import importlib
import os
import signal
import sys


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def at_call(target: str, n: int) -> None:
    module, attr = target.split(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real, calls = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            ctrl_c()
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def at_write(name: str, n: int) -> None:
    real, calls = os.fsync, [0]

    def fsync(fd):
        real(fd)
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            calls[0] += 1
            if calls[0] == n:
                ctrl_c()

    os.fsync = fsync


if __name__ == "__main__":
    point, n, command = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    assert command[0] == "cifarzoo", command
    kind, target = point.split(":", 1)
    {"call": at_call, "write": at_write}[kind](target, n)
    from cifarzoo.cli import main

    sys.exit(main(command[1:]))
