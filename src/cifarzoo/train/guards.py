"""Failing fast: a run that cannot succeed says so in its first epoch, not after 50.

The original study trained three networks for 50 epochs with the loss frozen at
2.3026 = ln 10 and accuracy at 10%: the signature of a network that outputs the same
distribution for every image. That is detectable after one epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cifarzoo.errors import TrainingError
from cifarzoo.train import distributed as dist_mod

# A verdict on fewer steps than this is noise (a 640-image epoch is 10 steps): with
# short epochs the check waits for the first epoch end at or after this many steps.
MIN_STALL_STEPS = 30

STALL_DIAGNOSIS = """\
The training loss stays at ln(num_classes) and accuracy at chance: the network predicts
the same thing for every image. Usual causes, most likely first:
  - learning rate too high for the optimizer (Adam usually wants ~1e-3; SGD 0.05-0.4 with warm-up);
  - inputs not normalized, or normalized differently for train and test (e.g. /225 vs /255);
  - an activation (ReLU, softmax) on the logits before a loss that applies its own softmax;
  - probabilities fed to a loss that expects logits, or logits to one that expects probabilities;
  - labels misaligned with images (shuffled separately) or all one class;
  - a deep plain network without batch normalization;
  - ImageNet strides/pooling that shrink a 32x32 image to nothing.
Run `cifarzoo doctor MODEL` for checks; pass --allow-stall to train on regardless."""


def nonfinite_error(step: int, epoch: int, loss: float, checkpoint_kept: bool = True) -> TrainingError:
    kept = ("The last good checkpoint (saved before this step) is kept. " if checkpoint_kept
            else "No checkpoint had been saved yet. ")
    return TrainingError(
        f"loss became {loss} at step {step} (epoch {epoch}); stopped at once. " + kept
        + "Lower --lr, use --precision fp32, or check the data for corrupt values.",
        kind="nan",
        diagnosis="non-finite loss: usually a learning rate too high for the optimizer, or fp16 overflow",
    )


# Divergence: the loss of every one of DIVERGENCE_WINDOW steps in a row above DIVERGENCE_FACTOR
# times its starting value, ln(C) (what a network that knows nothing yet scores).
DIVERGENCE_WINDOW = 10
DIVERGENCE_FACTOR = 10.0

DIVERGENCE_DIAGNOSIS = """\
The training loss rose far above its starting value ln(num_classes) and stayed there: the
optimization diverged (it is finite, so the non-finite check did not stop it). Usual causes:
  - learning rate too high, or warm-up too short, for this batch size and optimizer;
  - too little weight decay for a long schedule with a high learning rate, or no BN;
  - corrupt or mislabeled data in part of the training set.
Lower --lr, lengthen --warmup-epochs, or use --optimizer sgd with the model's recipe."""


def divergence_threshold(num_classes: int) -> float:
    return DIVERGENCE_FACTOR * math.log(num_classes)


def divergence_error(step: int, epoch: int, loss: float, num_classes: int, checkpoint_kept: bool) -> TrainingError:
    kept = ("The last checkpoint (saved before this step) is kept. " if checkpoint_kept
            else "No checkpoint had been saved yet. ")
    return TrainingError(
        f"diverged: the training loss stayed above {divergence_threshold(num_classes):.1f} "
        f"({DIVERGENCE_FACTOR:g} x ln {num_classes}) for {DIVERGENCE_WINDOW} steps, {loss:.4g} at step {step} "
        f"(epoch {epoch}); stopped. " + kept + "Lower --lr or lengthen --warmup-epochs.",
        kind="diverged",
        diagnosis=DIVERGENCE_DIAGNOSIS,
    )


def is_stalled(loss: float, acc: float, num_classes: int) -> bool:
    """Loss within 2% of ln(C) (or above it: diverged) and accuracy no better than chance.

    Chance is 1/C; "no better" allows a quarter of chance on top (12.5% for C=10) since
    a short window of a few hundred images fluctuates by a few points.
    """
    chance = 1.0 / num_classes
    return (not math.isfinite(loss) or loss >= 0.98 * math.log(num_classes)) and acc <= 1.25 * chance


def stall_error(step: int, loss: float, acc: float, num_classes: int, causes: list[str] = ()) -> TrainingError:
    """``causes``: what this network's structure shows (``models.checks.structure_problems``), listed first."""
    diagnosis = STALL_DIAGNOSIS
    if causes:
        diagnosis = ("This network shows these causes:\n" + "".join(f"  - {c};\n" for c in causes)
                     + STALL_DIAGNOSIS)
    return TrainingError(
        f"not learning after {step} steps: training loss {loss:.4f} (ln {num_classes} = "
        f"{math.log(num_classes):.4f}) and accuracy {100 * acc:.1f}% (chance {100 / num_classes:.1f}%).\n"
        + diagnosis,
        kind="stall",
        diagnosis=diagnosis,
    )


def near_chance(acc: float, num_classes: int, n_images: int) -> bool:
    """Whether accuracy ``acc`` on ``n_images`` is within noise of chance: at most 2 binomial standard
    errors above 1/C (a network that learned nothing scores that on a finite test set)."""
    chance = 1.0 / num_classes
    return math.isfinite(acc) and n_images > 0 and acc <= chance + 2 * math.sqrt(chance * (1 - chance) / n_images)


