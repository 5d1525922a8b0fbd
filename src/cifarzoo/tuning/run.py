"""One tuning from request to record: the request (tune.json), Ray, the search, the tables, the final run."""
from __future__ import annotations


import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarzoo.errors import CifarzooError
from cifarzoo.io import read_json, write_json
from cifarzoo.tuning import (
    FINAL_FILE,
    FINAL_RUN,
    REQUEST_FILE,
    TuneResult,
    default_val_split,
    parse_budget,
    tuning_dataset,
)
from cifarzoo.tuning import results as res
from cifarzoo.tuning import space as sp
from cifarzoo.tuning.search import SEARCH_FOLDER, run_search

MAX_TRIALS = 10_000


@dataclass
class Tuning:
    out: Path
    request: dict[str, Any]  # tune.json
    dataset: Any  # the full Dataset (train and test)
    resume: bool

    @classmethod
    def open(cls, model, *, out, preset, data, trials, budget, search, space, val_split, executor, address,
             cpus_per_trial, gpus_per_trial, resume, settings) -> Tuning:
        """A new tuning of ``model`` in ``out`` (refused where one is), or, with ``resume``, the one there."""
        from cifarzoo.api import resolve_data

        out = Path(out)
        if resume:
            if not (out / REQUEST_FILE).exists():
                raise CifarzooError(f"{out}: no tuning to resume here (no {REQUEST_FILE})")
            request = read_json(out / REQUEST_FILE)
            if executor is not None:  # a cluster's head may have moved since
                request.update(executor=executor, address=address)
            spec, dataset = resolve_data(data) if data is not None else (request["data"], None)
            return cls(out, request, dataset or _load(spec, request["base"]["labels"]), True)
        if (out / REQUEST_FILE).exists():
            raise CifarzooError(f"{out} already holds a tuning; continue it with --resume {out}, "
                                "or choose another --out")
        executor = executor or "local"
        if executor not in ("local", "ray"):
            raise CifarzooError(f"--executor {executor!r}: expected local or ray")
        if address is not None and executor != "ray":
            raise CifarzooError("--address: only with --executor ray")
        if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
            raise CifarzooError(f"--trials {trials!r}: expected an integer in [1, {MAX_TRIALS}]")
        if not 0 < cpus_per_trial <= 1024 or not 0 <= gpus_per_trial <= 64:
            raise CifarzooError("--cpus-per-trial must be in (0, 1024] and --gpus-per-trial in [0, 64]")
        from cifarzoo.train.config import make_config

        spec, dataset = resolve_data(data)
        if dataset is not None and dataset.labelling and "labels" not in settings:
            settings["labels"] = dataset.labelling
        base = make_config(model, preset=preset, data=spec, **settings)
        dataset = dataset or _load(spec, base.labels)
        n = len(dataset.train_labels) if base.subset is None else base.subset
        base = base.replace(val_split=default_val_split(n) if val_split is None else val_split)
        tuning = tuning_dataset(dataset, base)  # checks the split
        batch = base.batch_size or _auto_batch(len(tuning.train_labels))
        names = sp.parse_search(search)
        prior = sp.default_space(base, batch, len(tuning.train_labels), names)
        if space is not None:
            where = str(space) if not isinstance(space, dict) else "space"
            given = space if isinstance(space, dict) else _read_space(space)
            prior.update(sp.check_space(dict(given), base, where))
        sp.check_space(prior, base, "the search space")
        request = dict(model=base.model, preset=preset, data=spec, base=base.to_dict(), trials=trials,
                       budget=str(budget), budget_seconds=parse_budget(budget), space=prior, batch_size=batch,
                       executor=executor, address=address, cpus=float(cpus_per_trial),
                       gpus=float(gpus_per_trial), val_images=len(tuning.test_labels),
                       train_images=len(tuning.train_labels))
        return cls(out, request, dataset, False)

    def run(self, *, final: bool, verbose: int = 0, reporter=None) -> TuneResult:
        from cifarzoo.io import make_folder
        from cifarzoo.study.executors import connect_ray
        from cifarzoo.train.config import TrainConfig

        r = self.request
        make_folder(self.out, "tuning folder")
        base = TrainConfig.from_dict(r["base"])
        tuning = tuning_dataset(self.dataset, base)
        ray, started = connect_ray(r["address"] if r["executor"] == "ray" else None)
        try:
            slots = _slots(ray, r["cpus"], r["gpus"])
            if not self.resume:
                # Each trial's share of the budget: the budget over the rounds of `slots` trials side by side.
                r["trial_cap_seconds"] = r["budget_seconds"] * min(slots, r["trials"]) / r["trials"]
                r["slots"] = slots
                write_json(self.out / REQUEST_FILE, r)
            started_at = time.monotonic()
            grid = run_search(self._trainable(base, tuning), folder=self.out, space=sp.to_ray(r["space"]),
                              trials=r["trials"], budget_s=r["budget_seconds"], trial_cap_s=r["trial_cap_seconds"],
                              max_epochs=self._max_epochs(base), cpus=r["cpus"], gpus=r["gpus"],
                              seed=base.seed, resume=self.resume and (self.out / SEARCH_FOLDER).exists(),
                              start=sp.start_point(r["space"], base, r["batch_size"]), verbose=verbose)
        finally:
            if started:
                ray.shutdown()
        trials = res.trials_of(grid, start=base, batch_size=r["batch_size"], trial_cap_s=r["trial_cap_seconds"])
        # Fewer trials than asked is an interruption only while budget was left: Ray Tune's own time budget
        # (wall time, Ray's start-up included) ends a search quietly.
        budget_left = time.monotonic() - started_at < 0.95 * r["budget_seconds"]
        interrupted = grid.num_terminated + grid.num_errors < len(grid) or (len(grid) < r["trials"] and budget_left)
        return self._record(trials, base, final=final and not interrupted, reporter=reporter,
                            interrupted=interrupted)

    def _trainable(self, base, tuning):
        from ray import tune

        from cifarzoo.tuning.search import run_trial

        # The trials' own settings: subset and validation split are already applied to `tuning` (whose "test"
        # split is the validation split),
        # every epoch evaluated (ASHA's signal), a checkpoint only at the end, torch's threads = the CPUs asked.
        trial_base = base.replace(val_split=0, subset=None, eval_every=1, checkpoint_every=0,
                                  threads=max(1, int(self.request["cpus"])) if self.request["gpus"] == 0 else None)
        return tune.with_parameters(run_trial, base=trial_base.to_dict(), batch_size=self.request["batch_size"],
                                    dataset=tuning)

    def _max_epochs(self, base) -> int:
        spec = self.request["space"].get("epochs")
        if spec is None:
            return base.epochs
        return int(max(next(iter(spec.values()))))

    def _record(self, trials, base, *, final: bool, reporter, interrupted: bool) -> TuneResult:
        r = self.request
        names = list(r["space"])
        res.write_trials(self.out / res.TRIALS_FILE, trials, names)
        best = res.best_trial(trials)
        best_config = None
        if best is not None:
            config = base.replace(**best.settings, val_split=0)
            best_config = config.to_dict()
            from cifarzoo.data.arrays import ARRAYS_SPEC

            if best_config["data"] == ARRAYS_SPEC:  # arrays in memory: a file cannot name them
                del best_config["data"]
            if not interrupted:  # best.json says the search is done (a study's --tune-budget skips it then)
                res.write_best(self.out / res.BEST_FILE, best_config)
        result = None
        if final and best is not None:
            result = self._final(base.replace(**best.settings, val_split=0), reporter)
        res.write_report(self.out / res.REPORT_FILE, trials, r["space"], r, result)
        return TuneResult(self.out, best_config, None if best is None else best.last, trials, result, interrupted)

    def _final(self, config, reporter) -> dict:
        """The best settings trained once on the whole training set, evaluated once on the test set."""
        from cifarzoo.train import fit

        run = fit(config, dataset=self.dataset, out_dir=self.out / FINAL_RUN, reporter=reporter, force=True)
        s = run.summary
        final = dict(run_dir=str(run.run_dir), test_acc=s["test_acc"], test_acc_tta=s["test_acc_tta"],
                     train_seconds=s["train_seconds"], train_images=s["train_images"], seed=s["seed"])
        write_json(self.out / FINAL_FILE, final)
        return final


def _load(spec, labels):
    from cifarzoo.data import load

    return load(spec, labels=labels or "fine")


def _auto_batch(n: int) -> int:
    from cifarzoo.train.loop import auto_batch_size

    return auto_batch_size(n)


def _read_space(path) -> dict:
    from cifarzoo.config_file import read_settings

    return read_settings(path)


def _slots(ray, cpus: float, gpus: float) -> int:
    """Trials the cluster runs side by side at ``cpus`` and ``gpus`` each (at least 1)."""
    have = ray.cluster_resources()
    n = math.floor(have.get("CPU", 0) / cpus + 1e-9)
    if gpus:
        n = min(n, math.floor(have.get("GPU", 0) / gpus + 1e-9))
    if n < 1:
        raise CifarzooError(f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs: "
                            f"too few for one trial of --cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}")
    return n
