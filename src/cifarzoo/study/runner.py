"""A study's runs: every (model, seed) of a plan trained as an ordinary run folder.

What a study is (its plan and folder layout) lives in :mod:`cifarzoo.study.plan`;
the report that compares the runs in :mod:`cifarzoo.study.report`;
:func:`cifarzoo.study.run_study` runs, then reports.

Starting the same study again continues it: a run whose ``summary.json`` says
``finished`` (or ``failed``) is kept as it is, a run with an unfinished checkpoint is
resumed from it, anything else is trained from the start; ``force=True`` trains every
run again. A run folder made with other settings than the study now asks for is an
error, not silently mixed in. A run that fails (stall, non-finite loss, out of
memory, any error) gets a ``summary.json`` with ``status: "failed"``, its ``kind``,
``reason`` and ``diagnosis``; the study goes on with the next run.

Every model gets the same dataset (loaded once), augmentation, seeds and budget
rule; the final epoch's weights are reported, never a test-selected epoch.
"""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cifarzoo.errors import CifarzooError, TrainingError
from cifarzoo.io import write_json
from cifarzoo.study.plan import EVAL_FILE, RUNS_DIR, RunSpec, StudyPlan, write_plan
from cifarzoo.train.config import TrainConfig
from cifarzoo.train.loop import Reporter
from cifarzoo.train.rundir import EMPTY, FAILED, FINISHED, FOREIGN, RESUMABLE, RunDir

TOP_LOSSES = 8  # most confidently wrong test images kept per run
# Settings that do not change what a run computes: a run folder that differs only in
# these still belongs to the study.
_IGNORED_SETTINGS = ("compile", "nan_check_every", "eval_batch_size")


# --------------------------------------------------------------------------- outcomes and progress
@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # "finished" | "failed"
    action: str  # "trained" | "resumed" | "skipped" (kept from an earlier invocation)
    summary: dict = field(default_factory=dict)  # summary.json as written
    wall_seconds: float = 0.0  # this invocation's wall time on the run (training + evaluation)


@dataclass
class StudyResult:
    plan: StudyPlan
    outcomes: list[RunOutcome]
    report: dict[str, Path] = field(default_factory=dict)  # name -> path of each report file
    dataset: Any = field(default=None, repr=False)  # the Dataset every run used

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status != "finished"]


class StudyReporter:
    """Progress callbacks of a study; the library never prints, the CLI subclasses this.

    ``eta_seconds`` is the estimated time left for the whole study (None: not yet known).
    """

    def on_study_start(self, plan: StudyPlan, dataset) -> None: ...
    def on_run_start(self, index: int, total: int, spec: RunSpec, action: str, eta_seconds: float | None) -> None: ...
    def on_epoch_end(self, index: int, total: int, spec: RunSpec, row: dict, eta_seconds: float | None) -> None: ...
    def on_run_end(self, index: int, total: int, outcome: RunOutcome, eta_seconds: float | None) -> None: ...
    def on_report(self, paths: dict[str, Path]) -> None: ...


def estimate_seconds_left(
    finished: Sequence[tuple[float, float]],
    upcoming: Sequence[float],
    current: tuple[int, int, float, float] | None = None,
) -> float | None:
    """Seconds left for the study, from the wall time of the runs finished so far.

    Runs are weighed by a ``cost`` (see :func:`run_cost`; 1.0 each weighs them
    equally): the finished runs' ``(wall_seconds, cost)`` give seconds per unit of
    cost, which prices the ``upcoming`` runs' costs. ``current`` is ``(epochs_done,
    epochs_total, seconds_so_far, cost)`` of the run in progress: once it has an epoch
    behind it, its own pace predicts its rest (and, while no run has finished yet, the
    price of the others). None while nothing has been measured.
    """
    rate = (sum(w for w, _ in finished) / max(1e-12, sum(c for _, c in finished))) if finished else None
    rest = 0.0
    if current is not None:
        done, total, seconds, cost = current
        if done >= 1 and seconds > 0:
            rest = seconds / done * (total - done)
            if rate is None and cost > 0:
                rate = seconds / done * total / cost
        elif rate is not None:
            rest = rate * cost
        else:
            return None
    if rate is None:
        return None if upcoming or current is None else rest
    return rest + rate * sum(upcoming)


