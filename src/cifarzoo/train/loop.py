"""``fit``: the one training loop every model and every command goes through.

Readable in one screen where it matters (``_train_epoch``): zero_grad / forward under
autocast / backward / step / schedule, with the batch statistics kept on the device
so that the step never waits for the host. Evaluation is not counted in training
time. Every epoch ends with an atomic checkpoint, so an interrupted run resumes to the
same result as an uninterrupted one (bit-for-bit on CPU).
"""
from __future__ import annotations

import inspect
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarzoo import __version__
from cifarzoo.data import Dataset
from cifarzoo.errors import CifarzooError, TrainingError
from cifarzoo.inference import autocast_context, loss_and_accuracy, predict_logits
from cifarzoo.train import distributed as D
from cifarzoo.train import guards
from cifarzoo.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from cifarzoo.train.config import TrainConfig
from cifarzoo.train.rundir import new_run_dir, plot_curves, write_json, write_metrics


# --------------------------------------------------------------------------- results
@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    metrics: list[dict]


class Reporter:
    """Callbacks for progress display. The library never prints; the CLI subclasses this."""

    def on_start(self, info: dict) -> None: ...
    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def on_step(self, epoch: int, step: int, steps: int, global_step: int) -> None: ...
    def on_epoch_end(self, row: dict) -> None: ...
    def on_end(self, summary: dict) -> None: ...


# --------------------------------------------------------------------------- set-up helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CifarzooError("--device cuda: no CUDA GPU is available to this torch build; use --device cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on GPUs that support it, fp32 on CPU (bf16 on CPU only when asked:
    measured faster with one thread and slower with two on a shared machine, see benchmarks/RESULTS.md)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise CifarzooError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return name


def resolve_compile(mode: str, device: torch.device, total_steps: int) -> bool:
    """Whether ``fit`` wraps the model in torch.compile (``auto``: long GPU runs only).

    benchmarks/throughput.py calls this too, so its "project path" is what fit does.
    """
    return mode == "on" or (mode == "auto" and device.type == "cuda" and total_steps >= 1000)


