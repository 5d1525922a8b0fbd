"""`cifarzoo predict`: classify image files with a trained model (checkpoint, run folder or ONNX file).

Any image Pillow reads is converted to RGB and resized to 32x32
(``cifarzoo.data.sources.load_image_file``), then goes through the very same
normalization as in training (the checkpoint's mean/std; for ONNX, the normalization
folded into the graph). A file that cannot be read is reported and the rest are still
classified.
"""
from __future__ import annotations

import os
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


def predict_files(
    source: str | os.PathLike,
    paths: list[str | os.PathLike],
    *,
    top_k: int = 3,
    device: str = "auto",
    batch_size: int = 256,
) -> list[Prediction]:
    """Top-``top_k`` classes with probabilities for each image file, in input order."""
    from cifarzoo.data.sources import load_image_file

    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and 1 <= top_k <= MAX_CLASSES):
        raise CifarzooError(f"--top-k must be an integer in [1, {MAX_CLASSES}], got {top_k!r}")
    clf = load_classifier(source, device=device)
    k = min(top_k, len(clf.classes))
    results = [Prediction(str(p)) for p in paths]
    good: list[int] = []
    images: list[np.ndarray] = []
    for i, p in enumerate(paths):
        try:
            images.append(load_image_file(p))
            good.append(i)
        except CifarzooError as exc:
            results[i].error = str(exc)
    for start in range(0, len(good), batch_size):
        batch = np.stack(images[start:start + batch_size])
        logits = torch.from_numpy(np.asarray(clf.predict_logits(batch), dtype=np.float32))
        bad = (~torch.isfinite(logits)).any(1).nonzero().flatten()
        if len(bad):  # never "ship nan%" shown as an answer
            raise CifarzooError(f"{source}: the model gives non-finite logits (NaN or infinite) for "
                                f"{paths[good[start + int(bad[0])]]}: its weights or normalization are damaged")
        probs = torch.softmax(logits, dim=1)
        p, idx = probs.topk(k, dim=1)
        for row, i in enumerate(good[start:start + batch_size]):
            results[i].top = [(clf.classes[j], float(q)) for q, j in zip(p[row].tolist(), idx[row].tolist())]
    return results
