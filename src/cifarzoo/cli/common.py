"""Arguments and helpers shared by several sub-commands (not a sub-command itself)."""
from __future__ import annotations

import argparse
import sys
import warnings

DATA_HELP = (
    "where CIFAR-10 comes from: 'sample' (6,000 real images bundled with cifarzoo, works "
    "offline); a path to cifar-10-python.tar.gz; a folder that is or holds cifar-10-batches-py/; "
    "or an image folder with train/<class>/*.png|jpg and test/<class>/*. "
)
DATA_DEFAULT_HELP = (
    "$CIFARZOO_DATA, else ~/.cache/cifarzoo, where the official archive is "
    "downloaded (163 MB, md5-checked) if it is not there yet"
)


def add_data_argument(parser: argparse.ArgumentParser, *, default_help: str | None = None) -> None:
    """Add the ``--data SPEC`` option every data-reading command uses (default None).

    ``default_help`` describes what happens without ``--data`` when a command differs
    from the usual default source (e.g. evaluate: "the data source the run was trained on").
    """
    parser.add_argument("--data", metavar="SPEC", default=None,
                        help=DATA_HELP + f"Default: {default_help or DATA_DEFAULT_HELP}")


def load_dataset(spec: str | None, command: str):
    """``cifarzoo.data.load(spec)``, printing its warnings as one stderr line each.

    ``command`` names the sub-command in the prefix (``cifarzoo train: warning: ...``).
    DataError propagates for the CLI's usual one-line error.
    """
    from cifarzoo.data import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        dataset = load(spec)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"cifarzoo {command}: warning: {w.message}", file=sys.stderr)
        else:  # not ours to reformat: hand back to the normal machinery
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return dataset
