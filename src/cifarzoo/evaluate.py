"""`cifarzoo evaluate`: test accuracy, loss, per-class accuracy and confusion matrix of a run.

Reads a run folder or checkpoint only (never the trainer's internals); the model is
rebuilt from the checkpoint and fed with the checkpoint's own normalization.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarzoo.data import Dataset
from cifarzoo.errors import CifarzooError
from cifarzoo.inference import confusion_matrix, loss_and_accuracy, predict_logits
from cifarzoo.device import resolve_device
from cifarzoo.io import write_json
from cifarzoo.plots import plot_confusion
from cifarzoo.train.checkpoint import load_model


@dataclass
class EvalResult:
    accuracy: float  # top-1 in [0, 1]
    loss: float  # mean cross-entropy, no smoothing
    per_class_accuracy: list[float]  # recall of each class, in class order
    confusion: np.ndarray  # (C, C) int64, rows = true class, columns = predicted
    classes: list[str]
    logits: torch.Tensor  # (N, C) float32, CPU
    labels: np.ndarray  # (N,) int64
    tta: bool
    data_source: str
    checkpoint: str

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy, "loss": self.loss, "tta": self.tta, "classes": self.classes,
            "per_class_accuracy": dict(zip(self.classes, self.per_class_accuracy)),
            "confusion": self.confusion.tolist(), "images": int(len(self.labels)),
            "data_source": self.data_source, "checkpoint": self.checkpoint,
        }


def evaluate(
    run_or_checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    dataset: Dataset | None = None,
    tta: bool = False,
    device: str = "auto",
    batch_size: int | None = None,  # default: the run's eval_batch_size
    save: bool = True,
    out_dir: str | os.PathLike | None = None,
) -> EvalResult:
    """Evaluate a trained model on the test split of ``dataset`` (or of ``data``, default: the run's own source).

    ``save`` writes ``confusion.json`` and ``confusion.png`` (``*-tta`` with ``tta``) next to the checkpoint,
    or into ``out_dir``.
    """
    from cifarzoo import data as data_mod

    model, ckpt = load_model(run_or_checkpoint)
    if dataset is None:
        dataset = data_mod.load(data if data is not None else ckpt.get("config", {}).get("data"))
    classes = list(ckpt["classes"])
    if list(dataset.classes) != classes:
        raise CifarzooError(
            f"{ckpt['path']}: the model was trained on classes {classes}, but {dataset.source} has "
            f"{list(dataset.classes)}")
    dev = resolve_device(device)
    config = ckpt.get("config", {})
    channels_last = bool(config.get("channels_last", False))
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    norm = ckpt["normalization"]
    logits = predict_logits(model, dataset.test_images, norm["mean"], norm["std"], device=dev,
                            batch_size=batch_size or int(config.get("eval_batch_size", 1024)), tta=tta,
                            channels_last=channels_last)
    loss, acc = loss_and_accuracy(logits, dataset.test_labels)
    preds = logits.argmax(1).numpy()
    cm = confusion_matrix(preds, dataset.test_labels, len(classes))
    per_class = (np.diag(cm) / np.maximum(1, cm.sum(1))).tolist()
    result = EvalResult(acc, loss, per_class, cm, classes, logits, np.asarray(dataset.test_labels), tta,
                        dataset.source, ckpt["path"])
    if save:
        folder = Path(out_dir) if out_dir is not None else Path(ckpt["path"]).parent
        stem = "confusion-tta" if tta else "confusion"
        try:
            write_json(folder / f"{stem}.json", result.to_dict())
            plot_confusion(folder / f"{stem}.png", cm, classes, title=(
                f"{ckpt['model']['name']}: test accuracy {100 * acc:.2f}%{' (flip TTA)' if tta else ''}"))
        except CifarzooError as exc:
            raise CifarzooError(f"{exc}; write the confusion files into another folder with --out DIR") from None
    return result


def format_confusion(cm: np.ndarray, classes: list[str]) -> str:
    """The confusion matrix as a fixed-width text table (rows true, columns predicted)."""
    short = [c[:6] for c in classes]
    w = max(6, len(str(int(cm.max()))) + 1)
    lines = [" " * 12 + "".join(f"{s:>{w + 1}}" for s in short)]
    for name, row in zip(classes, cm):
        lines.append(f"{name[:11]:<12}" + "".join(f"{int(v):>{w + 1}}" for v in row))
    return "\n".join(lines)