def run_cost(config: TrainConfig, num_classes: int = 10) -> float:
    """A run's relative cost for time estimates: multiply-accumulates per image x epochs.

    Only ratios matter (the training set is the same for every run of a study); a
    model that cannot be sized gets NaN (the study prices it as the average of the others).
    """
    from cifarzoo import models
    from cifarzoo.models.summary import count_macs

    try:
        m = models.create(config.model, num_classes=num_classes, width_mult=config.width_mult, **config.model_kwargs)
        return float(count_macs(m)) * config.epochs
    except Exception:  # sizing is only for the estimate
        return float("nan")


class _RunProgress(Reporter):
    """Adapts the trainer's per-epoch hooks to the study's progress line."""

    def __init__(self, study: StudyReporter, index: int, total: int, spec: RunSpec,
                 finished: list[tuple[float, float]], upcoming: list[float], cost: float):
        self.study, self.index, self.total, self.spec = study, index, total, spec
        self.finished, self.upcoming, self.cost = finished, upcoming, cost
        self.t0 = time.perf_counter()
        self.epochs_done = 0

    def on_epoch_end(self, row: dict) -> None:
        self.epochs_done += 1
        # A resumed run: its pace is measured over the epochs done in this invocation.
        total = self.epochs_done + self.spec.config.epochs - int(row["epoch"])
        cur = (self.epochs_done, total, time.perf_counter() - self.t0, self.cost * total / self.spec.config.epochs)
        eta = estimate_seconds_left(self.finished, self.upcoming, cur)
        self.study.on_epoch_end(self.index, self.total, self.spec, row, eta)


# --------------------------------------------------------------------------- run-folder state
def _normalized(config: dict) -> dict:
    d = json.loads(json.dumps(config))
    for k in _IGNORED_SETTINGS:
        d.pop(k, None)
    return d


def check_compatible(spec: RunSpec) -> None:
    """Raise if ``spec.run_dir`` holds a run made with other settings than ``spec.config``."""
    saved = RunDir(spec.run_dir).saved_config()
    if saved is None:
        return
    want, have = _normalized(spec.config.to_dict()), _normalized(saved)
    if want.get("batch_size") is None:  # chosen by the trainer from the data size and saved resolved
        have.pop("batch_size", None)
        want.pop("batch_size", None)
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
        shown = ", ".join(f"{k} {have.get(k)!r} (now {want.get(k)!r})" for k in diff[:4])
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


# --------------------------------------------------------------------------- evaluation for the report
def top_losses(logits, labels: np.ndarray, k: int = TOP_LOSSES) -> list[dict]:
    """The ``k`` wrongly classified images the model is most confident about, most confident first.

    Each: ``{index, true, pred, prob (of the predicted class), true_prob, loss}``.
    """
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) == 0:
        return []
    probs = torch.softmax(logits, dim=1)
    conf, pred = probs.max(dim=1)
    wrong = torch.nonzero(pred != y).flatten()
    order = wrong[torch.argsort(conf[wrong], descending=True, stable=True)][:k]
    out = []
    for i in order.tolist():
        p_true = float(probs[i, y[i]])
        out.append({"index": int(i), "true": int(y[i]), "pred": int(pred[i]), "prob": float(conf[i]),
                    "true_prob": p_true, "loss": float(-math.log(max(p_true, 1e-12)))})
    return out


def evaluate_for_report(spec: RunSpec, dataset) -> dict:
    """Evaluate a finished run on ``dataset``'s test split and write ``EVAL_FILE`` into its folder."""
    from cifarzoo.evaluate import evaluate

    try:
        r = evaluate(spec.run_dir, dataset=dataset, device=spec.config.device,
                     batch_size=spec.config.eval_batch_size, save=True)
        record = {
            "accuracy": r.accuracy, "loss": r.loss, "classes": list(r.classes),
            "per_class_accuracy": [float(a) for a in r.per_class_accuracy],
            "confusion": np.asarray(r.confusion).astype(int).tolist(),
            "top_losses": top_losses(r.logits, r.labels),
            "tta": bool(r.tta), "data_source": r.data_source, "test_images": int(len(r.labels)),
        }
    except CifarzooError as exc:  # the run stays finished; the report says why these parts are missing
        record = {"error": str(exc)}
    write_json(spec.run_dir / EVAL_FILE, record)
    return record


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort only
        pass


