"""A study's runs: every (model, seed) of a plan trained as an ordinary run folder.

What a study is (its plan and folder layout) lives in :mod:`cifarzoo.study.plan`;
training one run in :mod:`cifarzoo.study.training`; who trains the runs (this process,
or Ray tasks) in :mod:`cifarzoo.study.executors`; the report that compares the runs in
:mod:`cifarzoo.study.report`. :func:`cifarzoo.study.run_study` runs, then reports.
Imports point one way: runner -> executors -> training -> plan.

Starting the same study again continues it: a run whose ``summary.json`` says
``finished`` (or ``failed``) is kept as it is, a run with an unfinished checkpoint is
resumed from it, anything else is trained from the start; ``force=True`` trains every
run again. A run folder made with other settings than the study now asks for, or
whose settings cannot be checked (no config.json), is an error, not silently mixed in.
One study process per study folder (a lock, as for run folders). Starting the study
again with fewer models keeps the others' runs in study.json and the report (see
:func:`cifarzoo.study.plan.with_recorded_models`). A run that fails (stall, non-finite loss, out of
memory, any error) gets a ``summary.json`` with ``status: "failed"``, its ``kind``,
``reason`` and ``diagnosis``; the study goes on with the next run.

Every model gets the same dataset (loaded once), augmentation, seeds and budget
rule; the final epoch's weights are reported, never a test-selected epoch.
"""
from __future__ import annotations

import math
import os
import pickle
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cifarzoo.errors import CifarzooError
from cifarzoo.io import make_folder
from cifarzoo.study.executors import LocalExecutor, default_jobs
from cifarzoo.study.plan import EVAL_FILE, RUNS_DIR, RunSpec, StudyPlan, with_recorded_models, write_plan
from cifarzoo.study.training import RunOutcome, StudyReporter, evaluate_for_report, reference_seconds, run_cost
from cifarzoo.train.rundir import (EMPTY, FAILED, FINISHED, FOREIGN, LOCK_FILE, RESUMABLE, RunDir, RunLock,
                                   settings_changed)


# --------------------------------------------------------------------------- result
@dataclass
class StudyResult:
    plan: StudyPlan
    outcomes: list[RunOutcome]
    report: dict[str, Path] = field(default_factory=dict)  # name -> path of each report file
    dataset: Any = field(default=None, repr=False)  # the Dataset every run used

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status != "finished"]


# --------------------------------------------------------------------------- run-folder state
def check_compatible(spec: RunSpec) -> None:
    """Raise if ``spec.run_dir`` holds a run made with other settings than ``spec.config``."""
    run = RunDir(spec.run_dir)
    saved = run.saved_config()
    if saved is None:
        if run.holds_run():
            raise CifarzooError(
                f"{spec.run_dir} holds a run whose settings cannot be checked (no readable config.json); "
                "rerun with --force to train it again, or move it out of the study")
        return
    diff = settings_changed(saved, spec.config)
    if diff:
        shown = ", ".join(diff[:4])
        raise CifarzooError(
            f"{spec.run_dir} was trained with other settings: {shown}; rerun with --force to train it "
            "again, or choose another --out")


def remove_run_dir(run_dir: Path, root: Path) -> None:
    """Delete a run folder inside ``root`` safely: rename it aside first, then remove it.

    The rename is atomic, so an interruption never leaves a half-deleted folder under
    the run's name (it would look like a damaged run); a leftover ``.trash-*`` folder
    is harmless and removed on the next call.
    """
    run_dir, root = Path(run_dir), Path(root)
    if not run_dir.exists():
        return
    if root.resolve() not in run_dir.resolve().parents:
        raise CifarzooError(f"refusing to delete {run_dir}: it is not inside the study's {root}")
    trash = root / f".trash-{run_dir.name}-{os.getpid()}-{time.time_ns()}"
    os.replace(run_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)
    for old in root.glob(".trash-*"):
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the study
def with_callbacks(plan: StudyPlan, callbacks) -> StudyPlan:
    """``plan`` whose runs each get ``callbacks`` (pickled: every run unpickles its own copy, wherever it
    trains, so that no state passes from one run to the next). One line for callbacks that do not pickle."""
    from dataclasses import replace

    from cifarzoo.train.callbacks import check_callbacks

    callbacks = check_callbacks(callbacks, "val" if plan.overrides.get("val_split") else "test")
    if not callbacks:
        return plan
    try:
        blob = pickle.dumps(callbacks)
    except Exception as exc:  # a lambda, a local class, an open file, ...
        raise CifarzooError(f"callbacks: {callbacks!r} cannot be pickled ({type(exc).__name__}: {exc}); a study "
                            "gives each run its own copy, possibly in another process: define them at module "
                            "level, holding no open files or locks") from None
    return replace(plan, runs=tuple(replace(s, callbacks=blob) for s in plan.runs))


