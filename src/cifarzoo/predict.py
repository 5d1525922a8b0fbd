"""`cifarzoo predict`: classify image files with a trained model (checkpoint, run folder or ONNX file).

Any image Pillow reads is converted to RGB and resized to 32x32
(``cifarzoo.data.sources.load_image_file``), then goes through the very same
normalization as in training (the checkpoint's mean/std; for ONNX, the normalization
folded into the graph). A file that cannot be read is reported and the rest are still
classified.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cifarzoo.data.sources import MAX_CLASSES
from cifarzoo.errors import CifarzooError


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), best first
    error: str | None = None  # set when the file could not be classified

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


class _TorchClassifier:
    def __init__(self, source: str | os.PathLike, device: str = "auto"):
        from cifarzoo.train.checkpoint import load_model
        from cifarzoo.device import resolve_device

        self.model, ckpt = load_model(source)
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.classes = list(ckpt["classes"])
        self.mean, self.std = ckpt["normalization"]["mean"], ckpt["normalization"]["std"]

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        from cifarzoo.inference import predict_logits

        return predict_logits(self.model, images, self.mean, self.std, device=self.device).numpy()


def load_classifier(source: str | os.PathLike, device: str = "auto"):
    """A classifier with ``.classes`` and ``.predict_logits(uint8 (B,32,32,3)) -> (B,C)``."""
    if str(source).lower().endswith(".onnx"):
        if not Path(source).exists():
            raise CifarzooError(f"{source}: no such ONNX file")
        from cifarzoo.export import OnnxClassifier

        return OnnxClassifier(source)
    return _TorchClassifier(source, device=device)


def check_top_k(top_k, what: str = "--top-k") -> int:
    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and 1 <= top_k <= MAX_CLASSES):
        raise CifarzooError(f"{what} must be an integer in [1, {MAX_CLASSES}], got {top_k!r}")
    return top_k


def predict_files(
    source: str | os.PathLike,
    paths: list[str | os.PathLike],
    *,
    top_k: int = 3,
    device: str = "auto",
    batch_size: int = 256,
) -> list[Prediction]:
    """Top-``top_k`` classes with probabilities for each image file, in input order."""
    check_top_k(top_k)
    clf = load_classifier(source, device=device)
    if not paths:
        return []
    return predict_images(source, list(paths), top_k=top_k, batch_size=batch_size, clf=clf)


def predict_images(source, images, *, top_k: int = 3, device: str = "auto", batch_size: int = 256,
                   clf=None) -> list[Prediction]:
    """One :class:`Prediction` per image of ``images`` (any form :func:`read_images` takes), in order;
    one that cannot be read gets ``.error`` and the rest are still classified."""
    names, arrays, errors = read_images(images)
    results = [Prediction(n, error=e) for n, e in zip(names, errors)]
    good = [i for i, a in enumerate(arrays) if a is not None]
    if not good:
        return results
    clf = clf or load_classifier(source, device=device)
    probs = probabilities(clf, np.stack([arrays[i] for i in good]), batch_size=batch_size,
                          names=[names[i] for i in good], source=source)
    p, idx = torch.from_numpy(probs).topk(min(top_k, len(clf.classes)), dim=1)
    for i, pr, ir in zip(good, p.tolist(), idx.tolist()):
        results[i].top = [(clf.classes[j], float(q)) for q, j in zip(pr, ir)]
    return results


def probabilities(clf, images: np.ndarray, *, batch_size: int = 256, names=None, source="the model") -> np.ndarray:
    """Softmax probabilities ``(N, C)`` float32 of uint8 ``images`` ``(N, 32, 32, 3)``; rows sum to 1.

    Non-finite logits are refused, naming the first such image (``names``, default its index):
    never "nan%" shown as an answer."""
    out = []
    for start in range(0, len(images), batch_size):
        logits = torch.from_numpy(np.asarray(clf.predict_logits(images[start:start + batch_size]), dtype=np.float32))
        bad = (~torch.isfinite(logits)).any(1).nonzero().flatten()
        if len(bad):
            i = start + int(bad[0])
            raise CifarzooError(f"{source}: the model gives non-finite logits (NaN or infinite) for "
                                f"{names[i] if names else f'images[{i}]'}: its weights or normalization are damaged")
        out.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(clf.classes)), np.float32)


# --------------------------------------------------------------------------- reading images
def read_images(images) -> tuple[list[str], list, list]:
    """``(names, uint8 (32, 32, 3) arrays or None, errors or None)`` for what ``predict`` takes.

    ``images``: uint8 ``(N, 32, 32, 3)`` or one ``(32, 32, 3)`` array, an image file path, a
    PIL image, or a list of these. Files and PIL images of any size become 32x32 RGB
    (``cifarzoo.data.sources.load_image_file``); one that cannot be read gets an error and no
    array. Anything else raises.
    """
    from cifarzoo.data.arrays import check_images

    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return ["images[0]"], [check_images(images[None], "images")[0]], [None]
        batch = check_images(images, "images")
        return [f"images[{i}]" for i in range(len(batch))], list(batch), [None] * len(batch)
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        images = [images]
    if not isinstance(images, (list, tuple)) or not images:
        raise CifarzooError(f"images: expected an array, a file path, a PIL image or a non-empty list of them, "
                            f"got {type(images).__name__}")
    names, arrays, errors = [], [], []
    for i, item in enumerate(images):
        name, array, error = _one_image(item, i)
        names.append(name), arrays.append(array), errors.append(error)
    return names, arrays, errors


def _is_pil(obj) -> bool:
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(obj, pil.Image)


def _one_image(item, i: int):
    from cifarzoo.data.arrays import check_images
    from cifarzoo.data.sources import image_to_rgb32, load_image_file

    if isinstance(item, (str, os.PathLike)):
        try:
            return str(item), load_image_file(item), None
        except CifarzooError as exc:  # report it, classify the rest
            return str(item), None, str(exc)
    if _is_pil(item):
        try:
            return f"images[{i}]", image_to_rgb32(item, f"images[{i}]"), None
        except CifarzooError as exc:  # as a file: report it, classify the rest
            return f"images[{i}]", None, str(exc)
    if isinstance(item, np.ndarray):
        return f"images[{i}]", check_images(item[None], f"images[{i}]")[0], None
    raise CifarzooError(f"images[{i}]: expected a (32, 32, 3) uint8 array, a file path or a PIL image, "
                        f"got {type(item).__name__}")
