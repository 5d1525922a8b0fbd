"""The search itself, on Ray Tune: one trial = one ``fit`` reporting its validation accuracy every epoch.

ASHA (Li et al. 2018, asynchronous successive halving) stops the trials whose validation accuracy
trails the others' at the same epoch, so most of the budget goes to promising settings; Optuna's TPE
(Bergstra et al. 2011) proposes the next settings from the finished trials' results once a few random
ones have run. Ray Tune runs the trials on this machine (a Ray instance on 127.0.0.1) or on a cluster,
and keeps the experiment's state in ``DIR/search`` so that an interrupted search continues.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from cifarzoo.errors import CifarzooError
from cifarzoo.train.callbacks import Callback
from cifarzoo.train.rundir import METRIC_COLUMNS
from cifarzoo.tuning.space import WARMUP_SHARE

METRIC = "val_acc"  # the validation accuracy of the epoch just trained, 0..1
SEARCH_FOLDER = "search"  # Ray Tune's experiment folder under the tuning folder


def grace_epochs(max_epochs: int) -> int:
    """The first epoch at which ASHA compares trials: after the longest warm-up the default prior draws
    (30% of the epochs). Earlier, a one-cycle run's accuracy says how far its warm-up has got, not how
    good its settings are: at epoch 1 a short warm-up always leads."""
    return max(1, math.ceil(WARMUP_SHARE * max_epochs))


class TrialReport(Callback):
    """Reports each evaluated epoch of a trial's fit to Ray Tune (a callback: it never changes the run).

    ASHA and the per-trial time cap stop a trial between two reports (Ray ends its worker)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_epoch_end(self, row: dict) -> None:
        from ray import tune

        if not math.isnan(row["eval_acc"]):
            # The epoch's whole metrics row: Ray keeps it as the trial's record (progress.csv, result.json).
            tune.report({METRIC: row["eval_acc"], **{k: row[k] for k in METRIC_COLUMNS if k != "eval_acc"},
                         "seed": self.seed})


def run_trial(sampled: dict[str, Any], *, base: dict[str, Any], batch_size: int, dataset) -> None:
    """One trial (in a Ray worker): ``sampled`` over ``base``, trained on ``dataset`` (whose "test" split is the
    validation images), each evaluated epoch reported to Ray Tune."""
    from cifarzoo.train import fit
    from cifarzoo.train.config import TrainConfig
    from cifarzoo.tuning.space import trial_settings

    start = TrainConfig.from_dict(base)
    config = TrainConfig.from_dict({**base, **trial_settings(sampled, start, batch_size)})
    # The run folder is scratch, outside the trial's folder: Ray copies trial folders while trials run, and a
    # run's lock and temporary checkpoint files come and go (a copy that meets a vanished file fails). What
    # the trial learns reaches Ray through TrialReport; its checkpoints are of no use after the search.
    with tempfile.TemporaryDirectory(prefix="cifarzoo-trial-", ignore_cleanup_errors=True) as scratch:
        fit(config, dataset=dataset, out_dir=Path(scratch) / "run", callbacks=[TrialReport(config.seed)], force=True)


def import_tune():
    """Ray Tune and Optuna's searcher, or one line saying how to install them."""
    try:
        import optuna  # noqa: F401
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:
        raise CifarzooError(f"cifarzoo tune needs Ray Tune and Optuna ({exc}): pip install 'cifarzoo[tune]'") from None
    return tune, ASHAScheduler, OptunaSearch


def run_search(trainable, *, folder: Path, space: dict | None, trials: int, budget_s: float, trial_cap_s: float,
               max_epochs: int, cpus: float, gpus: float, seed: int, resume: bool, start: dict | None = None,
               verbose: int = 0):
    """Ray Tune's ResultGrid of a new search (``space``: Ray's sampling objects; ``start``: the point tried
    first) or of the one in ``folder`` continued (``resume``). Ray must be connected."""
    import optuna

    tune, ASHAScheduler, OptunaSearch = import_tune()
    trainable = tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})
    path = str(folder.resolve() / SEARCH_FOLDER)
    if resume:
        # Trials that had not finished train again from the start (a trial keeps no checkpoint); errored ones
        # stay errored: a failure is a result of the search.
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # TPE's first trials are random (its startup); with a few trials a third of them, at least 3.
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)))
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", num_samples=trials, time_budget_s=budget_s,
                reuse_actors=False,  # a fresh worker process per trial: its threads and memory start clean
                search_alg=OptunaSearch(sampler=sampler, points_to_evaluate=[start] if start else None),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=max_epochs,
                                        grace_period=grace_epochs(max_epochs),
                                        reduction_factor=2)),
            run_config=tune.RunConfig(
                name=SEARCH_FOLDER, storage_path=str(folder.resolve()), stop={"time_total_s": trial_cap_s},
                failure_config=tune.FailureConfig(max_failures=0), verbose=verbose))
    return tuner.fit()
