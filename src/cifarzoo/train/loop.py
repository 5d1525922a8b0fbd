"""``fit``: the one training loop every model and every command goes through.

    fit = set_up(...)              -> a Trainer: device, data split, model, TrainStep, loader, run folder
        + per epoch:
            train_one_epoch(...)     step, record, guards, callbacks, Ctrl-C check: one plain loop
            end_epoch(...)           validate(...), callbacks' on_epoch_end, checkpoint, metrics.csv
        + finish(...)              final test evaluation, checkpoint, summary.json, curves.png

Only training is timed. Before the clock starts, :func:`warm_up` runs a few steps on
real batches (torch.compile's first compilation, cuDNN's algorithm search, lazy kernel
loading) and puts every piece of state back exactly as it was, so a warmed-up run
equals an unwarmed one; its time is reported apart (``warmup_seconds``,
``compile_seconds``).

Each batch goes through the one :class:`TrainStep` (zero_grad / forward under autocast /
loss / backward / step / schedule), and the batch statistics stay on the device so that
the step never waits for the host. Evaluation is not counted in training time; it runs
every ``eval_every`` epochs and after the last, where one pass over the test set per
view gives the plain and the TTA results together. An atomic checkpoint is written every
``checkpoint_every`` epochs, at the end and on Ctrl-C, so an interrupted run resumes
from its last checkpoint to the same result as an uninterrupted one (bit-for-bit on CPU).

Ctrl-C at any point after the first step keeps every completed step: mid-epoch,
:func:`train_one_epoch` saves the state after the last completed step; once an epoch's
steps are done and until its row is recorded (its evaluation included), :func:`fit`
saves them as that state, and the evaluation is done again on resume; from then on, it
saves the epoch's end. Recording an epoch (the callbacks' ``on_epoch_end`` included) and
writing the final record hold a Ctrl-C until they are done, so that no file is left
without the others. An exception from a callback keeps the progress in the same way.

Callbacks (:mod:`cifarzoo.train.callbacks`) read, and may stop the run (``StopTraining``):
it then ends as a finished one does, with ``status: "stopped"``. ``early_stopping`` and
``keep_best`` select on the validation split only; the state they need (the callbacks'
states, the best epoch's weights, a stop request) is part of the checkpoint.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from cifarzoo import __version__
from cifarzoo.data import Dataset
from cifarzoo.device import (choose_precision, device_name, peak_memory_bytes, resolve_compile, resolve_device,
                             resolve_threads, synchronize)
from cifarzoo.errors import CifarzooError
from cifarzoo.inference import loss_and_accuracy, predict_logits, predict_tta_logits
from cifarzoo.train import distributed as dist_mod
from cifarzoo.train import guards
from cifarzoo.train.callbacks import Callback, Callbacks, EarlyStopping, check_callbacks
from cifarzoo.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from cifarzoo.train.config import WARMUP_STEPS, TrainConfig
from cifarzoo.train.guards import EpochStats
from cifarzoo.train.interrupt import DeferredInterrupt
from cifarzoo.train.rundir import STOPPED, RunDir, run_folder, timestamp
from cifarzoo.train.step import TrainStep, build_model, make_step

Reporter = Callback  # the name of before callbacks, kept for one release


# --------------------------------------------------------------------------- the run
def fit(
    config: TrainConfig | None = None,
    *,
    dataset: Dataset | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    callbacks: list[Callback] | None = None,
    reporter: Callback | None = None,
    runs_root: str | os.PathLike = "runs",
    force: bool = False,
) -> RunResult:
    """Train ``config.model`` as ``config`` says and leave a run folder; returns its summary.

    ``resume`` continues the run in that folder from its last checkpoint (its saved
    config wins; ``config`` may be None). ``out_dir`` holding a run already is an error
    unless ``force`` (it is then overwritten); a folder another process is training
    into is always an error (one writer per run folder, see RunDir.claim). Raises
    :class:`TrainingError` for a non-finite loss, a stalled or a diverged run; re-raises
    KeyboardInterrupt after writing a resumable checkpoint (the state between two steps),
    and so an exception from one of ``callbacks`` (see :mod:`cifarzoo.train.callbacks`).
    ``reporter``: the progress hook of before callbacks, kept for one release as it was
    (called on every rank; its exceptions propagate without a save, as a crash does).
    """
    ckpt = None
    dist = dist_mod.current()
    if resume is not None:
        ckpt, config, out_dir = _open_resume(resume, dist)
    if config is None:
        raise CifarzooError("fit() needs a config or a run folder to resume")
    user = check_callbacks(callbacks, "val" if config.val_split else "test")
    if config.early_stopping is not None:  # the setting's own callback: first, so its state's key is stable
        user = [EarlyStopping("val_acc", patience=config.early_stopping), *user]
    hooks = Callbacks(user if dist.is_main else [], legacy=reporter)  # rank 0's only, under torchrun
    out_dir = run_folder(config.model, out_dir, runs_root)
    lock = _claim(RunDir(out_dir), dist, fresh=ckpt is None, force=force)
    try:
        trainer = set_up(config, dataset=dataset, out_dir=out_dir, ckpt=ckpt, callbacks=hooks)
        hooks.on_start(trainer.info)
        _share_stop_request(trainer)
        try:
            for epoch in range(trainer.epoch, trainer.config.epochs):
                if trainer.stop_reason is not None:
                    break
                seconds, stats = train_one_epoch(trainer, epoch)
                end_epoch(trainer, epoch, seconds, stats)
            summary = finish(trainer)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) or _callback_failed(trainer, exc):
                _keep_progress(trainer)
            raise
    finally:
        if lock is not None:
            lock.release()
    hooks.on_end({**summary, "run_dir": str(trainer.run.path)})
    return RunResult(trainer.run.path, summary, trainer.metrics, test_logits=trainer.final_logits[0])


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    metrics: list[dict]
    test_logits: torch.Tensor | None = None  # (N, C) the final weights' plain test logits, for the study report


def _callback_failed(trainer: Trainer, exc: BaseException) -> bool:
    """Whether ``exc`` is an error a callback raised whose run can keep its progress. Under torchrun the
    other ranks are inside the next step's collectives: the run ends there as after a crash."""
    return trainer.callbacks.error is exc and not trainer.dist.enabled


