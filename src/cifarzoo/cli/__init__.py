"""Command-line entry point.

Each sub-command lives in its own module under ``cifarzoo.cli`` with two functions,
``register(subparsers)`` and ``run(args) -> int``. This package only parses, calls
the library and prints: a :class:`~cifarzoo.errors.CifarzooError` becomes one line on
stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from cifarzoo import __version__
from cifarzoo.errors import CifarzooError

# Order is the order shown by --help.
COMMANDS = ["data", "models", "train", "evaluate", "predict", "doctor", "benchmark", "tune", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarzoo",
        description="Train, evaluate and compare classic CNNs on CIFAR-10.",
    )
    parser.add_argument("--version", action="version", version=f"cifarzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"cifarzoo.cli.{name}")
        module.register(sub).set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:  # Ctrl-C while the commands' modules are imported (seconds: torch) is an interruption too
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("cifarzoo: interrupted", file=sys.stderr)
        return 130
    args._argv = sys.argv[1:] if argv is None else list(argv)  # parsed again under --config FILE
    try:
        return int(args._run(args) or 0)
    except CifarzooError as exc:
        print(f"cifarzoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cifarzoo {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `cifarzoo models resnet50 | head`: the reader left; that is not an error of ours.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