def _check_callbacks_travel(jobs: list, executor) -> None:
    """Worker processes (LocalExecutor with jobs > 1) import a callback's class by name: one defined in
    ``__main__`` (a notebook, a script) cannot be, and is refused here rather than in every run."""
    if not jobs or not jobs[0][1].callbacks or getattr(executor, "name", "") != "local" or executor.jobs < 2:
        return
    for cb in pickle.loads(jobs[0][1].callbacks):
        if type(cb).__module__ == "__main__":
            raise CifarzooError(f"callbacks: {type(cb).__name__} is defined in __main__, which the worker processes "
                                f"of jobs={executor.jobs} cannot import; define it in a module, or pass jobs=1")


def execute(plan: StudyPlan, *, force: bool = False, reporter: StudyReporter | None = None,
            dataset=None, executor=None) -> StudyResult:
    """Train the runs of ``plan`` that are not done yet (see the module doc); no report.

    ``executor`` trains them: :class:`cifarzoo.study.executors.LocalExecutor` (the
    default, with :func:`~cifarzoo.study.executors.default_jobs` runs at once) or ``RayExecutor``.
    """
    reporter = reporter or StudyReporter()
    make_folder(plan.out_dir, "study folder")
    lock = RunLock.acquire(plan.out_dir / LOCK_FILE)  # one study process per study folder
    try:
        return _execute(plan, force=force, reporter=reporter, dataset=dataset, executor=executor)
    finally:
        lock.release()


def _execute(plan: StudyPlan, *, force: bool, reporter: StudyReporter, dataset, executor) -> StudyResult:
    root = plan.out_dir / RUNS_DIR
    if not force:
        for spec in plan.runs:  # before any training: a mismatch found late would waste hours
            check_compatible(spec)
    if dataset is None:
        from cifarzoo.data import load

        dataset = load(plan.data, labels=plan.labels)
    write_plan(with_recorded_models(plan))
    reporter.on_study_start(plan, dataset)

    total = len(plan.runs)
    states = {}
    for spec in plan.runs:
        if force:
            remove_run_dir(spec.run_dir, root)
            states[spec.name] = EMPTY
        else:
            states[spec.name] = RunDir(spec.run_dir).state()
    to_train = [s for s in plan.runs if states[s.name] in (RESUMABLE, FOREIGN, EMPTY)]
    costs = _costs(to_train, dataset.num_classes)
    outcomes: list[RunOutcome] = []
    jobs = []  # (position, spec, action) of the runs to train, in plan order
    for index, spec in enumerate(plan.runs, start=1):
        state = states[spec.name]
        if state in (FINISHED, FAILED):
            if state == FINISHED and not (spec.run_dir / EVAL_FILE).exists():
                evaluate_for_report(spec, dataset)  # e.g. finished before its evaluation was written
            outcome = RunOutcome(spec, state, "skipped", RunDir(spec.run_dir).read_summary() or {})
            outcomes.append(outcome)
            reporter.on_run_end(index, total, outcome, None)
            continue
        action = "resumed" if state == RESUMABLE else "trained"
        if action == "trained":
            remove_run_dir(spec.run_dir, root)  # leftovers of a run that never saved an epoch
        jobs.append((index, spec, action))
    # ---- the executor trains the runs (study/executors.py: in this process, or Ray tasks)
    executor = executor or LocalExecutor(default_jobs(plan))
    _check_callbacks_travel(jobs, executor)
    outcomes += executor.run(jobs, total=total, dataset=dataset, reporter=reporter, costs=costs)
    order = {s.name: i for i, s in enumerate(plan.runs)}
    outcomes.sort(key=lambda o: order[o.spec.name])
    # ---- end of the executor hook

    return StudyResult(plan, outcomes, dataset=dataset)


def _costs(specs: Sequence[RunSpec], num_classes: int) -> dict[str, float]:
    """Each run's cost for its start order and the time left: its seconds at a measured throughput
    where every run has one (reference_seconds: the cpu preset's study models, where time goes to
    max-pooling, ReLU and batch norm that an arithmetic count underprices); else run_cost (sized once per model), the
    unsizable ones at the mean of the rest (or 1.0)."""
    measured = {s.name: reference_seconds(s.config) for s in specs}
    if all(v is not None for v in measured.values()):
        return measured
    per_model: dict[str, float] = {}
    for s in specs:
        if s.model not in per_model:
            per_model[s.model] = run_cost(s.config.replace(epochs=1), num_classes)
    known = [c for c in per_model.values() if math.isfinite(c) and c > 0]
    fill = statistics.fmean(known) if known else 1.0
    return {s.name: (per_model[s.model] if math.isfinite(per_model[s.model]) and per_model[s.model] > 0 else fill)
            * s.config.epochs for s in specs}
