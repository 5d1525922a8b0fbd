"""The search space of a tuning: which settings vary, and their priors.

A space is a dict ``{setting: {kind: bounds}}`` with one kind per setting::

    {"lr": {"log_uniform": [0.01, 0.5]},      # log-uniform between two positive numbers
     "label_smoothing": {"uniform": [0, 0.2]},  # uniform between two numbers
     "epochs": {"int": [4, 12]},               # an integer, both ends included
     "batch_size": {"choice": [64, 128, 256]}} # one of the listed values

``--space FILE`` (JSON or TOML) holds such entries; each replaces the default prior of its setting and
adds the setting to the search (any TrainConfig number or option may be searched this way).
The default priors are centred on the settings the search starts from (model recipe < preset < flags):

=================  ==========================================================================
lr                 log-uniform over [lr/5, lr*5], at the starting batch size (see batch_size)
weight_decay       log-uniform over [1e-5, 1e-2] (wide: the recipes use 5e-4 to 1.3e-3)
label_smoothing    uniform over [0, 0.3]
warmup_epochs      uniform over [0, 30% of the epochs], or to the starting warm-up where that is longer
batch_size         half, the same or twice the starting batch (at most the training images); the lr
                   drawn is scaled with it linearly (Goyal et al. 2017), so it is the lr per starting batch
width_mult         half, the same or twice the starting width (at most 2)
epochs             an integer in [epochs/2, 2*epochs]; every trial is also stopped at its time cap
=================  ==========================================================================
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from cifarzoo.errors import CifarzooError
from cifarzoo.train.config import TrainConfig

SEARCHABLE = ("lr", "weight_decay", "label_smoothing", "warmup_epochs", "batch_size", "width_mult", "epochs")
DEFAULT_SEARCH = ("lr", "weight_decay", "label_smoothing", "warmup_epochs")
KINDS = ("log_uniform", "uniform", "int", "choice")
WARMUP_SHARE = 0.3  # the warm-up prior's upper end, as a share of the epochs
# Settings a trial fixes itself (its data, its evaluation cadence, where it runs): not searchable.
NOT_SEARCHABLE = ("model", "data", "labels", "subset", "val_split", "eval_every", "checkpoint_every", "device",
                  "threads", "seed", "model_kwargs")


def parse_search(text: str | None) -> tuple[str, ...]:
    """``--search lr,weight_decay``: the named settings (None: DEFAULT_SEARCH)."""
    if text is None:
        return DEFAULT_SEARCH
    names = tuple(dict.fromkeys(n.strip().replace("-", "_") for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SEARCHABLE]
    if unknown or not names:
        raise CifarzooError(f"--search {text!r}: expected a comma list of {', '.join(SEARCHABLE)} "
                            "(others through --space FILE)")
    return names


def default_space(base: TrainConfig, batch_size: int, n_train: int, names: tuple[str, ...]) -> dict[str, dict]:
    """The default prior of each setting in ``names`` around ``base`` (``batch_size``: its resolved batch)."""
    e = base.epochs
    priors = {
        "lr": {"log_uniform": [base.lr / 5, min(10.0, base.lr * 5)]},
        "weight_decay": {"log_uniform": [1e-5, 1e-2]},
        "label_smoothing": {"uniform": [0.0, 0.3]},
        "warmup_epochs": {"uniform": [0.0, max(round(WARMUP_SHARE * e, 2), base.warmup_epochs)]},
        "batch_size": {"choice": sorted({max(1, batch_size // 2), batch_size, min(n_train, 2 * batch_size)})},
        "width_mult": {"choice": sorted({base.width_mult / 2, base.width_mult, min(2.0, base.width_mult * 2)})},
        "epochs": {"int": [max(1, e // 2), max(2, 2 * e)]},
    }
    return {n: priors[n] for n in names}


def check_space(space: dict[str, Any], base: TrainConfig, where: str) -> dict[str, dict]:
    """``space`` (from ``where``) with every entry checked: a known setting, one known kind, bounds that
    make valid settings (both ends tried on ``base``). One line naming the first problem."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_SEARCHABLE)
    for name, spec in space.items():
        if name not in fields:
            from cifarzoo.config_file import close_name_hint

            raise CifarzooError(f"{where}: cannot search {close_name_hint(name, fields)}")
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
            raise CifarzooError(f"{where}: {name}: expected one of {{{', '.join(k + ': ...' for k in KINDS)}}}, "
                                f"got {spec!r}")
        kind, bounds = next(iter(spec.items()))
        ends = _ends(kind, bounds)
        if ends is None:
            raise CifarzooError(f"{where}: {name}: {kind} needs " + (
                "a non-empty list of values" if kind == "choice" else
                "[low, high] with 0 < low <= high" if kind == "log_uniform" else
                "[low, high] integers with low <= high" if kind == "int" else "[low, high] with low <= high")
                + f", got {bounds!r}")
        for value in ends:
            try:
                base.replace(**{name: value})
            except (CifarzooError, TypeError) as exc:
                raise CifarzooError(f"{where}: {name}: {exc}") from None
    return space