def _share_stop_request(trainer: Trainer) -> None:
    """A callback's stop request (rank 0's) on every rank."""
    reason = dist_mod.broadcast_object(trainer.callbacks.stop_reason)
    if trainer.stop_reason is None and reason is not None:
        trainer.stop_reason = reason


# --------------------------------------------------------------------------- one epoch
def train_one_epoch(trainer: Trainer, epoch: int) -> tuple[float, EpochStats]:
    """One epoch's steps (from where a resumed epoch stopped); returns (its training seconds, its statistics).

    Ctrl-C or a callback's error saves a mid-epoch checkpoint (the state after the last completed
    step) and propagates.
    """
    step, device, steps, callbacks = trainer.step, trainer.device, trainer.steps_per_epoch, trainer.callbacks
    stats, first_step, seconds_before = _epoch_stats(trainer, epoch)
    check = guards.Guards(stats, epoch=epoch, first_step=first_step, steps=steps,
                          num_classes=trainer.dataset.num_classes, checkpoint=trainer.run.checkpoint_path,
                          nan_every=1 if device.type == "cpu" else max(1, trainer.config.nan_check_every),
                          stall_steps=trainer.config.stall_steps, stall_checked=trainer.stall_checked)
    trainer.loader.set_epoch(epoch)
    callbacks.on_epoch_start(epoch + 1, steps)
    synchronize(device)
    t0 = time.perf_counter()
    try:
        with DeferredInterrupt() as interrupt:
            step.train()
            for i, (x, y) in enumerate(trainer.loader.iter_from(first_step), start=first_step):
                stats.at = i
                loss, logits = step(x, y)  # zero_grad / forward under autocast / loss / backward / step / schedule
                stats.record(i, loss, logits, y)
                if trainer.first_step_seconds is None and trainer.compiled:
                    # The first call of the compiled model compiles it: timed apart (one sync per run).
                    synchronize(device)
                    trainer.first_step_seconds = time.perf_counter() - t0
                check.after_step(i, step.global_step, step.model)
                callbacks.on_step(epoch + 1, i + 1, steps, step.global_step)
                interrupt.check(i, steps)  # a Ctrl-C during the step is raised here, between two steps
        synchronize(device)
        seconds = seconds_before + time.perf_counter() - t0
        trainer.unrecorded = (stats, seconds)  # from here a Ctrl-C keeps these steps (see _keep_progress)
    except BaseException as exc:
        if trainer.unrecorded is None and (isinstance(exc, KeyboardInterrupt) or _callback_failed(trainer, exc)):
            _save_interrupted(trainer, epoch, stats, check, seconds_before + time.perf_counter() - t0)
        raise
    trainer.stall_checked = check.stall_checked
    trainer.steps_this_process += steps - first_step
    trainer.seconds_this_process += seconds - seconds_before
    trainer.partial = None
    return seconds, stats


def _epoch_stats(trainer: Trainer, epoch: int) -> tuple[EpochStats, int, float]:
    """(the epoch's statistics, its first step, its training seconds so far): those saved mid-epoch
    when resuming that epoch, else zeros."""
    stats = EpochStats.zeros(trainer.steps_per_epoch, trainer.device)
    first_step, seconds_before = 0, 0.0
    if trainer.partial is not None and epoch == trainer.epoch:
        first_step, seconds_before = int(trainer.partial["step"]), float(trainer.partial["epoch_seconds"])
        for name in ("loss", "correct", "count"):
            getattr(stats, name).copy_(trainer.partial[f"step_{name}"].to(trainer.device))
    stats.at = first_step
    return stats, first_step, seconds_before