def split_dataset(ds: Dataset, config: TrainConfig):
    """Apply ``subset`` and ``val_split``; returns (train_x, train_y, eval_x, eval_y, eval_name).

    ``subset`` keeps the first N//C images of each class (the remainder to the first
    classes), in their original order. ``val_split`` holds out the *last* images of
    each class of that training set. The test set is never touched here.
    """
    x, y = ds.train_images, ds.train_labels
    C = ds.num_classes

    def balanced_take(labels: np.ndarray, n: int, from_end: bool) -> np.ndarray:
        per = [n // C + (1 if c < n % C else 0) for c in range(C)]
        keep = []
        for c in range(C):
            idx = np.flatnonzero(labels == c)
            if len(idx) < per[c]:
                raise CifarzooError(
                    f"cannot take {n} class-balanced images: class {ds.classes[c]!r} has only {len(idx)}")
            keep.append(idx[len(idx) - per[c]:] if from_end else idx[:per[c]])
        return np.sort(np.concatenate(keep))

    if config.subset is not None:
        if config.subset > len(y):
            raise CifarzooError(f"--subset {config.subset} exceeds the {len(y)} training images")
        idx = balanced_take(y, config.subset, from_end=False)
        x, y = x[idx], y[idx]
    if config.val_split:
        if config.val_split >= len(y):
            raise CifarzooError(f"--val-split {config.val_split} leaves no training images (have {len(y)})")
        val_idx = balanced_take(y, config.val_split, from_end=True)
        mask = np.ones(len(y), dtype=bool)
        mask[val_idx] = False
        return x[mask], y[mask], x[val_idx], y[val_idx], "val"
    return x, y, ds.test_images, ds.test_labels, "test"


def auto_batch_size(n_train: int) -> int:
    """512, or for small training sets the largest power of two giving >= 32 steps per epoch (at least 32).

    The recipes' batch of 512 suits the 50,000 CIFAR-10 images (97 steps per epoch);
    on the bundled 5,000-image sample it would leave 9 steps per epoch, too few to learn.
    """
    b = 512
    while b > 32 and n_train // b < 32:
        b //= 2
    return b


def param_groups(model: nn.Module, weight_decay: float):
    """Weight decay on conv and linear weights only: never on BN scales/shifts or biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, c: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, c.weight_decay)
    if c.bias_lr_scale != 1.0:
        # airbench's bias scaler (fastnet: 64): a larger lr for BN shifts only, in a third group.
        bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              for p in m.parameters(recurse=False)}
        rest = groups[1]["params"]
        groups[1]["params"] = [p for p in rest if id(p) not in bn]
        groups.append({"params": [p for p in rest if id(p) in bn], "weight_decay": 0.0,
                       "lr": c.lr * c.bias_lr_scale})
    # Fused kernels do the whole update in a few launches: on CUDA for Adam(W) and SGD.
    fused = {"fused": True} if device.type == "cuda" else {}
    if c.optimizer == "sgd":
        if "fused" not in inspect.signature(torch.optim.SGD).parameters:  # torch < 2.4
            fused = {}
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0, **fused)
    if c.optimizer == "adam":
        # Adam's weight decay is L2 added to the gradient (the seed study used none).
        return torch.optim.Adam(groups, lr=c.lr, betas=(c.momentum, 0.999), **fused)
    return torch.optim.AdamW(groups, lr=c.lr, betas=(c.momentum, 0.999), **fused)


def lr_factor(step: int, total: int, steps_per_epoch: int, c: TrainConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total``.

    Every schedule starts with a linear warm-up from lr/10 over ``warmup_epochs``:
    - onecycle: warm-up, then linear decay to 0 at the last step (no warm-up given: 25% of the run);
    - cosine:   warm-up, then half a cosine to 0;
    - step:     warm-up, then x0.1 at 50% and again at 75% of the run;
    - constant: warm-up, then the peak.
    """
    warm = int(round(c.warmup_epochs * steps_per_epoch))
    if c.schedule == "onecycle" and warm == 0:
        warm = int(0.25 * total)
    warm = min(warm, total - 1) if total > 1 else 0
    if step < warm:
        return 0.1 + 0.9 * step / warm
    progress = (step - warm) / max(1, total - warm)  # 0 at the peak, -> 1 at the end
    if c.schedule == "onecycle":
        return max(0.0, 1.0 - progress)
    if c.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if c.schedule == "step":
        return 1.0 if progress < 0.5 else (0.1 if progress < 0.75 else 0.01)
    return 1.0


def _peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    # ru_maxrss is KiB on Linux: the whole process's peak resident memory.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _model_loss(out, y: torch.Tensor, c: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to optimize, main logits). Auxiliary heads (Inception, training only) add aux_weight x their loss."""
    if isinstance(out, (tuple, list)):
        logits, aux = out[0], out[1:]
    else:
        logits, aux = out, ()
    loss = F.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
    for a in aux:
        loss = loss + c.aux_weight * F.cross_entropy(a.float(), y, label_smoothing=c.label_smoothing)
    return loss, logits


# --------------------------------------------------------------------------- the loop
def fit(
    config: TrainConfig | None = None,
    *,
    dataset: Dataset | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    reporter: Reporter | None = None,
    runs_root: str | os.PathLike = "runs",
) -> RunResult:
    """Train ``config.model`` as ``config`` says and leave a run folder; returns its summary.

    ``resume`` continues the run in that folder from its last checkpoint (its saved
    config wins; ``config`` may be None). Raises :class:`TrainingError` for a
    non-finite loss or a stalled run; re-raises KeyboardInterrupt after writing a
    resumable checkpoint.
    """
    from cifarzoo import data as data_mod
    from cifarzoo import models
    from cifarzoo.data.loader import DeviceLoader, normalize

    reporter = reporter or Reporter()
    dist = D.current()
    ckpt = None
    if resume is not None:
        # Rank 0's copy for every rank: on other machines the run folder need not exist.
        ckpt = D.broadcast_object(load_checkpoint(resume) if dist.is_main else None)
        if ckpt.get("finished"):
            raise CifarzooError(f"{resume}: this run already finished all its epochs; nothing to resume")
        config = TrainConfig.from_dict(ckpt["config"])
        out_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    if config is None:
        raise CifarzooError("fit() needs a config or a run folder to resume")
    c = config

    device = resolve_device(c.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(c.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # one study process runs many fits
    torch.manual_seed(c.seed)
    np.random.seed(c.seed % 2**32)

    ds = dataset if dataset is not None else data_mod.load(c.data)
    train_x, train_y, eval_x, eval_y, eval_name = split_dataset(ds, c)
    if c.batch_size is None:
        # Saved resolved, so config.json and a resumed run state the batch actually used.
        c = config = c.replace(batch_size=auto_batch_size(len(train_y)))
    D.check_world(c.batch_size, dist.world_size, sync_bn=c.sync_bn, device_type=device.type)
    C = ds.num_classes
    if c.batch_size > len(train_y):
        raise CifarzooError(f"--batch-size {c.batch_size} exceeds the {len(train_y)} training images")

    model = models.create(c.model, num_classes=C, width_mult=c.width_mult, **c.model_kwargs)
    if c.whiten_init and hasattr(model, "whiten"):
        from cifarzoo.models.fastnet import init_whitening

        if ckpt is None:
            n = min(len(train_x), 5000)
            init_whitening(model, normalize(torch.from_numpy(train_x[:n]), ds.mean, ds.std))
        # The filters stay as the data made them (airbench); only the bias learns. Also on
        # resume, so that the optimizer's parameter groups match the saved state.
        model.whiten.weight.requires_grad_(False)
    model.to(device)
    if c.channels_last:
        model.to(memory_format=torch.channels_last)
    raw_model = model
    if dist.enabled and c.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        raw_model = model

    loader = DeviceLoader(
        train_x, train_y, batch_size=c.batch_size, mean=ds.mean, std=ds.std, device=device, train=True,
        augment=",".join(c.augmentations) or "none", cutout_size=c.cutout_size, seed=c.seed,
        channels_last=c.channels_last, rank=dist.rank, world_size=dist.world_size,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise CifarzooError(f"--batch-size {c.batch_size} gives no full batch of the {len(train_y)} training images")
    total_steps = steps_per_epoch * c.epochs

    optimizer = make_optimizer(raw_model, c, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, steps_per_epoch, c))
    scaler = torch.amp.GradScaler("cuda", enabled=(precision == "fp16"))
    ema = None
    if c.ema:
        # Average of weights (and BN statistics) for evaluation; decay per step.
        ema = torch.optim.swa_utils.AveragedModel(
            raw_model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.999), use_buffers=True)
    lookahead = Lookahead(raw_model) if c.lookahead else None

    train_model: nn.Module = raw_model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    use_compile = resolve_compile(c.compile, device, total_steps)
    if use_compile:
        train_model = torch.compile(train_model)

    # ---- state: fresh or resumed
    start_epoch, start_step, metrics, partial = 0, 0, [], None
    train_seconds = 0.0
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["train_state_dict"] if "train_state_dict" in ckpt else ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and "ema_state_dict" in ckpt:
            ema.load_state_dict(ckpt["ema_state_dict"])
        if lookahead is not None and "lookahead" in ckpt:
            lookahead.load_state_dict(ckpt["lookahead"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], device)
        metrics = list(ckpt.get("metrics", []))
        start_epoch = int(ckpt["epoch"])
        partial = ckpt.get("partial")
        start_step = int(partial["step"]) if partial else 0
        train_seconds = float(ckpt.get("train_seconds", 0.0))

    # Every rank must write to (rank 0: into) the same folder: rank 0 names it.
    run_dir = Path(out_dir) if out_dir is not None else D.broadcast_object(
        new_run_dir(c.model, runs_root) if dist.is_main else None)
    n_params = sum(p.numel() for p in raw_model.parameters())
    info = {
        "config": c.to_dict(),
        "run_dir": str(run_dir),
        "data": {
            "source": ds.source, "classes": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std),
            "train_images": int(len(train_y)), "eval_images": int(len(eval_y)), "eval_split": eval_name,
            "test_images": int(len(ds.test_labels)),
        },
        "device": str(device), "device_name": _device_name(device), "precision": precision,
        "compiled": bool(use_compile), "world_size": dist.world_size,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                     "cifarzoo": __version__},
        "parameters": int(n_params), "steps_per_epoch": steps_per_epoch,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None or not (run_dir / "config.json").exists():
            write_json(run_dir / "config.json", info)
    reporter.on_start(info)

    eval_model = lambda: (ema.module if ema is not None else raw_model)  # noqa: E731

    def checkpoint_payload(epoch_done: int, partial_state: dict | None, finished: bool) -> dict:
        em = eval_model()
        p = {
            "model": {"name": c.model, "kwargs": {"num_classes": C, "width_mult": c.width_mult, **c.model_kwargs}},
            "classes": list(ds.classes),
            "normalization": {"mean": list(ds.mean), "std": list(ds.std)},
            "config": c.to_dict(),
            "metrics": metrics,
            "epoch": epoch_done,
            "state_dict": em.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": _rng_state(device),
            "partial": partial_state,
            "train_seconds": train_seconds,
            "finished": finished,
            "data_source": ds.source,
        }
        if ema is not None:
            p["ema_state_dict"] = ema.state_dict()
            p["train_state_dict"] = raw_model.state_dict()
        if lookahead is not None:
            p["lookahead"] = lookahead.state_dict()
        return p

    def save(epoch_done: int, partial_state: dict | None = None, finished: bool = False) -> None:
        if dist.is_main:
            save_checkpoint(run_dir / CHECKPOINT_NAME, checkpoint_payload(epoch_done, partial_state, finished))
        D.barrier()

    # A resumed run was judged before it was interrupted, unless it stopped before the check.
    stall_checked = c.allow_stall or (c.stall_steps is None and start_epoch * steps_per_epoch
                                      >= max(steps_per_epoch, guards.MIN_STALL_STEPS))
    global_step = start_epoch * steps_per_epoch + start_step
    first_step_seconds, steps_this_process, seconds_this_process = None, 0, 0.0
    nan_every = 1 if device.type == "cpu" else max(1, c.nan_check_every)

    for epoch in range(start_epoch, c.epochs):
        loader.set_epoch(epoch)
        train_model.train()
        reporter.on_epoch_start(epoch + 1, steps_per_epoch)
        # Per-step statistics stay on the device: no host sync inside the step.
        step_loss = torch.zeros(steps_per_epoch, device=device)
        step_correct = torch.zeros(steps_per_epoch, device=device)
        step_count = torch.zeros(steps_per_epoch, device=device)
        first_step = start_step if epoch == start_epoch else 0
        epoch_seconds_before = 0.0
        if partial is not None and epoch == start_epoch:
            step_loss.copy_(partial["step_loss"].to(device))
            step_correct.copy_(partial["step_correct"].to(device))
            step_count.copy_(partial["step_count"].to(device))
            epoch_seconds_before = float(partial["epoch_seconds"])
        checked_upto = first_step
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step = first_step
        try:
            for step, (x, y) in enumerate(loader.iter_from(first_step), start=first_step):
                optimizer.zero_grad(set_to_none=True)
                with autocast_context(device, precision):
                    out = train_model(x)
                loss, logits = _model_loss(out, y, c)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(raw_model)
                step_loss[step] = loss.detach()
                step_correct[step] = (logits.detach().argmax(1) == y).sum()
                step_count[step] = y.numel()
                global_step += 1
                if lookahead is not None:
                    lookahead.step(raw_model, global_step, total_steps)
                if first_step_seconds is None and use_compile:
                    # The first call of the compiled model compiles it: timed apart (one sync per run).
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    first_step_seconds = time.perf_counter() - t0

                if (step + 1) % nan_every == 0 or step + 1 == steps_per_epoch:
                    _check_finite(step_loss, checked_upto, step + 1, epoch, steps_per_epoch)
                    checked_upto = step + 1
                if not stall_checked and (
                    (c.stall_steps is not None and global_step >= c.stall_steps)
                    or (c.stall_steps is None and step + 1 == steps_per_epoch
                        and global_step >= guards.MIN_STALL_STEPS)
                ):
                    _check_stall(step_loss, step_correct, step_count, step + 1, global_step, C)
                    stall_checked = True
                reporter.on_step(epoch + 1, step + 1, steps_per_epoch, global_step)
        except KeyboardInterrupt:
            # Save where we are (mid-epoch), so --resume continues from this very step.
            done = step + 1 if step_count[step].item() > 0 else step
            _check_finite(step_loss, checked_upto, done, epoch, steps_per_epoch)
            seconds = epoch_seconds_before + time.perf_counter() - t0
            save(epoch, {"step": done, "step_loss": step_loss.cpu(), "step_correct": step_correct.cpu(),
                         "step_count": step_count.cpu(), "epoch_seconds": seconds})
            raise
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds = epoch_seconds_before + time.perf_counter() - t0
        train_seconds += epoch_seconds
        steps_this_process += steps_per_epoch - first_step
        seconds_this_process += epoch_seconds - epoch_seconds_before
        D.broadcast_buffers(raw_model)  # BN running statistics: rank 0's on every rank
        if ema is not None:
            D.broadcast_buffers(ema)

        sums = D.all_reduce_sum(torch.stack([step_loss.sum(), step_correct.sum(), step_count.sum()]))
        seen = sums[2].item()
        # Per-step losses are batch means: average them over steps (and ranks).
        train_loss = sums[0].item() / (steps_per_epoch * dist.world_size)
        train_acc = sums[1].item() / max(1.0, seen)
        logits = predict_logits(eval_model(), eval_x, ds.mean, ds.std, device=device,
                                batch_size=c.eval_batch_size, precision=precision, channels_last=c.channels_last)
        eval_loss, eval_acc = loss_and_accuracy(logits, eval_y)
        row = {
            "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
            "train_acc": train_acc, "eval_loss": eval_loss, "eval_acc": eval_acc,
            "epoch_seconds": epoch_seconds, "elapsed_seconds": train_seconds,
            "images_per_second": seen / epoch_seconds if epoch_seconds > 0 else float("nan"),
        }
        metrics.append(row)
        partial = None
        save(epoch + 1)
        if dist.is_main:
            write_metrics(run_dir / "metrics.csv", metrics)
        reporter.on_epoch_end(row)

    # ---- final evaluation on the test set: last epoch's weights, never a selected epoch
    em = eval_model()
    logits = predict_logits(em, ds.test_images, ds.mean, ds.std, device=device, batch_size=c.eval_batch_size,
                            precision=precision, channels_last=c.channels_last)
    logits_tta = predict_logits(em, ds.test_images, ds.mean, ds.std, device=device, batch_size=c.eval_batch_size,
                                precision=precision, channels_last=c.channels_last, tta=True)
    test_loss, test_acc = loss_and_accuracy(logits, ds.test_labels)
    test_loss_tta, test_acc_tta = loss_and_accuracy(logits_tta, ds.test_labels)
    peak, peak_kind = _peak_memory_bytes(device)
    from cifarzoo.models.summary import count_macs

    macs = count_macs(models.create(c.model, num_classes=C, width_mult=c.width_mult, **c.model_kwargs))
    images_seen = sum(r["images_per_second"] * r["epoch_seconds"] for r in metrics)
    summary = {
        "model": c.model, "status": "finished", "epochs": c.epochs, "seed": c.seed,
        "test_acc": test_acc, "test_loss": test_loss, "test_acc_tta": test_acc_tta, "test_loss_tta": test_loss_tta,
        "final_eval_acc": metrics[-1]["eval_acc"] if metrics else math.nan, "eval_split": eval_name,
        "train_seconds": train_seconds,
        "images_per_second": images_seen / train_seconds if train_seconds > 0 else math.nan,
        "compiled": bool(use_compile), "compile_seconds": _compile_seconds(
            first_step_seconds, seconds_this_process, steps_this_process),
        "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
        "parameters": int(n_params), "macs": int(macs), "precision": precision, "device": info["device_name"],
        "world_size": dist.world_size, "data_source": ds.source, "train_images": int(len(train_y)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save(c.epochs, finished=True)
    if dist.is_main:
        write_json(run_dir / "summary.json", summary)
        plot_curves(run_dir / "curves.png", metrics, title=f"{c.model} (width {c.width_mult}, seed {c.seed})")
    reporter.on_end(summary)
    return RunResult(run_dir, summary, metrics)


def _compile_seconds(first_step: float | None, seconds: float, steps: int) -> float | None:
    """The first compiled step's time beyond a typical step's: torch.compile's cost (included in train_seconds)."""
    if first_step is None or steps < 2:
        return None
    return max(0.0, first_step - (seconds - first_step) / (steps - 1))


class Lookahead:
    """airbench's lookahead (from hlb-CIFAR10): every 5 steps the weights and BN statistics
    move to an exponential average of themselves, ``avg = d·avg + (1-d)·w; w = avg``.

    The decay ``d = 0.95**5 · (step/total)**3`` is 0 early (plain SGD) and grows to 0.77 at
    the end, so the average spans only the last few tens of steps; at the last step the
    weights become the average. Paired with the fast BN momentum of fastnet, this gives
    the weight averaging of an EMA without an evaluation copy that lags behind a short run.
    The update is a few fused device ops on live tensors: no host sync.
    """

    every = 5

    def __init__(self, model: nn.Module):
        # state_dict() tensors alias the module's parameters and buffers (create after .to()).
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.avg = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def step(self, model: nn.Module, global_step: int, total_steps: int) -> None:
        if global_step % self.every == 0:
            decay = 0.95 ** self.every * (global_step / total_steps) ** 3
            torch._foreach_lerp_(self.avg, self.live, 1.0 - decay)
            torch._foreach_copy_(self.live, self.avg)
        if global_step == total_steps:
            torch._foreach_copy_(self.live, self.avg)  # the run ends on the average

    def state_dict(self) -> list[torch.Tensor]:
        return [t.clone() for t in self.avg]

    @torch.no_grad()
    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        torch._foreach_copy_(self.avg, [t.to(a.device) for t, a in zip(state, self.avg)])


def _check_finite(step_loss: torch.Tensor, lo: int, hi: int, epoch: int, steps_per_epoch: int) -> None:
    """Raise naming the first step in [lo, hi) whose loss is not finite (one host sync per call)."""
    if hi <= lo:
        return
    window = step_loss[lo:hi]
    bad = (~torch.isfinite(window)).to(torch.int32)
    flag = D.all_reduce_sum(bad.sum().reshape(1))
    if flag.item() > 0:
        local = torch.nonzero(bad).flatten()
        i = lo + (int(local[0]) if len(local) else 0)
        raise guards.nonfinite_error(epoch * steps_per_epoch + i + 1, epoch + 1, float(step_loss[i]))


def _check_stall(step_loss, step_correct, step_count, upto: int, global_step: int, num_classes: int) -> None:
    """Judge the second half of the steps so far: the first half is warm-up noise."""
    lo = upto // 2
    s = D.all_reduce_sum(torch.stack([
        step_loss[lo:upto].sum(), step_correct[lo:upto].sum(), step_count[lo:upto].sum(),
        torch.tensor(float(upto - lo), device=step_loss.device)]))
    loss = s[0].item() / max(1.0, s[3].item())
    acc = s[1].item() / max(1.0, s[2].item())
    if guards.is_stalled(loss, acc, num_classes):
        raise guards.stall_error(global_step, loss, acc, num_classes)
