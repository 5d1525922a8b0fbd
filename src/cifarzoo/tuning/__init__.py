"""Tuning: a search over a model's training settings on the validation split, on Ray Tune.

Every trial is an ordinary ``fit`` on the training images less a validation split, evaluated on that
split after every epoch; the test set is not looked at during the search. The first trial trains the
starting settings (recipe < preset < options) where they lie inside the priors. The trials' data is a
Dataset whose evaluation ("test") split *is* the validation split, so not even the final pass of a
trial's fit (which evaluates its "test" split) can reach the test images. Then, apart from the search,
the best settings train once on the whole training set and are evaluated once on the test set.

The tuning folder ``DIR``::

    tune.json     what was asked (model, budget, space, validation images, ...): --resume reads it
    search/       Ray Tune's experiment (its state; each trial's folder, its progress.csv every epoch's metrics)
    trials.csv    one row per trial: settings, validation accuracy per epoch, seconds, status, seed
    best.json     the best settings as a settings file (`cifarzoo train --config DIR/best.json`), written
                  once the search is done (an interrupted one has none until it is resumed and ends)
    report.html   the search's curves, each setting's importance, the trials, the final result
    final/        the best settings trained on the full training set (a run folder); final.json its result
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarzoo.errors import CifarzooError

REQUEST_FILE, FINAL_FILE, FINAL_RUN = "tune.json", "final.json", "final"
CIFAR10_TRAIN = 50_000
CIFAR10_VAL = 5_000  # the validation images of CIFAR-10-sized data; 10% of smaller training sets


@dataclass
class TuneResult:
    out_dir: Path
    best: dict[str, Any] | None  # the best settings (best.json); None when no trial reported an epoch
    best_val_acc: float | None
    trials: list  # results.Trial
    final: dict[str, Any] | None  # the final run's test result (final.json), None without it
    interrupted: bool = False


def parse_budget(text: str | float | int) -> float:
    """Seconds of ``30m``, ``2h``, ``1h30m``, ``90s`` or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
        if not m or not any(m.groups()):
            raise CifarzooError(f"--budget {text!r}: expected a duration such as 30m, 2h, 1h30m or 90s")
        h, mins, s = (float(g or 0) for g in m.groups())
        seconds = 3600 * h + 60 * mins + s
    if not 0 < seconds <= 30 * 86400:
        raise CifarzooError(f"--budget {text!r}: expected more than 0 and at most 30 days")
    return seconds


def default_val_split(n_train: int) -> int:
    return CIFAR10_VAL if n_train >= CIFAR10_TRAIN else max(1, round(0.1 * n_train))


def tuning_dataset(dataset, config):
    """The trials' Dataset: the training images less ``config.val_split``, with that split as its evaluation set."""
    from cifarzoo.data import build_dataset
    from cifarzoo.train.loop import split_dataset

    s = split_dataset(dataset, config)
    return build_dataset(s.train_x, s.train_y, s.eval_x, s.eval_y, dataset.classes,
                         f"{dataset.source}, less {len(s.eval_y)} validation images (the evaluation set)",
                         labelling=dataset.labelling)


def tune(model: str | None = None, *, out: str | os.PathLike, preset: str | None = None, data: Any = None,
         trials: int = 8, budget: str | float = "30m", search: str | None = None,
         space: str | os.PathLike | dict | None = None, val_split: int | float | None = None,
         executor: str | None = None, address: str | None = None, cpus_per_trial: float = 1,
         gpus_per_trial: float = 0, final: bool = True, resume: bool = False, verbose: int = 0,
         reporter=None, **settings: Any) -> TuneResult:
    """Search ``model``'s settings for ``budget`` on the validation split; see the module doc and README.

    ``settings`` (TrainConfig fields) and ``preset`` fix the starting point; ``search`` names the settings
    searched with their default priors, ``space`` (a file or dict, see :mod:`cifarzoo.tuning.space`) adds
    or replaces priors. ``executor``: "local" (default: a Ray instance on 127.0.0.1) or "ray" (the cluster at
    ``address``, "auto" or HOST:PORT); with ``resume``, None continues where the search ran.
    ``resume=True`` continues the search in ``out`` (``data`` only for arrays).
    ``reporter`` shows the final run's progress. KeyboardInterrupt propagates after the finished trials
    are written (``resume=True`` continues).
    """
    from cifarzoo.tuning.run import Tuning

    result = Tuning.open(model, out=out, preset=preset, data=data, trials=trials, budget=budget, search=search,
                         space=space, val_split=val_split, executor=executor, address=address,
                         cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, resume=resume,
                         settings=settings).run(final=final, verbose=verbose, reporter=reporter)
    if result.interrupted:
        exc = KeyboardInterrupt()
        exc.add_note(f"the finished trials are in {out}; continue the search with resume=True "
                     f"(cifarzoo tune --resume {out})")
        raise exc
    return result
