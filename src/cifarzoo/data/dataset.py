"""The one in-memory form every data source produces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """CIFAR-style image classification data, whole, in host memory.

    Images are uint8 NHWC ``(N, 32, 32, 3)`` arrays, labels int64 ``(N,)`` in
    ``0..len(classes)-1``. ``mean``/``std`` are per-channel statistics of the
    *training* images in [0, 255] units; the same pair normalizes train, test and
    ``predict`` inputs (the seed study divided train by 225 and test by 255).
    """

    train_images: np.ndarray  # (N, 32, 32, 3) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray  # (M, 32, 32, 3) uint8
    test_labels: np.ndarray  # (M,) int64
    classes: tuple[str, ...]
    source: str  # human-readable: "sample (bundled)", "archive /path/x.tar.gz", ...
    mean: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))  # [0,255] units
    std: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))  # [0,255] units
    # Which labelling of a source that has several: CIFAR-100's "fine" (100 classes) or
    # "coarse" (20 superclasses); None for sources with one (CIFAR-10, image folders).
    labelling: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)
