"""A study: every (model, seed) of a preset trained as an ordinary run folder, then one report.

Layout of a study folder ``DIR``::

    DIR/study.json                  what was asked: preset, models, seeds, data, overrides, budget rule
    DIR/runs/<model>-s<seed>/       one ordinary run folder per (model, seed) (see train/rundir.py), plus
        confusion.json/.png         written by ``cifarzoo.evaluate.evaluate`` after training
        report_eval.json            per-class accuracy, confusion and the most confidently wrong
                                    test images, for the report (EVAL_FILE)
    DIR/results.json, results.csv, report.md, report.html, figures/*.png   (see report.py)

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

from cifarzoo import __version__
from cifarzoo.errors import CifarzooError, TrainingError
from cifarzoo.train.config import PRESETS, STUDY_MODELS, TrainConfig, make_config
from cifarzoo.train.loop import Reporter
from cifarzoo.train.rundir import read_json, read_metrics, write_json

STUDY_FILE = "study.json"
RUNS_DIR = "runs"
EVAL_FILE = "report_eval.json"
TOP_LOSSES = 8  # most confidently wrong test images kept per run
# Settings that do not change what a run computes: a run folder that differs only in
# these still belongs to the study.
_IGNORED_SETTINGS = ("compile", "nan_check_every", "eval_batch_size")


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class RunSpec:
    """One (model, seed) of a study: its full training config and its run folder."""

    model: str
    seed: int
    config: TrainConfig
    run_dir: Path

    @property
    def name(self) -> str:
        return run_name(self.model, self.seed)


@dataclass(frozen=True)
class StudyPlan:
    out_dir: Path
    preset: str
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    data: str | None  # the --data spec every run uses (None: the default CIFAR-10 cache)
    overrides: dict
    runs: tuple[RunSpec, ...]
    rule: str  # the budget rule, in words, as the report states it

    def to_dict(self) -> dict:
        return {
            "format": "cifarzoo.study", "version": 1,
            "preset": self.preset, "preset_description": PRESETS[self.preset].get("description", ""),
            "models": list(self.models), "seeds": list(self.seeds), "data": self.data,
            "overrides": dict(self.overrides), "rule": self.rule,
            "runs": [{"name": s.name, "model": s.model, "seed": s.seed,
                      "run_dir": os.path.relpath(s.run_dir, self.out_dir)} for s in self.runs],
            "configs": {m: _config_for(self, m).to_dict() for m in self.models},
            "cifarzoo": __version__,
        }


def _config_for(plan: StudyPlan, model: str) -> TrainConfig:
    return next(s.config for s in plan.runs if s.model == model)


def run_name(model: str, seed: int) -> str:
    return f"{model}-s{seed}"


def resolve_models(models: Sequence[str] | str | None) -> tuple[str, ...]:
    """Canonical names, in the order given, duplicates dropped; default: the five study models.

    A string is a comma list. Unknown names raise with the list of known ones.
    """
    from cifarzoo.models import resolve

    if models is None:
        return tuple(STUDY_MODELS)
    if isinstance(models, str):
        models = [m for m in models.split(",")]
    names = [m.strip() for m in models if m and m.strip()]
    if not names:
        raise CifarzooError("--models is empty; give a comma list such as vgg16,resnet50 (see `cifarzoo models`)")
    out: list[str] = []
    for m in names:
        r = resolve(m)
        if r not in out:
            out.append(r)
    return tuple(out)


def budget_rule(configs: dict[str, TrainConfig]) -> str:
    """The rule every model of the study is trained under, in one sentence or three."""
    cs = list(configs.values())
    epochs = {m: c.epochs for m, c in configs.items()}
    if len(set(epochs.values())) == 1:
        ep = f"{cs[0].epochs} epoch{'s' if cs[0].epochs != 1 else ''} for every model"
    else:
        ep = "each model's preset epochs (" + ", ".join(f"{m} {e}" for m, e in epochs.items()) + ")"
    aug = {c.augment for c in cs}
    aug_text = (f"the same augmentation ({cs[0].augment})" if len(aug) == 1
                else "augmentation per model: " + ", ".join(f"{m} {c.augment}" for m, c in configs.items()))
    opt = {(c.optimizer, c.lr, c.batch_size, c.schedule) for c in cs}
    if len(opt) == 1:
        c = cs[0]
        batch = c.batch_size if c.batch_size is not None else "auto (512, smaller on small data)"
        opt_text = f"{c.optimizer} at peak lr {c.lr:g}, batch {batch}, {c.schedule} schedule for all"
    else:
        opt_text = "each model's recipe for optimizer, learning rate and batch size (see results.json configs)"
    return (f"{ep}; same data, {aug_text} and seeds; {opt_text}; "
            "final-epoch weights, no test-set selection (the test set is only ever used for reporting)")


def plan_study(
    models: Sequence[str] | str | None = None,
    *,
    preset: str = "standard",
    seeds: int = 1,
    data: str | None = None,
    out_dir: str | os.PathLike = "study",
    **overrides: Any,
) -> StudyPlan:
    """Every (model, seed) run of a study and its config: ``make_config(model, preset, data=, seed=, **overrides)``.

    ``seeds`` runs seeds 0..seeds-1 of each model. ``data`` replaces the preset's data
    source; ``overrides`` (None values ignored) apply to every model alike.
    """
    if preset not in PRESETS:
        raise CifarzooError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    if not (isinstance(seeds, int) and seeds >= 1):
        raise CifarzooError(f"--seeds must be a positive integer, got {seeds!r}")
    names = resolve_models(models)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for k in ("seed", "model"):
        if k in overrides:
            raise CifarzooError(f"a study sets {k!r} itself; use --seeds / --models")
    data_spec = data if data is not None else PRESETS[preset].get("data")
    out = Path(out_dir)
    runs = []
    for m in names:
        for s in range(seeds):
            cfg = make_config(m, preset=preset, data=data_spec, seed=s, **overrides)
            runs.append(RunSpec(m, s, cfg, out / RUNS_DIR / run_name(m, s)))
    configs = {m: next(r.config for r in runs if r.model == m) for m in names}
    return StudyPlan(out, preset, names, tuple(range(seeds)), data_spec, overrides, tuple(runs),
                     budget_rule(configs))


# --------------------------------------------------------------------------- outcomes and progress
@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # "finished" | "failed"
    action: str  # "trained" | "resumed" | "skipped" (kept from an earlier invocation)
    summary: dict = field(default_factory=dict)  # summary.json as written
    wall_seconds: float = 0.0  # this invocation's wall time on the run (training + evaluation)
    where: str = ""  # the machine that trained it, where an executor spreads runs over several


@dataclass
class StudyResult:
    plan: StudyPlan
    outcomes: list[RunOutcome]
    report: dict[str, Path] = field(default_factory=dict)  # name -> path of each report file

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


def _saved_config(run_dir: Path) -> dict | None:
    p = run_dir / "config.json"
    if not p.exists():
        return None
    try:
        return read_json(p).get("config")
    except (CifarzooError, AttributeError):
        return None


def check_compatible(spec: RunSpec) -> None:
    """Raise if ``spec.run_dir`` holds a run made with other settings than ``spec.config``."""
    saved = _saved_config(spec.run_dir)
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


def run_state(run_dir: Path) -> str:
    """``finished``, ``failed``, ``resume`` (an unfinished checkpoint) or ``fresh``."""
    from cifarzoo.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            status = read_json(summary).get("status")
        except (CifarzooError, AttributeError):
            status = None
        if status in ("finished", "failed"):
            return status
    if (run_dir / CHECKPOINT_NAME).exists():
        try:
            ckpt = load_checkpoint(run_dir)
        except CifarzooError:  # truncated or foreign: start again
            return "fresh"
        # A checkpoint marked finished without its summary (stopped between the two
        # writes) cannot be resumed; train it again.
        return "fresh" if ckpt.get("finished") else "resume"
    return "fresh"


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


def _failure_summary(spec: RunSpec, kind: str, reason: str, diagnosis: str) -> dict:
    metrics_path = spec.run_dir / "metrics.csv"
    done = len(read_metrics(metrics_path)) if metrics_path.exists() else 0
    return {
        "model": spec.model, "status": "failed", "seed": spec.seed, "epochs": spec.config.epochs,
        "epochs_completed": done, "kind": kind, "reason": reason, "diagnosis": diagnosis,
        "data_source": spec.config.data, "failed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


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

    try:
        try:
            if action == "resumed":
                result = fit(resume=spec.run_dir, dataset=dataset, reporter=reporter)
            else:
                result = fit(spec.config, dataset=dataset, out_dir=spec.run_dir, reporter=reporter)
        except TrainingError as exc:
            summary = _failure_summary(spec, exc.kind, str(exc).split("\n", 1)[0], exc.diagnosis or str(exc))
        except torch.OutOfMemoryError as exc:
            summary = _failure_summary(
                spec, "oom", f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'OutOfMemoryError'}",
                "The model, batch and activations do not fit the device's memory. Lower the batch size "
                "(--batch-size), the width (--width-mult) or use bf16 precision; close other programs "
                "using the device.")
        except CifarzooError as exc:
            summary = _failure_summary(spec, "error", str(exc), str(exc))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a bug in one model must not cost the rest of the study
            tb = traceback.format_exc(limit=6)
            summary = _failure_summary(spec, "error", f"{type(exc).__name__}: {exc}", tb)
        else:
            evaluate_for_report(spec, dataset)
            return "finished", result.summary
        write_json(spec.run_dir / "summary.json", summary)
        return "failed", summary
    finally:
        _release_memory()


# --------------------------------------------------------------------------- the study
def run_study(
    models: Sequence[str] | str | None = None,
    *,
    preset: str = "standard",
    seeds: int = 1,
    data: str | None = None,
    out_dir: str | os.PathLike = "study",
    force: bool = False,
    reporter: StudyReporter | None = None,
    dataset=None,
    report: bool = True,
    executor=None,
    **overrides: Any,
) -> StudyResult:
    """Train every (model, seed) of a study that is not done yet, then write its report.

    ``dataset`` (a :class:`cifarzoo.data.Dataset`) skips loading ``data``; every run
    gets the same one. See the module doc for what happens to existing run folders.
    """
    plan = plan_study(models, preset=preset, seeds=seeds, data=data, out_dir=out_dir, **overrides)
    return execute(plan, force=force, reporter=reporter, dataset=dataset, report=report, executor=executor)


def execute(plan: StudyPlan, *, force: bool = False, reporter: StudyReporter | None = None,
            dataset=None, report: bool = True, executor=None) -> StudyResult:
    """Train the runs of ``plan`` that are not done yet, then write the report.

    ``executor`` trains them: :class:`cifarzoo.study.executors.LocalExecutor` (the
    default, one after the other in this process) or ``RayExecutor``.
    """
    reporter = reporter or StudyReporter()
    root = plan.out_dir / RUNS_DIR
    if not force:
        for spec in plan.runs:  # before any training: a mismatch found late would waste hours
            check_compatible(spec)
    if dataset is None:
        from cifarzoo.data import load

        dataset = load(plan.data)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(plan.out_dir / STUDY_FILE, {**plan.to_dict(), "created": _created(plan.out_dir)})
    reporter.on_study_start(plan, dataset)

    total = len(plan.runs)
    states = {}
    for spec in plan.runs:
        if force:
            remove_run_dir(spec.run_dir, root)
            states[spec.name] = "fresh"
        else:
            states[spec.name] = run_state(spec.run_dir)
    to_train = [s for s in plan.runs if states[s.name] in ("fresh", "resume")]
    costs = _costs(to_train, dataset.num_classes)
    outcomes: list[RunOutcome] = []
    jobs = []  # (position, spec, action) of the runs to train, in plan order
    for index, spec in enumerate(plan.runs, start=1):
        state = states[spec.name]
        if state in ("finished", "failed"):
            if state == "finished" and not (spec.run_dir / EVAL_FILE).exists():
                evaluate_for_report(spec, dataset)  # e.g. finished before its evaluation was written
            outcome = RunOutcome(spec, state, "skipped", read_json(spec.run_dir / "summary.json"))
            outcomes.append(outcome)
            reporter.on_run_end(index, total, outcome, None)
            continue
        action = "resumed" if state == "resume" else "trained"
        if action == "trained":
            remove_run_dir(spec.run_dir, root)  # leftovers of a run that never saved an epoch
        jobs.append((index, spec, action))
    # ---- the executor trains the runs (study/executors.py: in this process, or Ray tasks)
    if executor is None:
        from cifarzoo.study.executors import LocalExecutor

        executor = LocalExecutor()
    outcomes += executor.run(jobs, total=total, dataset=dataset, reporter=reporter, costs=costs)
    order = {s.name: i for i, s in enumerate(plan.runs)}
    outcomes.sort(key=lambda o: order[o.spec.name])
    # ---- end of the executor hook

    result = StudyResult(plan, outcomes)
    if report:
        from cifarzoo.study.report import write_report

        result.report = write_report(plan.out_dir, dataset=dataset)
        reporter.on_report(result.report)
    return result


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


def _created(out_dir: Path) -> str:
    """When this study folder was first started (kept across invocations)."""
    p = out_dir / STUDY_FILE
    if p.exists():
        try:
            created = read_json(p).get("created")
            if created:
                return created
        except (CifarzooError, AttributeError):
            pass
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def load_plan(out_dir: str | os.PathLike) -> StudyPlan:
    """The plan recorded in ``out_dir/study.json`` (for ``--report-only``)."""
    out = Path(out_dir)
    p = out / STUDY_FILE
    if not p.exists():
        raise CifarzooError(f"{out}: no study here ({STUDY_FILE} missing); run `cifarzoo benchmark --out {out}` first")
    meta = read_json(p)
    try:
        return plan_study(meta["models"], preset=meta["preset"], seeds=len(meta["seeds"]), data=meta["data"],
                          out_dir=out, **meta.get("overrides", {}))
    except KeyError as exc:
        raise CifarzooError(f"{p}: not a cifarzoo study file (missing {exc})") from None