def _every(k: int, epochs_done: int) -> bool:
    return k > 0 and epochs_done % k == 0


def end_epoch(trainer: Trainer, epoch: int, seconds: float, stats: EpochStats) -> dict:
    """Share BN statistics across ranks, evaluate (every ``eval_every`` epochs and the last), record
    the epoch (and the best weights with ``keep_best``), call the callbacks' ``on_epoch_end``,
    checkpoint (every ``checkpoint_every`` epochs) and write metrics.csv; returns its metrics row.

    A row of an epoch without evaluation has NaN eval columns (empty in metrics.csv).
    The last epoch's evaluation on the test set is the final pass of :func:`finish`.
    """
    config = trainer.config
    dist_mod.broadcast_buffers(trainer.step.model)  # BN running statistics: rank 0's on every rank
    if trainer.step.ema is not None:
        dist_mod.broadcast_buffers(trainer.step.ema)
    sums = dist_mod.all_reduce_sum(torch.stack([stats.loss.sum(), stats.correct.sum(), stats.count.sum()]))
    seen = sums[2].item()
    eval_loss, eval_acc = validate(trainer, last=epoch + 1 == config.epochs,
                                   due=_every(config.eval_every, epoch + 1))
    row = {
        "epoch": epoch + 1, "lr": trainer.step.optimizer.param_groups[0]["lr"],
        # Per-step losses are batch means: average them over steps (and ranks).
        "train_loss": sums[0].item() / (trainer.steps_per_epoch * trainer.dist.world_size),
        "train_acc": sums[1].item() / max(1.0, seen), "eval_loss": eval_loss, "eval_acc": eval_acc,
        "epoch_seconds": seconds, "elapsed_seconds": trainer.train_seconds + seconds,
        "images_per_second": seen / seconds if seconds > 0 else float("nan"),
    }
    with DeferredInterrupt():  # the epoch is recorded whole (a Ctrl-C is raised once it is)
        # One assignment: even a second Ctrl-C finds the epoch recorded or not, never half.
        trainer.metrics, trainer.epoch, trainer.train_seconds, trainer.best, trainer.unrecorded = (
            [*trainer.metrics, row], epoch + 1, trainer.train_seconds + seconds, _best(trainer, row), None)
        # Before the checkpoint, which holds their states and a stop request; an exception from
        # them finds the epoch recorded, and fit keeps it (_keep_progress).
        trainer.callbacks.on_epoch_end({**row, "eval_split": trainer.split.eval_name})
        _share_stop_request(trainer)
        if _every(config.checkpoint_every, epoch + 1):  # finish() writes the last one in any case
            trainer.save(epoch + 1)
        if trainer.dist.is_main:
            trainer.run.write_metrics(trainer.metrics)
    return row


def _best(trainer: Trainer, row: dict) -> dict | None:
    """With ``keep_best``: {"epoch", "eval_acc", "state_dict" (a CPU copy)} of the epoch with the best
    validation accuracy so far (the earliest of equals); else None."""
    if not trainer.config.keep_best:
        return None
    acc, best = row["eval_acc"], trainer.best
    if math.isnan(acc) or (best is not None and acc <= best["eval_acc"]):
        return best
    weights = {k: v.detach().to("cpu", copy=True) for k, v in trainer.step.eval_model.state_dict().items()}
    return {"epoch": int(row["epoch"]), "eval_acc": float(acc), "state_dict": weights}


def validate(trainer: Trainer, *, last: bool, due: bool) -> tuple[float, float]:
    """(loss, accuracy) of the weights on the epoch's evaluation split, when ``due`` or ``last``; else NaNs.

    The last epoch's evaluation on the test set is the final pass (:func:`_final_pass`), kept
    for :func:`finish`: one pass gives the plain and the TTA results.
    """
    split, outputs = trainer.split, trainer.step.outputs
    if last and split.eval_name == "test":
        trainer.final_logits = _final_pass(trainer)
        return loss_and_accuracy(trainer.final_logits[0], split.eval_y, outputs)
    if last or due:
        return loss_and_accuracy(_predict(trainer, split.eval_x), split.eval_y, outputs)
    return math.nan, math.nan


