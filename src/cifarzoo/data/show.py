"""A picture of a dataset: a grid of example images, one labelled row per class."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cifarzoo.data.dataset import Dataset
from cifarzoo.data.sources import MAX_CLASSES
from cifarzoo.errors import CifarzooError
from cifarzoo.plots import literal_text

CELL_IN = 0.62  # inches per image cell: 32 px shown at ~52 px, big enough to read
LABEL_IN = 1.15  # left margin for the class names


@literal_text
def draw_class_grid(dataset: Dataset, out_path: str | os.PathLike, per_class: int = 10,
                    seed: int = 0, split: str = "train", max_classes: int = 20) -> Path:
    """Draw ``per_class`` random images of each class of ``split``, one row per class.

    Rows follow ``dataset.classes`` and carry the class name; with more than
    ``max_classes`` classes (CIFAR-100), a random ``max_classes`` of them are shown, in
    order, and the title says how many. Images are drawn pixel-exact
    (nearest-neighbour). The same ``seed`` picks the same classes and images. The file
    (PNG unless ``out_path`` ends in .pdf or .svg) is written to a temp file beside it
    and renamed, so a crash never leaves a half-written image. Returns the path.
    """
    # The object-oriented Figure API renders with Agg without touching pyplot's global
    # state or backend, so this works headless and inside other programs alike.
    from matplotlib.figure import Figure

    if not 1 <= per_class <= 100:  # a sheet of at most 100 columns of thumbnails
        raise CifarzooError(f"--per-class must be in [1, 100], got {per_class}")
    if not 1 <= max_classes <= MAX_CLASSES:
        raise CifarzooError(f"--classes must be in [1, {MAX_CLASSES}], got {max_classes}")
    if split not in ("train", "test"):
        raise CifarzooError(f"split must be 'train' or 'test', got {split!r}")
    if not (isinstance(seed, int) and 0 <= seed < 2**32):  # numpy's seeds
        raise CifarzooError(f"--seed must be an integer in [0, 2**32), got {seed!r}")
    images = dataset.train_images if split == "train" else dataset.test_images
    labels = dataset.train_labels if split == "train" else dataset.test_labels
    out = Path(out_path)
    fmt = out.suffix.lower().lstrip(".") or "png"
    if fmt not in ("png", "pdf", "svg"):
        raise CifarzooError(f"{out}: cannot write .{fmt} images; use .png, .pdf or .svg")

    rng = np.random.default_rng(seed)
    shown_classes = np.arange(dataset.num_classes)
    if dataset.num_classes > max_classes:
        shown_classes = np.sort(rng.choice(dataset.num_classes, size=max_classes, replace=False))
    rows, cols = len(shown_classes), per_class
    fig = Figure(figsize=(LABEL_IN + cols * CELL_IN, 0.45 + rows * CELL_IN), dpi=100)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=LABEL_IN / width, right=1 - 0.05 / width, bottom=0.05 / height,
                        top=1 - 0.4 / height, wspace=0.06, hspace=0.06)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, k in enumerate(shown_classes.tolist()):
        name = dataset.classes[k]
        members = np.flatnonzero(labels == k)
        picked = np.sort(rng.choice(members, size=min(cols, len(members)), replace=False))
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(picked):
                ax.imshow(images[picked[c]], interpolation="nearest")
        axes[r, 0].text(-0.12, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center",
                        fontsize=11)
    shown = min(cols, int(np.bincount(labels, minlength=dataset.num_classes).max()) if len(labels) else 0)
    which = f", {rows} of {dataset.num_classes} classes" if rows < dataset.num_classes else ""
    fig.suptitle(f"{split} images, {shown} per class{which}", fontsize=11,
                 x=0.5, y=1 - 0.08 / height, va="top")

    from cifarzoo.io import atomic_write_bytes, figure_bytes

    atomic_write_bytes(out, figure_bytes(fig, format=fmt))
    return out
