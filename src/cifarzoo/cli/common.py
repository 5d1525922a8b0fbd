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


def add_labels_argument(parser: argparse.ArgumentParser, *, default_help: str = "fine") -> None:
    """Add ``--labels fine|coarse`` (CIFAR-100's 100 classes or 20 superclasses; default None).

    None leaves the choice to the command: "fine" where data is loaded afresh, the run's
    own labelling where a run's data is reloaded (``default_help`` says which).
    """
    from cifarzoo.data.sources import LABELS

    parser.add_argument("--labels", choices=LABELS, default=None,
                        help="CIFAR-100's labelling: fine (100 classes) or coarse (20 superclasses); "
                             f"other sources have one set of labels (default {default_help})")


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--log tensorboard,mlflow`` and ``--mlflow-uri URI`` (see cifarzoo.tracking; default None)."""
    parser.add_argument("--log", metavar="LIST",
                        help="experiment tracking, a comma list: tensorboard (event files in RUN_DIR/tensorboard; "
                             "needs cifarzoo[tensorboard]), mlflow (params, metrics per epoch, the run folder as "
                             "artifacts; needs cifarzoo[mlflow])")
    parser.add_argument("--mlflow-uri", metavar="URI",
                        help="with --log mlflow: the tracking server or store (default: $MLFLOW_TRACKING_URI, "
                             "else MLflow's own default, ./mlflow.db with artifacts in ./mlruns)")


def load_dataset(spec: str | None, command: str, labels: str | None = "fine"):
    """``cifarzoo.data.load(spec, labels=labels)`` (None: "fine"), printing its warnings as one stderr line each.

    ``command`` names the sub-command in the prefix (``cifarzoo train: warning: ...``).
    DataError propagates for the CLI's usual one-line error.
    """
    from cifarzoo.data import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        dataset = load(spec, labels=labels or "fine")
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"cifarzoo {command}: warning: {w.message}", file=sys.stderr)
        else:  # not ours to reformat: hand back to the normal machinery
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return dataset


# --------------------------------------------------------------------------- TrainConfig as options
# Every TrainConfig field is a `--field-name` option of `cifarzoo train`, made from the field's metadata
# (help, --help group, choices; train/config.py's `setting`) and type annotation, except these:
NOT_OPTIONS = ("model", "model_kwargs", "data", "labels")  # the positional MODEL; builder kwargs (recipes);
# --data and --labels (add_data_argument, add_labels_argument: the same options as the other commands')


def config_option_fields() -> tuple[str, ...]:
    import dataclasses

    from cifarzoo.train.config import TrainConfig

    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_OPTIONS)


def add_config_options(parser: argparse.ArgumentParser,
                       fields: tuple[str, ...] | None = None) -> dict[str, argparse._ArgumentGroup]:
    """Add ``--field-name`` for each TrainConfig field (default None: the recipe's value), each in its --help
    group; returns the groups by title (config.GROUPS, in that order) for a command's own options."""
    import dataclasses
    import typing

    from cifarzoo.train.config import GROUPS, TrainConfig

    groups = {title: parser.add_argument_group(title) for title in GROUPS}
    hints = typing.get_type_hints(TrainConfig)
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in fields or config_option_fields():
        meta, flag, kind = by_name[name].metadata, "--" + name.replace("_", "-"), hints[name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # int | None -> int
        # a field not yet described with setting() still gets its option (tests/test_config.py names it)
        group, help_text = groups.get(meta.get("group"), parser), (meta.get("help") or "").replace("%", "%%")
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif name == "val_split":
            group.add_argument(flag, type=_count_or_fraction, default=None, metavar="N|FRACTION", help=help_text)
        elif name == "early_stopping":
            group.add_argument(flag, type=int, default=None, metavar="PATIENCE", help=help_text)
        else:  # choices are matched case-insensitively, as model names are
            group.add_argument(flag, type=str.lower if meta.get("choices") else base, choices=meta.get("choices"),
                               default=None, help=help_text)
    return groups


def _count_or_fraction(text: str) -> int | float:
    """``--val-split``: an image count ("5000") or a fraction of the training images ("0.1")."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected an image count or a fraction in (0, 1), got {text!r}")


def config_overrides(args: argparse.Namespace, fields: tuple[str, ...] | None = None) -> dict:
    """The TrainConfig fields given on the command line (None: not given), plus ``data`` and ``labels``."""
    return {name: getattr(args, name, None) for name in ("data", "labels", *(fields or config_option_fields()))}


# --------------------------------------------------------------------------- --config FILE
CONFIG_HELP = ("settings file, JSON or TOML (*.toml): keys are this command's options without -- and with _ "
               "for - (see README, 'Settings files'); options given here win over the file")


def with_config_file(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``args`` parsed again with ``--config FILE``'s settings as ``parser``'s defaults (the command line wins).

    ``parser`` is the sub-command's own; ``args._argv`` the command line (main keeps it). Each value is
    checked as its option would check it (type, choices), so that a bad one is named with the file.
    """
    from cifarzoo.config_file import check_names, read_settings
    from cifarzoo.errors import CifarzooError

    if getattr(args, "config", None) is None:
        return args
    settings = read_settings(args.config)
    actions = {a.dest: a for a in parser._actions
               if a.dest not in ("help", "config") and a.default != argparse.SUPPRESS}
    check_names(args.config, settings, actions)
    for name, value in settings.items():
        if name == "models" and isinstance(value, list) and all(isinstance(m, str) for m in value):
            settings[name] = value = ",".join(value)  # a TOML/JSON list is the comma list
        problem = _option_value_problem(actions[name], value)
        if problem:
            raise CifarzooError(f"{args.config}: invalid {name} {value!r}: expected {problem}")
    parser.set_defaults(**settings)
    again = parser.parse_args(args._argv[1:])  # argv[0] is the command's name: the top level has no options
    again._argv = args._argv
    return again


def _option_value_problem(action: argparse.Action, value) -> str | None:
    """What ``action``'s option expects, unless ``value`` (from a settings file) is such a value."""
    if action.nargs == 0:  # a flag
        return None if isinstance(value, bool) else "true or false"
    if action.type in (int, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (action.type is int and not isinstance(value, int)):
            return "an integer" if action.type is int else "a number"
    elif not isinstance(value, str):
        return "a string"
    if action.choices is not None and value not in action.choices:
        return " | ".join(map(str, action.choices))
    return None