def train_one(spec: RunSpec, dataset, *, action: str, reporter: Reporter | None = None) -> tuple[str, dict]:
    """Train (or resume) one run; a failure is recorded in its summary.json, not raised.

    Returns ``(status, summary)``. KeyboardInterrupt propagates (the trainer has left a
    resumable checkpoint).
    """
    import torch

    from cifarzoo.train import fit

    run = RunDir(spec.run_dir)

    def failed(kind: str, reason: str, diagnosis: str) -> tuple[str, dict]:
        summary = run.failure_summary(model=spec.model, seed=spec.seed, epochs=spec.config.epochs,
                                      data=spec.config.data, kind=kind, reason=reason, diagnosis=diagnosis)
        run.write_summary(summary)
        return FAILED, summary

    try:
        if action == "resumed":
            result = fit(resume=spec.run_dir, dataset=dataset, reporter=reporter)
        else:
            result = fit(spec.config, dataset=dataset, out_dir=spec.run_dir, reporter=reporter)
    except TrainingError as exc:
        return failed(exc.kind, str(exc).split("\n", 1)[0], exc.diagnosis or str(exc))
    except torch.OutOfMemoryError as exc:
        return failed(
            "oom", f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'OutOfMemoryError'}",
            "The model, batch and activations do not fit the device's memory. Lower the batch size "
            "(--batch-size), the width (--width-mult) or use bf16 precision; close other programs "
            "using the device.")
    except CifarzooError as exc:
        return failed("error", str(exc), str(exc))
    except Exception as exc:  # a bug in one model must not cost the rest of the study
        return failed("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=6))
    finally:
        _release_memory()
    evaluate_for_report(spec, dataset)
    return FINISHED, result.summary


# --------------------------------------------------------------------------- the study
def execute(plan: StudyPlan, *, force: bool = False, reporter: StudyReporter | None = None,
            dataset=None) -> StudyResult:
    """Train every run of ``plan`` that is not done yet (see the module doc); no report.

    ``dataset`` (a :class:`cifarzoo.data.Dataset`) skips loading ``plan.data``; every run
    gets the same one.
    """
    reporter = reporter or StudyReporter()
    root = plan.out_dir / RUNS_DIR
    if not force:
        for spec in plan.runs:  # before any training: a mismatch found late would waste hours
            check_compatible(spec)
    if dataset is None:
        from cifarzoo.data import load

        dataset = load(plan.data)
    write_plan(plan)
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
    finished: list[tuple[float, float]] = []  # (wall seconds, cost) of the runs trained now
    outcomes: list[RunOutcome] = []
    for index, spec in enumerate(plan.runs, start=1):
        state = states[spec.name]
        if state in (FINISHED, FAILED):
            if state == FINISHED and not (spec.run_dir / EVAL_FILE).exists():
                evaluate_for_report(spec, dataset)  # e.g. finished before its evaluation was written
            outcome = RunOutcome(spec, state, "skipped", RunDir(spec.run_dir).read_summary() or {})
            outcomes.append(outcome)
            upcoming = [costs[s.name] for s in to_train if s.name not in {o.spec.name for o in outcomes}]
            reporter.on_run_end(index, total, outcome, estimate_seconds_left(finished, upcoming))
            continue
        action = "resumed" if state == RESUMABLE else "trained"
        if action == "trained":
            remove_run_dir(spec.run_dir, root)  # leftovers of a run that never saved an epoch, or foreign
        pos = [s.name for s in to_train].index(spec.name)
        upcoming = [costs[s.name] for s in to_train[pos + 1:]]
        cost = costs[spec.name]
        reporter.on_run_start(index, total, spec, action,
                              estimate_seconds_left(finished, upcoming, (0, spec.config.epochs, 0.0, cost)))
        progress = _RunProgress(reporter, index, total, spec, finished, upcoming, cost)
        t0 = time.perf_counter()
        status, summary = train_one(spec, dataset, action=action, reporter=progress)
        wall = time.perf_counter() - t0
        if status == FINISHED and action == "trained":  # a resumed run's wall time covers only its rest
            finished.append((wall, cost))
        outcome = RunOutcome(spec, status, action, summary, wall)
        outcomes.append(outcome)
        reporter.on_run_end(index, total, outcome, estimate_seconds_left(finished, upcoming))

    return StudyResult(plan, outcomes, dataset=dataset)


def _costs(specs: Sequence[RunSpec], num_classes: int) -> dict[str, float]:
    """run_cost of each run (sized once per model); unsizable ones get the mean of the rest (or 1.0)."""
    per_model: dict[str, float] = {}
    for s in specs:
        if s.model not in per_model:
            per_model[s.model] = run_cost(s.config.replace(epochs=1), num_classes)
    known = [c for c in per_model.values() if math.isfinite(c) and c > 0]
    fill = statistics.fmean(known) if known else 1.0
    return {s.name: (per_model[s.model] if math.isfinite(per_model[s.model]) and per_model[s.model] > 0 else fill)
            * s.config.epochs for s in specs}
