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
from cifarzoo.io import check_target, write_json
from cifarzoo.progress import printable
from cifarzoo.plots import MANY_CLASSES, plot_confusion
from cifarzoo.train.checkpoint import load_model


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        # One line: the logits, labels and confusion matrix are there as attributes, not printed.
        return (f"EvalResult(accuracy={self.accuracy:.4f}, loss={self.loss:.4f}, images={len(self.labels)}, "
                f"classes={len(self.classes)}, tta={self.tta}, data_source={self.data_source!r})")

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy, "loss": self.loss, "tta": self.tta, "classes": self.classes,
            "per_class_accuracy": dict(zip(self.classes, self.per_class_accuracy)),
            "confusion": self.confusion.tolist(), "top_confusions": top_confusions(self.confusion, self.classes),
            "images": int(len(self.labels)),
            "data_source": self.data_source, "checkpoint": self.checkpoint,
        }


def evaluate(
    run_or_checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    labels: str | None = None,
    dataset: Dataset | None = None,
    tta: bool = False,
    device: str = "auto",
    batch_size: int | None = None,  # default: the run's eval_batch_size
    save: bool = True,
    out_dir: str | os.PathLike | None = None,
) -> EvalResult:
    """Evaluate a trained model on the test split of ``dataset`` (or of ``data``, default: the run's own source).

    ``labels`` is CIFAR-100's labelling to load ``data`` with (default: the run's own).
    ``save`` writes ``confusion.json`` and ``confusion.png`` (``*-tta`` with ``tta``) next to the checkpoint,
    or into ``out_dir``.
    """
    from cifarzoo.data.arrays import load_run_data

    if save and out_dir is not None:
        check_target(out_dir, folder=True)  # before the work, as save_eval_result will
    model, ckpt = load_model(run_or_checkpoint)
    if dataset is None:
        saved = ckpt.get("config", {})
        dataset = load_run_data(data if data is not None else saved.get("data"),
                                labels=labels or saved.get("labels", "fine"), run=run_or_checkpoint)
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
    result = eval_result(logits, dataset.test_labels, classes, tta=tta, data_source=dataset.source,
                         checkpoint=ckpt["path"])
    if save:
        folder = Path(out_dir) if out_dir is not None else Path(ckpt["path"]).parent
        try:
            save_eval_result(result, folder, ckpt["model"]["name"])
        except CifarzooError as exc:
            raise CifarzooError(f"{exc}; write the confusion files into another folder with --out DIR") from None
    return result


TOP_CONFUSIONS = 20  # confusions listed in place of the grid


def many_classes(classes) -> bool:
    """Whether results for ``classes`` are shown as top confusions rather than a full grid."""
    return len(classes) > MANY_CLASSES


def top_confusions(cm: np.ndarray, classes, k: int = TOP_CONFUSIONS) -> list[dict]:
    """The ``k`` most frequent mistakes of a confusion matrix, most frequent first (ties: class order).

    Each: ``{true, pred, count, share}``, ``share`` the fraction of the true class's
    images given that prediction; mistakes that never happen are not listed.
    """
    cm = np.asarray(cm, dtype=np.int64)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    totals = cm.sum(1)
    out = []
    for flat in np.argsort(-off, axis=None, kind="stable")[:k].tolist():
        i, j = divmod(flat, cm.shape[1])
        if off[i, j] == 0:
            break
        out.append({"true": classes[i], "pred": classes[j], "count": int(off[i, j]),
                    "share": float(off[i, j] / max(1, totals[i]))})
    return out


def format_top_confusions(items: list[dict]) -> str:
    """Top confusions as text lines: true -> predicted, count, share of the true class."""
    if not items:
        return "  (no mistakes)"
    items = [{**it, "true": printable(it["true"]), "pred": printable(it["pred"])} for it in items]
    w = max(len(it["true"]) for it in items)
    return "\n".join(f"  {it['true']:<{w}} -> {it['pred']:<{w}} {it['count']:>6}  {100 * it['share']:5.1f}%"
                     for it in items)


def format_per_class(classes, accuracy) -> str:
    """Per-class accuracy lines: in class order, or worst first when there are many classes."""
    classes = [printable(c) for c in classes]
    rows = list(zip(classes, accuracy))
    if many_classes(classes):
        rows.sort(key=lambda r: r[1])  # stable: equal accuracies keep class order
    w = max(12, *(len(c) for c in classes))
    return "\n".join(f"  {name:<{w}} {100 * a:6.2f}%" for name, a in rows)


def eval_result(logits: torch.Tensor, labels: np.ndarray, classes: list[str], *, tta: bool, data_source: str,
                checkpoint: str) -> EvalResult:
    """The :class:`EvalResult` of test ``logits`` ``(N, C)``: also for logits a training run computed."""
    loss, acc = loss_and_accuracy(logits, labels)
    cm = confusion_matrix(logits.argmax(1).numpy(), labels, len(classes))
    per_class = (np.diag(cm) / np.maximum(1, cm.sum(1))).tolist()
    return EvalResult(acc, loss, per_class, cm, list(classes), logits, np.asarray(labels), tta, data_source,
                      str(checkpoint))


def save_eval_result(result: EvalResult, folder: str | os.PathLike, model_name: str) -> None:
    """``confusion.json`` and ``confusion.png`` (``confusion-tta.*`` with TTA) into ``folder``."""
    check_target(folder, folder=True)
    stem = "confusion-tta" if result.tta else "confusion"
    write_json(Path(folder) / f"{stem}.json", result.to_dict())
    plot_confusion(Path(folder) / f"{stem}.png", result.confusion, result.classes,
                   title=f"{model_name}: test accuracy {100 * result.accuracy:.2f}%"
                         f"{' (flip TTA)' if result.tta else ''}")


def format_confusion(cm: np.ndarray, classes: list[str]) -> str:
    """The confusion matrix as a fixed-width text table (rows true, columns predicted)."""
    classes = [printable(c) for c in classes]
    short = [c[:6] for c in classes]
    w = max(6, len(str(int(cm.max()))) + 1)
    lines = [" " * 12 + "".join(f"{s:>{w + 1}}" for s in short)]
    for name, row in zip(classes, cm):
        lines.append(f"{name[:11]:<12}" + "".join(f"{int(v):>{w + 1}}" for v in row))
    return "\n".join(lines)
