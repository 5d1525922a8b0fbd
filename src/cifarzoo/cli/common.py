"""Arguments and helpers shared by several sub-commands (not a sub-command itself)."""
from __future__ import annotations

import argparse
import sys
import warnings

DATA_HELP = (
    "where the data comes from: 'sample' (6,000 real CIFAR-10 images bundled with cifarzoo, works "
    "offline); 'cifar100' (CIFAR-100 in the default folder, downloaded if absent); a path to "
    "cifar-10-python.tar.gz or cifar-100-python.tar.gz; a folder that is or holds "
    "cifar-10-batches-py/ or cifar-100-python/; or an image folder with train/<class>/*.png|jpg "
    "and test/<class>/*. "
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


def add_labels_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--labels fine|coarse`` (CIFAR-100's 100 classes or 20 superclasses; default fine)."""
    parser.add_argument("--labels", choices=("fine", "coarse"), default="fine",
                        help="CIFAR-100's labelling: fine (100 classes) or coarse (20 superclasses); "
                             "other sources have one set of labels (default fine)")


def load_dataset(spec: str | None, command: str, labels: str = "fine"):
    """``cifarzoo.data.load(spec, labels=labels)``, printing its warnings as one stderr line each.

    ``command`` names the sub-command in the prefix (``cifarzoo train: warning: ...``).
    DataError propagates for the CLI's usual one-line error.
    """
    from cifarzoo.data import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        dataset = load(spec, labels=labels)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"cifarzoo {command}: warning: {w.message}", file=sys.stderr)
        else:  # not ours to reformat: hand back to the normal machinery
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return dataset
