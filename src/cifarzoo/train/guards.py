"""Failing fast: a run that cannot succeed says so in its first epoch, not after 50.

The original study trained three networks for 50 epochs with the loss frozen at
2.3026 = ln 10 and accuracy at 10%: the signature of a network that outputs the same
distribution for every image. That is detectable after one epoch.
"""
from __future__ import annotations

import math

from cifarzoo.errors import TrainingError

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