def run_warnings(*, stall_checked: bool, allow_stall: bool, steps: int, acc: float, num_classes: int,
                 n_images: int) -> list[str]:
    """What a finished run's summary, console line and study report must say beside its accuracy."""
    out = []
    if not stall_checked and not allow_stall:
        out.append(f"the stall check did not run: {steps} steps, fewer than the {MIN_STALL_STEPS} it needs")
    if near_chance(acc, num_classes, n_images):
        out.append(f"the final accuracy, {100 * acc:.1f}%, is within noise of chance ({100 / num_classes:.1f}%, "
                   f"2 standard errors on {n_images} images): the model may have learned nothing")
    return out


# --------------------------------------------------------------------------- the checks between steps
@dataclass
class EpochStats:
    """Per-step loss, correct count and batch size of one epoch, on the device (no host sync per step)."""

    loss: torch.Tensor  # (steps,) batch-mean loss
    correct: torch.Tensor  # (steps,)
    count: torch.Tensor  # (steps,)
    at: int = 0  # index of the step in progress (or the next one)

    @classmethod
    def zeros(cls, steps: int, device: torch.device) -> "EpochStats":
        return cls(*(torch.zeros(steps, device=device) for _ in range(3)))

    def record(self, i: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss[i] = loss
        self.correct[i] = (logits.argmax(1) == y).sum()
        self.count[i] = y.numel()

    def steps_done(self) -> int:
        """Steps whose statistics are stored (one host sync): where a resumed epoch continues."""
        return self.at + 1 if self.at < len(self.count) and self.count[self.at].item() > 0 else self.at


class Guards:
    """The fail-fast checks of one epoch, run between steps: non-finite loss, divergence and stall.

    ``stall_steps``: the config's (None: judge at the end of the first epoch of at least
    MIN_STALL_STEPS steps); ``stall_checked``: judged already (read back after the epoch).
    ``nan_every``: steps between non-finite checks (1 on CPU, where the check is free; on a
    GPU it syncs the host). ``checkpoint``: named in the error as kept or not.
    """

    def __init__(self, stats: EpochStats, *, epoch: int, first_step: int, steps: int, num_classes: int,
                 checkpoint: Path, nan_every: int, stall_steps: int | None, stall_checked: bool):
        self.stats, self.epoch, self.steps, self.num_classes = stats, epoch, steps, num_classes
        self.checkpoint, self.nan_every = checkpoint, nan_every
        self.stall_steps, self.stall_checked = stall_steps, stall_checked
        self.checked_upto = first_step  # steps [0, checked_upto) are known finite

    def check_finite(self, upto: int) -> None:
        """Non-finite loss in the steps not checked yet, and divergence up to ``upto`` (one host sync)."""
        check_loss(self.stats.loss, self.checked_upto, upto, self.epoch, self.steps, self.num_classes,
                   self.checkpoint)
        self.checked_upto = upto

    def after_step(self, i: int, global_step: int, model: nn.Module) -> None:
        """The checks due after 0-based step ``i`` of the epoch (``global_step`` steps done in the run)."""
        if (i + 1) % self.nan_every == 0 or i + 1 == self.steps:
            self.check_finite(i + 1)
        due = (global_step >= self.stall_steps if self.stall_steps is not None
               else i + 1 == self.steps and global_step >= MIN_STALL_STEPS)
        if not self.stall_checked and due:
            check_stall(self.stats, i + 1, global_step, self.num_classes, model)
            self.stall_checked = True


def check_loss(step_loss: torch.Tensor, lo: int, hi: int, epoch: int, steps_per_epoch: int, num_classes: int,
               checkpoint: Path) -> None:
    """Raise naming the first step in [lo, hi) whose loss is not finite, or if the last
    DIVERGENCE_WINDOW steps before ``hi`` (in this epoch) all diverged (one host sync per call).
    The message says whether ``checkpoint`` is kept (looked up only then, not every step)."""
    if hi <= lo:
        return
    bad = (~torch.isfinite(step_loss[lo:hi])).to(torch.int32)
    window = step_loss[max(0, hi - DIVERGENCE_WINDOW):hi]
    diverged = (window > divergence_threshold(num_classes)).all() & (len(window) == DIVERGENCE_WINDOW)
    flags = dist_mod.all_reduce_sum(torch.stack([bad.sum(), diverged.to(torch.int32)]))
    nonfinite, n_diverged = flags.tolist()
    if nonfinite > 0:
        local = torch.nonzero(bad).flatten()
        i = lo + (int(local[0]) if len(local) else 0)
        raise nonfinite_error(epoch * steps_per_epoch + i + 1, epoch + 1, float(step_loss[i]), checkpoint.exists())
    if n_diverged > 0:
        raise divergence_error(epoch * steps_per_epoch + hi, epoch + 1, float(step_loss[hi - 1]),
                               num_classes, checkpoint.exists())


def check_stall(stats: EpochStats, upto: int, global_step: int, num_classes: int, model: nn.Module) -> None:
    """Judge the second half of the steps so far: the first half is warm-up noise. A stalled run's
    error names what ``model``'s structure shows (models.checks), checked only then."""
    lo = upto // 2
    s = dist_mod.all_reduce_sum(torch.stack([
        stats.loss[lo:upto].sum(), stats.correct[lo:upto].sum(), stats.count[lo:upto].sum(),
        torch.tensor(float(upto - lo), device=stats.loss.device)]))
    loss = s[0].item() / max(1.0, s[3].item())
    acc = s[1].item() / max(1.0, s[2].item())
    if is_stalled(loss, acc, num_classes):
        from cifarzoo.models.checks import structure_problems

        raise stall_error(global_step, loss, acc, num_classes, structure_problems(model, num_classes))