# --------------------------------------------------------------------------- interrupted
def _keep_progress(trainer: Trainer) -> None:
    """After Ctrl-C outside an epoch's steps (train_one_epoch saves those): keep an epoch trained but not
    recorded (its evaluation is done again on resume), or else the last recorded epoch, in the
    checkpoint and metrics.csv, unless they hold it already or the run's record is complete."""
    if trainer.unrecorded is not None:
        stats, seconds = trainer.unrecorded
        if trainer.saved != (trainer.epoch, trainer.steps_per_epoch, False):
            _save_interrupted(trainer, trainer.epoch, stats, None, seconds)
        return
    at_epoch_end = trainer.step.global_step == trainer.epoch * trainer.steps_per_epoch and not trainer.step.torn
    complete = (trainer.run.read_summary() or {}).get("status") in ("finished", STOPPED)
    if trainer.epoch == 0 or not at_epoch_end or complete:
        return
    if trainer.saved != (trainer.epoch, 0, False):
        trainer.save(trainer.epoch)
    if trainer.dist.is_main:
        trainer.run.write_metrics(trainer.metrics)


def _save_interrupted(trainer: Trainer, epoch: int, stats: EpochStats, check: guards.Guards | None,
                      seconds: float) -> None:
    """After Ctrl-C mid-epoch: save the state between the last completed step and the next, so that
    --resume continues from there exactly. Interrupted while the weights were being updated (a second
    Ctrl-C), the state is torn: nothing is saved and the last checkpoint stays. ``check``: the guards
    of steps not yet checked (None: all were)."""
    done = trainer.step.global_step - epoch * trainer.steps_per_epoch
    if trainer.step.torn or stats.steps_done() != done:
        return
    if check is not None:
        check.check_finite(done)
    trainer.save(epoch, {"step": done, "step_loss": stats.loss.cpu(), "step_correct": stats.correct.cpu(),
                         "step_count": stats.count.cpu(), "epoch_seconds": seconds})


def _predict(trainer: Trainer, images: np.ndarray) -> torch.Tensor:
    config = trainer.config
    return predict_logits(trainer.step.eval_model, images, trainer.dataset.mean, trainer.dataset.std,
                          device=trainer.device, batch_size=config.eval_batch_size, precision=trainer.precision,
                          channels_last=config.channels_last)


# Every reported figure of a run (summary.json, the last point of its curves, the study report) is computed
# in this precision, as `evaluate` computes it: one accuracy per model and split, whatever the run trained in.
REPORTED_PRECISION = "fp32"


def _final_pass(trainer: Trainer) -> dict[int, torch.Tensor]:
    """{0: plain, 1: flip TTA, and ``tta_level``'s} test logits of the final weights, in
    :data:`REPORTED_PRECISION`: one forward over the test set per view (the plain logits are one of the views)."""
    config = trainer.config
    return predict_tta_logits(trainer.step.eval_model, trainer.dataset.test_images, trainer.dataset.mean,
                              trainer.dataset.std, levels=sorted({0, 1, config.tta_level}), device=trainer.device,
                              batch_size=config.eval_batch_size, precision=REPORTED_PRECISION,
                              channels_last=config.channels_last)


# --------------------------------------------------------------------------- the end
def finish(trainer: Trainer) -> dict:
    """Final evaluation on the test set and summary.json. The weights evaluated are the last epoch's, or
    with ``keep_best`` those of the epoch with the best validation accuracy (never chosen on the test set)."""
    from cifarzoo import models
    from cifarzoo.models.summary import count_macs

    config, dataset = trainer.config, trainer.dataset
    labels = dataset.test_labels
    if trainer.best is not None:
        load_weights(trainer.step.eval_model, trainer.best["state_dict"], "the best epoch's weights")
    if trainer.final_logits is None:  # evaluated on --val-split, or no epoch ran in this process
        trainer.final_logits = _final_pass(trainer)
    final = trainer.final_logits
    test_loss, test_acc = loss_and_accuracy(final[0], labels, trainer.step.outputs)
    test_loss_tta, test_acc_tta = loss_and_accuracy(final[1], labels, trainer.step.outputs)
    peak, peak_kind = peak_memory_bytes(trainer.device)
    macs = count_macs(models.from_config(config, dataset.num_classes))
    images_seen = sum(r["images_per_second"] * r["epoch_seconds"] for r in trainer.metrics)
    summary = {
        "model": config.model, "status": "finished", "epochs": config.epochs, "seed": config.seed,
        "test_acc": test_acc, "test_loss": test_loss, "test_acc_tta": test_acc_tta, "test_loss_tta": test_loss_tta,
        "final_eval_acc": trainer.metrics[-1]["eval_acc"] if trainer.metrics else math.nan,
        "eval_split": trainer.split.eval_name,
        "train_seconds": trainer.train_seconds,
        "images_per_second": images_seen / trainer.train_seconds if trainer.train_seconds > 0 else math.nan,
        "compiled": bool(trainer.compiled), "compile_seconds": _compile_cost(trainer),
        "warmup_seconds": trainer.warmup_seconds,
        "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
        "parameters": trainer.info["parameters"], "macs": int(macs), "precision": trainer.precision,
        "eval_precision": REPORTED_PRECISION,  # of test_acc & co, as `cifarzoo evaluate` computes them
        "precision_reason": trainer.info.get("precision_reason"), "threads": trainer.info.get("threads"),
        "device": trainer.info["device_name"], "world_size": trainer.dist.world_size, "data_source": dataset.source,
        "train_images": int(len(trainer.split.train_y)), "finished": timestamp(),
    }
    summary.update(_ending(trainer))
    summary["stall_check"] = ("allowed to stall" if config.allow_stall else "passed" if trainer.stall_checked
                              else "not run (too few steps)")
    summary["warnings"] = guards.run_warnings(
        stall_checked=trainer.stall_checked, allow_stall=config.allow_stall,
        steps=trainer.steps_per_epoch * config.epochs, acc=test_acc, num_classes=dataset.num_classes,
        n_images=len(labels))
    if config.tta_level == 2:  # multi-crop TTA, from the same pass
        summary["tta_level"] = 2
        summary["test_loss_tta_level"], summary["test_acc_tta_level"] = loss_and_accuracy(final[2], labels,
                                                                                          trainer.step.outputs)
    with DeferredInterrupt():  # checkpoint, summary and curves are written together (a Ctrl-C waits)
        trainer.save(trainer.epoch, finished=True)
        if trainer.dist.is_main:
            trainer.run.write_summary(summary)
            title = f"{config.model} (width {config.width_mult}, seed {config.seed})"
            trainer.run.write_curves(trainer.metrics, title=title)
    return summary


