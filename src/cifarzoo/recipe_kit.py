"""What a model's recipe and preset entries are written with, beside plain settings (``models/`` files
use it in their ``@register_model``; it imports nothing of the package, so the settings layer and the
model zoo can both read it without importing each other or torch).

- ``STUDY_SETTINGS``: the original study's training settings (the ``seed`` preset, and the recipe of its
  networks as written).
- ``CoreBudget``: a model's entry in an equal-compute preset (``cpu``): its width, batch and peak lr,
  the training throughput measured there, from which the epochs that fill the budget follow, and any
  further settings of its own (those ``cifarzoo tune`` chose).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# The original study's settings (Adam 1e-3, batch 32, no augmentation, 50 epochs, nothing else): the
# seed preset's, and the recipe of its networks as written (models/as_written.py), which also keep
# its normalization mismatch and Keras' fp32.
STUDY_SETTINGS: dict[str, Any] = dict(
    optimizer="adam", lr=1e-3, batch_size=32, augment="none", epochs=50, schedule="constant", warmup_epochs=0.0,
    label_smoothing=0.0, weight_decay=0.0, momentum=0.9, ema=False, whiten_init=False, lookahead=False,
    bias_lr_scale=1.0)
AS_WRITTEN_RECIPE: dict[str, Any] = dict(STUDY_SETTINGS, normalize="study", precision="fp32")

# The cpu preset's equal budget: every study model trains for CPU_CORE_MINUTES of one reference core at
# its own width and batch. 20 minutes, not 24: five runs on two cores are two rounds of two, then one
# alone (docs/recipes.md, "The `cpu` preset").
CPU_CORE_MINUTES = 20
CPU_REFERENCE = "one core of an AMD EPYC (Zen 4, AVX512-BF16)"
CPU_TRAIN_IMAGES = 50_000


def budget_epochs(img_s: float, minutes: float = CPU_CORE_MINUTES, images: int = CPU_TRAIN_IMAGES) -> int:
    """Whole epochs of ``images`` that ``minutes`` of training at ``img_s`` images per second fill (at least 1)."""
    return max(1, int(minutes * 60 * img_s // images))


@dataclass(frozen=True)
class CoreBudget:
    """A model's settings under an equal compute budget: width, batch, peak lr, and ``img_s``, fit's
    training images per second of a 2-epoch run at that width and batch on one reference core with the
    other busy (benchmarks/RESULTS.md, "Tuning the cpu preset"). The epochs are what
    ``core_minutes`` fill at that rate; warm-up 20% of the run; evaluated about four times per run,
    since evaluation is time the budget does not count (docs/recipes.md). ``extra``: further settings
    of the entry (weight decay, label smoothing, a warm-up other than 20%: what ``cifarzoo tune``
    chose); never what sets the budget's compute (width, batch, epochs: their own fields)."""
    width: float
    batch: int
    lr: float
    img_s: float
    core_minutes: float = CPU_CORE_MINUTES
    reference: str = CPU_REFERENCE
    images: int = CPU_TRAIN_IMAGES
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        owned = {"width_mult", "batch_size", "epochs", "lr"} & set(self.extra)
        if owned:
            raise ValueError(f"CoreBudget extra={sorted(owned)}: set by the budget's own fields (width, batch, lr)")

    @property
    def epochs(self) -> int:
        return budget_epochs(self.img_s, self.core_minutes, self.images)

    def settings(self) -> dict[str, Any]:
        """The TrainConfig settings this budget gives."""
        epochs = self.epochs
        return dict(width_mult=self.width, batch_size=self.batch, lr=self.lr, epochs=epochs,
                    warmup_epochs=round(0.2 * epochs, 1), eval_every=-(-epochs // 4)) | dict(self.extra)

    def seconds(self, epochs: int) -> float:
        """Seconds of training ``epochs`` at this width and batch take on one reference core."""
        return epochs * self.images / self.img_s
