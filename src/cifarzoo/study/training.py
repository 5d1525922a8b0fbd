"""Training one run of a study: progress, failures recorded instead of raised, and the
evaluation the report reads (per-class accuracy, confusion, most confidently wrong images).

Used by every executor (:mod:`cifarzoo.study.executors`), in this process or in a Ray worker.
"""
from __future__ import annotations

import gc
import math
import pickle
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cifarzoo.errors import CifarzooError, FolderBusyError, TrainingError
from cifarzoo.io import write_json
from cifarzoo.study.plan import EVAL_FILE, RunSpec, StudyPlan
from cifarzoo.train.config import TrainConfig
from cifarzoo.train.loop import Reporter
from cifarzoo.train.rundir import FAILED, FINISHED, RunDir

TOP_LOSSES = 8  # most confidently wrong test images kept per run


# --------------------------------------------------------------------------- outcomes and progress
@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # "finished" | "failed"
    action: str  # "trained" | "resumed" | "skipped" (kept from an earlier invocation)
    summary: dict = field(default_factory=dict)  # summary.json as written
    wall_seconds: float = 0.0  # this invocation's wall time on the run (training + evaluation)
    where: str = ""  # the machine that trained it, where an executor spreads runs over several


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


# What one layer costs per training step beyond its arithmetic, in multiply-accumulates: fitted
# to one-thread bf16 epochs of the quick preset on a Zen 4 core (vgg16 at batch 128 4.3 s, resnet50
# at batch 32 13 s per 5,000 images: ~0.4 ms per layer per step against ~36 ps per MAC). Narrow
# models at small batches spend most of their time there, not in the arithmetic.
LAYER_STEP_MACS = 1e7


def run_cost(config: TrainConfig, num_classes: int = 10) -> float:
    """A run's relative cost for time estimates and for the order runs start in: per image,
    multiply-accumulates plus each layer's fixed cost per step (LAYER_STEP_MACS) shared over the
    batch, times the epochs.

    Only ratios matter (the training set is the same for every run of a study); a
    model that cannot be sized gets NaN (the study prices it as the average of the others).
    """
    from cifarzoo import models
    from cifarzoo.models.summary import count_macs

    try:
        m = models.from_config(config, num_classes)
        layers = sum(1 for x in m.modules() if next(x.children(), None) is None)
        per_image = float(count_macs(m)) + LAYER_STEP_MACS * layers / (config.batch_size or 512)
        return per_image * config.epochs
    except Exception:  # sizing is only for the estimate
        return float("nan")


def reference_seconds(config: TrainConfig) -> float | None:
    """Seconds of training ``config`` takes on one core of the cpu preset's reference CPU, where its
    throughput was measured at this width and batch (its CoreBudget entry); else None."""
    from cifarzoo.train.config import equal_budgets

    budget = equal_budgets("cpu").get(config.model)
    if budget is None or (budget.width, budget.batch) != (config.width_mult, config.batch_size):
        return None
    return budget.seconds(config.epochs)


class RunProgress(Reporter):
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


def evaluate_for_report(spec: RunSpec, dataset, logits=None) -> dict:
    """The report's evaluation of a finished run on ``dataset``'s test split, written as ``EVAL_FILE``
    (and confusion.json/.png) into its folder.

    ``logits``: the run's final test logits as ``fit`` computed them (``RunResult.test_logits``),
    reused as they are; without them (a run finished by an earlier invocation) the checkpoint
    is loaded and evaluated.
    """
    from cifarzoo.evaluate import eval_result, evaluate, save_eval_result

    try:
        if logits is None:
            r = evaluate(spec.run_dir, dataset=dataset, device=spec.config.device,
                         batch_size=spec.config.eval_batch_size, save=True)
        else:
            r = eval_result(logits, dataset.test_labels, list(dataset.classes), tta=False,
                            data_source=dataset.source, checkpoint=str(RunDir(spec.run_dir).checkpoint_path))
            save_eval_result(r, spec.run_dir, spec.model)
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
        _close_loggers(loggers, "FAILED")
        if not run.config_path.exists():  # failed before fit wrote it: the settings stay checkable
            run.write_config({"config": spec.config.to_dict(), "run_dir": str(run.path)})
        summary = run.failure_summary(model=spec.model, seed=spec.seed, epochs=spec.config.epochs,
                                      data=spec.config.data, kind=kind, reason=reason, diagnosis=diagnosis)
        run.write_summary(summary)
        return FAILED, summary

    loggers = []
    try:
        callbacks = pickle.loads(spec.callbacks) if spec.callbacks else []  # this run's own copy
        if spec.tracking is not None:  # built here: in a worker process or Ray task, from plain data
            loggers = spec.tracking.loggers()
            callbacks = [*callbacks, *loggers]
        if action == "resumed":
            result = fit(resume=spec.run_dir, dataset=dataset, reporter=reporter, callbacks=callbacks)
        else:
            result = fit(spec.config, dataset=dataset, out_dir=spec.run_dir, reporter=reporter, callbacks=callbacks)
    except FolderBusyError:  # another process trains this run: its folder is not ours to write
        raise
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
    evaluate_for_report(spec, dataset, logits=result.test_logits)  # fit's final pass: no second evaluation
    return FINISHED, result.summary


def _close_loggers(loggers: list, status: str) -> None:
    """End the run's loggers as failed (an interrupted one's end as KILLED when its process exits)."""
    if loggers:
        from cifarzoo.tracking import close_all

        close_all(loggers, status)