def _ending(trainer: Trainer) -> dict:
    """How the run ended: stopped by a callback (and why), the epochs it trained, whose weights it ends with."""
    out = {"epochs_completed": trainer.epoch, "stop_reason": trainer.stop_reason,
           "weights_epoch": trainer.best["epoch"] if trainer.best is not None else trainer.epoch}
    if trainer.best is not None:
        out["weights_eval_acc"] = trainer.best["eval_acc"]  # on the validation split
    if trainer.stop_reason is not None:
        out["status"] = STOPPED
    return out


# --------------------------------------------------------------------------- data
class Split(NamedTuple):
    """The images a run trains on and evaluates on each epoch (uint8 NHWC, int64 labels)."""

    train_x: np.ndarray
    train_y: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    eval_name: str  # "test", or "val" with --val-split


def split_dataset(ds: Dataset, config: TrainConfig) -> Split:
    """Apply ``subset`` and ``val_split``; returns a :class:`Split`.

    ``subset`` keeps the first N//C images of each class (the remainder to the first
    classes), in their original order. ``val_split`` holds out the *last* images of
    each class of that training set (a count, or a fraction of it). The test set is never touched here.
    """
    x, y = ds.train_images, ds.train_labels
    n_classes = ds.num_classes

    def balanced_take(labels: np.ndarray, n: int, from_end: bool) -> np.ndarray:
        per = [n // n_classes + (1 if k < n % n_classes else 0) for k in range(n_classes)]
        keep = []
        for k in range(n_classes):
            idx = np.flatnonzero(labels == k)
            if len(idx) < per[k]:
                raise CifarzooError(
                    f"cannot take {n} class-balanced images: class {ds.classes[k]!r} has only {len(idx)}")
            keep.append(idx[len(idx) - per[k]:] if from_end else idx[:per[k]])
        return np.sort(np.concatenate(keep))

    if config.subset is not None:
        if config.subset > len(y):
            raise CifarzooError(f"--subset {config.subset} exceeds the {len(y)} training images")
        idx = balanced_take(y, config.subset, from_end=False)
        x, y = x[idx], y[idx]
    if config.val_split:
        n_val = config.val_split if isinstance(config.val_split, int) else max(1, round(config.val_split * len(y)))
        if n_val >= len(y):
            raise CifarzooError(f"--val-split {config.val_split} leaves no training images (have {len(y)})")
        val_idx = balanced_take(y, n_val, from_end=True)
        mask = np.ones(len(y), dtype=bool)
        mask[val_idx] = False
        return Split(x[mask], y[mask], x[val_idx], y[val_idx], "val")
    return Split(x, y, ds.test_images, ds.test_labels, "test")


def auto_batch_size(n_train: int) -> int:
    """512, or for small training sets the largest power of two giving >= 32 steps per epoch (at least 32).

    The recipes' batch of 512 suits the 50,000 CIFAR-10 images (97 steps per epoch);
    on the bundled 5,000-image sample it would leave 9 steps per epoch, too few to learn.
    """
    b = 512
    while b > 32 and n_train // b < 32:
        b //= 2
    return b


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- the trainer's state
@dataclass
class Trainer:
    """A run, set up by :func:`set_up`: everything the epoch loop and ``finish`` need, and where it stands."""

    config: TrainConfig
    dataset: Dataset
    split: Split
    device: torch.device
    precision: str
    dist: dist_mod.DistInfo
    loader: object  # cifarzoo.data.loader.DeviceLoader
    step: TrainStep
    run: RunDir
    info: dict  # config.json
    compiled: bool
    why: dict = field(default_factory=dict)  # {"precision": why that precision, "threads": why that many}
    callbacks: Callbacks = field(default_factory=Callbacks)
    # where the run stands (restored on resume)
    epoch: int = 0  # epochs finished
    partial: dict | None = None  # the unfinished epoch's saved statistics (mid-epoch resume)
    metrics: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    stall_checked: bool = False
    stop_reason: str | None = None  # a callback asked the run to stop (StopTraining's message)
    best: dict | None = None  # keep_best: {"epoch", "eval_acc", "state_dict"} of the best epoch so far
    # this process's timing, for the compile-time estimate
    first_step_seconds: float | None = None
    steps_this_process: int = 0
    seconds_this_process: float = 0.0
    # the untimed warm-up of this process (None: not warmed up)
    warmup_seconds: float | None = None
    warmup_compile_seconds: float | None = None
    final_logits: dict | None = None  # {tta level: test logits} of the final weights, once computed
    # Ctrl-C bookkeeping (see _keep_progress)
    unrecorded: tuple[EpochStats, float] | None = None  # (stats, seconds) of an epoch trained, not yet recorded
    saved: tuple[int, int, bool] | None = None  # (epochs, partial steps, finished) of the checkpoint on disk

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def checkpoint(self, epochs_done: int, partial: dict | None, finished: bool) -> dict:
        """The checkpoint payload (keys listed in :mod:`cifarzoo.train.checkpoint`)."""
        config, dataset = self.config, self.dataset
        states = self.callbacks.state_dict()
        return {
            "model": {"name": config.model, "kwargs": {"num_classes": dataset.num_classes,
                                                       "width_mult": config.width_mult, **config.model_kwargs}},
            "classes": list(dataset.classes),
            "normalization": {"mean": list(dataset.mean), "std": list(dataset.std)},
            "config": config.to_dict(),
            "metrics": self.metrics,
            "epoch": epochs_done,
            **self.step.state_dict(),
            "rng": _rng_state(self.device),
            "partial": partial,
            "train_seconds": self.train_seconds,
            "finished": finished,
            "data_source": dataset.source,
            **({"callbacks": states} if states else {}),
            **({"stop_reason": self.stop_reason} if self.stop_reason is not None else {}),
            **({"best": self.best} if self.best is not None else {}),
        }

    def save(self, epochs_done: int, partial: dict | None = None, finished: bool = False) -> None:
        if self.dist.is_main:
            save_checkpoint(self.run.checkpoint_path, self.checkpoint(epochs_done, partial, finished))
        dist_mod.barrier()
        self.saved = (epochs_done, partial["step"] if partial else 0, finished)

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint (its schema checked on load): weights, optimizer, schedule, EMA,
        lookahead, scaler, RNG, progress, callbacks' states, best weights. Parts that do not fit this
        run are refused with one line."""
        where = f"{ckpt.get('path', 'checkpoint')}: damaged checkpoint"
        load_weights(self.step.model, ckpt.get("train_state_dict", ckpt["state_dict"]),
                     f"{where}: its weights do not fit the run's model {self.config.model!r}")
        partial = ckpt.get("partial")
        # step == steps: interrupted after an epoch's last step, before its end (evaluation, checkpoint)
        if partial is not None and not (partial["step"] <= self.steps_per_epoch == len(partial["step_loss"])):
            raise CifarzooError(f"{where}: 'partial' stopped at step {partial['step']} of an epoch of "
                                f"{len(partial['step_loss'])} steps; this run's epochs have {self.steps_per_epoch}")
        if "best" in ckpt:
            load_weights(copy.deepcopy(self.step.eval_model), ckpt["best"]["state_dict"],
                         f"{where}: its best epoch's weights do not fit the run's model {self.config.model!r}")
        try:
            self.step.load_state_dict(ckpt)
            _set_rng_state(ckpt["rng"], self.device)
            self.callbacks.load_state_dict(ckpt.get("callbacks", {}))
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise CifarzooError(f"{where}: its optimizer, schedule, averaged weights, random state or callbacks' "
                                f"states do not fit the run ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:120]})") from None
        self.metrics = list(ckpt.get("metrics", []))
        self.epoch = int(ckpt["epoch"])
        self.partial = ckpt.get("partial")
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        self.stop_reason, self.best = ckpt.get("stop_reason"), ckpt.get("best")
        start_step = int(self.partial["step"]) if self.partial else 0
        self.step.global_step = self.epoch * self.steps_per_epoch + start_step
        self.saved = (self.epoch, start_step, False)


# --------------------------------------------------------------------------- set-up
def _open_resume(resume: str | os.PathLike, dist: dist_mod.DistInfo) -> tuple[dict, TrainConfig, Path]:
    """(checkpoint, its saved config, its run folder) of a run to continue.

    Rank 0 reads the checkpoint and sends it to every rank: on other machines of a
    multi-node run the run folder need not exist.
    """
    ckpt = dist_mod.broadcast_object(load_checkpoint(resume, resume=True) if dist.is_main else None)
    if ckpt.get("finished"):
        raise CifarzooError(f"{resume}: this run already finished all its epochs; nothing to resume")
    folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    return ckpt, TrainConfig.from_dict(ckpt["config"]), folder


def _set_up_device(config: TrainConfig, dist: dist_mod.DistInfo) -> tuple[torch.device, str, dict]:
    """(device, precision, why each setting) of this process; sets torch's CPU threads and seeds torch
    and numpy from the config."""
    device = resolve_device(config.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    threads, why_threads = resolve_threads(config.threads)
    torch.set_num_threads(threads)
    precision, why_precision = choose_precision(config.precision, device)
    if device.type == "cuda":  # no CPU stand-in: every fit stage of benchmarks/gpu_benchmark.sh runs it
        torch.cuda.reset_peak_memory_stats(device)  # one study process runs many fits
        # drop_last keeps every training batch the same shape: cuDNN's algorithm search
        # runs once per layer (in the untimed warm-up) and pays off on every later step.
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    return device, precision, {"precision": why_precision, "threads": f"{threads}: {why_threads}"}


def _run_info(trainer: Trainer) -> dict:
    """config.json: every setting, the data, the device and the versions."""
    dataset, split = trainer.dataset, trainer.split
    return {
        "config": trainer.config.to_dict(),
        "run_dir": str(trainer.run.path),
        "data": {
            "source": dataset.source, "classes": list(dataset.classes),
            "mean": list(dataset.mean), "std": list(dataset.std),
            "train_images": int(len(split.train_y)), "eval_images": int(len(split.eval_y)),
            "eval_split": split.eval_name,
            "test_images": int(len(dataset.test_labels)),
        },
        "device": str(trainer.device), "device_name": device_name(trainer.device), "precision": trainer.precision,
        "precision_reason": trainer.why.get("precision"), "threads": torch.get_num_threads(),
        "threads_reason": trainer.why.get("threads"),
        "compiled": bool(trainer.compiled), "world_size": trainer.dist.world_size,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                     "cifarzoo": __version__},
        "parameters": int(sum(p.numel() for p in trainer.step.model.parameters())),
        "steps_per_epoch": trainer.steps_per_epoch,
        "started": timestamp(),


    }


def set_up(config: TrainConfig, *, dataset: Dataset | None, out_dir: str | os.PathLike, ckpt: dict | None = None,
           callbacks: Callbacks | None = None) -> Trainer:
    """Everything before the first step: device, data split, model (whitened stem), the TrainStep
    (optimizer, schedule, EMA, lookahead, scaler, DDP, compile), resumed state (``callbacks``' included)
    and the run folder ``out_dir`` (named by :func:`fit`)."""
    from cifarzoo.data.arrays import load_run_data
    from cifarzoo.data.loader import DeviceLoader, input_normalization, normalize

    dist = dist_mod.current()
    device, precision, why = _set_up_device(config, dist)
    ds = dataset if dataset is not None else load_run_data(config.data, labels=config.labels, run=out_dir)
    ds, train_mean, train_std = input_normalization(ds, config.normalize)
    split = split_dataset(ds, config)
    if config.batch_size is None:
        # Saved resolved, so config.json and a resumed run state the batch actually used.
        config = config.replace(batch_size=auto_batch_size(len(split.train_y)))
    dist_mod.check_world(config.batch_size, dist.world_size, sync_bn=config.sync_bn, device_type=device.type)
    if config.batch_size > len(split.train_y):
        raise CifarzooError(f"--batch-size {config.batch_size} exceeds the {len(split.train_y)} training images; "
                            f"give a smaller --batch-size")

    whiten = None
    if ckpt is None and config.whiten_init:
        n = min(len(split.train_x), 5000)
        whiten = normalize(torch.from_numpy(split.train_x[:n]), ds.mean, ds.std)
    model = build_model(config, ds.num_classes, device, whiten_images=whiten)
    if dist.enabled and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    half = prenormalized_dtype(device, precision)
    loader = DeviceLoader(
        split.train_x, split.train_y, batch_size=config.batch_size, mean=train_mean, std=train_std, device=device,
        train=True, augment=config.augment, cutout_size=config.cutout_size, crop_pad=config.crop_pad,
        seed=config.seed, channels_last=config.channels_last, rank=dist.rank, world_size=dist.world_size,
        prenormalize=half is not None, dtype=half or torch.float32,
    )
    if len(loader) == 0:
        raise CifarzooError(f"--batch-size {config.batch_size} gives no full batch of the "
                            f"{len(split.train_y)} training images")
    total_steps = len(loader) * config.epochs
    compiled = resolve_compile(config.compile, device, total_steps)
    step = make_step(model, config, device, total_steps=total_steps, steps_per_epoch=len(loader),
                     precision=precision, compile=compiled, ddp=dist.enabled)

    run = RunDir(out_dir)
    trainer = Trainer(config, ds, split, device, precision, dist, loader, step, run, {}, compiled, why,
                      callbacks=callbacks or Callbacks())
    if ckpt is not None:
        trainer.restore(ckpt)
    trainer.stall_checked = _stall_judged(trainer)
    trainer.info = _run_info(trainer)
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        if ckpt is None or not run.config_path.exists():
            run.write_config(trainer.info)
    if wants_warm_up(config, device, compiled):
        warm_up(trainer)
    return trainer


def _stall_judged(trainer: Trainer) -> bool:
    """Whether the stall check has nothing left to judge: --allow-stall, or a resumed run judged before it
    was interrupted (the check is made at the end of an epoch's steps: those of an epoch interrupted
    in its evaluation count)."""
    config, steps = trainer.config, trainer.steps_per_epoch
    epoch_ends = trainer.step.global_step // steps * steps
    return config.allow_stall or (config.stall_steps is None and epoch_ends >= max(steps, guards.MIN_STALL_STEPS))


def prenormalized_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype the training split is kept in, normalized once (None: uint8, normalized per batch).

    On a GPU in half precision (airbench): no batch pays for normalization, and the model
    gets the dtype autocast would cast to. On CPU and in fp32 the per-batch path is kept
    (tests force this on CPU, monkeypatched, to train through the GPU's data path).
    """
    if device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def wants_warm_up(config: TrainConfig, device: torch.device, compiled: bool) -> bool:
    """``warmup`` auto: when compiled or on CUDA, where the first steps pay one-time costs.

    In eager mode on CPU there is nothing to amortize (no compilation, no cuDNN search,
    no lazy kernel loading), so the warm-up steps would only cost time.
    """
    return config.warmup == "on" or (config.warmup == "auto" and (compiled or device.type == "cuda"))


def warm_up(trainer: Trainer, steps: int = WARMUP_STEPS) -> None:
    """Run ``steps`` untimed steps on the next epoch's first batches, then restore everything.

    The model (BN buffers included), EMA, lookahead, optimizer, schedule, grad scaler,
    step count, RNG and the loader's epoch are put back exactly as they were, so the run
    continues as if the warm-up never happened. Sets ``trainer.warmup_seconds`` and
    ``trainer.warmup_compile_seconds``: the first step's time beyond the later ones'
    (torch.compile's compilation, cuDNN's search, lazy loading).
    """
    step, loader, device = trainer.step, trainer.loader, trainer.device
    saved = copy.deepcopy(step.state_dict())  # copies: the steps below update these tensors in place
    global_step, rng, loader_epoch = step.global_step, _rng_state(device), loader.epoch
    loader.set_epoch(trainer.epoch)
    step.train()
    times = []
    for x, y in itertools.islice(loader.iter_from(0), max(1, min(steps, len(loader)))):
        synchronize(device)
        t0 = time.perf_counter()
        step(x, y)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    step.load_state_dict(saved)
    step.global_step = global_step
    _set_rng_state(rng, device)
    loader.set_epoch(loader_epoch)
    trainer.warmup_seconds = sum(times)
    typical = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else 0.0
    trainer.warmup_compile_seconds = max(0.0, times[0] - typical)


def _compile_cost(trainer: Trainer) -> float | None:
    """torch.compile's one-time cost: measured in the warm-up (outside train_seconds), or
    without a warm-up estimated from the first compiled step (inside train_seconds)."""
    if not trainer.compiled:
        return None
    if trainer.warmup_seconds is not None:
        return trainer.warmup_compile_seconds
    return _compile_seconds(trainer.first_step_seconds, trainer.seconds_this_process, trainer.steps_this_process)


def _claim(run: RunDir, dist: dist_mod.DistInfo, *, fresh: bool, force: bool):
    """Rank 0 becomes the run folder's one writer (RunDir.claim); every rank raises if it cannot."""
    lock, error = None, None
    if dist.is_main:
        try:
            lock = run.claim(fresh=fresh, force=force)
        except CifarzooError as exc:
            error = (type(exc), str(exc))
    error = dist_mod.broadcast_object(error)
    if error:
        raise error[0](error[1])
    return lock


def _compile_seconds(first_step: float | None, seconds: float, steps: int) -> float | None:
    """The first compiled step's time beyond a typical step's: torch.compile's cost (included in train_seconds)."""
    if first_step is None or steps < 2:
        return None
    return max(0.0, first_step - (seconds - first_step) / (steps - 1))