def _ends(kind: str, bounds: Any) -> list | None:
    """The values to try of a prior (its ends, or every choice), or None when the bounds are malformed."""
    if kind == "choice":
        return list(bounds) if isinstance(bounds, list) and bounds else None
    if not (isinstance(bounds, list) and len(bounds) == 2):
        return None
    lo, hi = bounds
    numbers = all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
    if not numbers or lo > hi or (kind == "log_uniform" and lo <= 0) or (
            kind == "int" and not all(isinstance(b, int) for b in bounds)):
        return None
    return [lo, hi]


def to_ray(space: dict[str, dict]) -> dict[str, Any]:
    """Ray Tune's sampling objects for ``space`` (which OptunaSearch turns into Optuna's distributions)."""
    from ray import tune

    out = {}
    for name, spec in space.items():
        kind, b = next(iter(spec.items()))
        out[name] = (tune.loguniform(*b) if kind == "log_uniform" and b[0] < b[1] else
                     tune.uniform(*b) if kind == "uniform" and b[0] < b[1] else
                     tune.randint(b[0], b[1] + 1) if kind == "int" and b[0] < b[1] else
                     tune.choice(list(b)) if kind == "choice" else b[0])  # a point: searched at that value only
    return out


def start_point(space: dict[str, dict], base: TrainConfig, batch_size: int) -> dict[str, Any] | None:
    """The settings the search starts from as a point of ``space``, trained as its first trial (so the best
    found is never one the start beat on the validation split), or None where a starting value lies outside
    its prior (a narrowed --space). The point names every dimension of the search (Ray Tune requires it):
    each choice, one of one value included, and each range but those of one value (constants to Ray)."""
    point = {}
    for name, spec in space.items():
        kind, bounds = next(iter(spec.items()))
        if kind != "choice" and bounds[0] == bounds[1]:
            continue  # a constant, not a dimension of the search
        value = batch_size if name == "batch_size" else getattr(base, name)
        if not (value in bounds if kind == "choice" else bounds[0] <= value <= bounds[1]):
            return None
        point[name] = value
    return point or None


def trial_settings(sampled: dict[str, Any], base: TrainConfig, batch_size: int) -> dict[str, Any]:
    """The settings a trial trains with: ``sampled`` over ``base``, the lr scaled with the batch size."""
    settings = dict(sampled)
    if "batch_size" in settings:
        settings["batch_size"] = int(settings["batch_size"])
        lr = settings.get("lr", base.lr)
        settings["lr"] = min(10.0, lr * settings["batch_size"] / batch_size)  # TrainConfig's highest lr
    for name in ("epochs", "batch_size"):
        if name in settings:
            settings[name] = int(settings[name])
    return settings
