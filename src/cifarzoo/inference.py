"""Batched inference shared by training-time evaluation, `evaluate`, `predict` and the study report.

One place turns uint8 images into logits, with the same normalization everywhere
(``cifarzoo.data.loader.normalize``) and optional test-time augmentation: the
horizontal mirror (level 1), or airbench's multi-crop (level 2, :func:`tta_views`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarzoo.device import autocast_context


# Level 2's views and weights (airbench94, ``tta_level=2``): the image and its mirror count
# half, and the two 1-pixel diagonal shifts (up-left, down-right) of each count a quarter.
# As (flip, shift, weight); shift s moves the content by s pixels down and right.
TTA_VIEWS = {
    0: ((False, 0, 1.0),),
    1: ((False, 0, 0.5), (True, 0, 0.5)),
    2: ((False, 0, 0.25), (True, 0, 0.25), (False, -1, 0.125), (True, -1, 0.125),
        (False, 1, 0.125), (True, 1, 0.125)),
}


def tta_views(x: torch.Tensor, level: int):
    """Yield ``(weight, view)`` for normalized images ``x`` ``(B, C, H, W)``; the weights sum to 1.

    A shift by ``s`` is a 1-pixel reflect pad cropped at offset ``1 - s`` in both axes (pixel
    (i, j) of the view is (i - s, j - s) of the image, the border reflected), as airbench does.
    """
    if level not in TTA_VIEWS:
        raise ValueError(f"tta level must be 0 (none), 1 (flip) or 2 (flip and translations), got {level!r}")
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect") if level == 2 else None  # (B, C, H+2, W+2)
    for flip, shift, weight in TTA_VIEWS[level]:
        v = x if shift == 0 else padded[:, :, 1 - shift:1 - shift + h, 1 - shift:1 - shift + w]
        yield weight, (torch.flip(v, dims=[3]) if flip else v)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    mean,
    std,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    tta: bool | int = False,
    precision: str = "fp32",
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits ``(N, C)`` float32 on CPU for uint8 NHWC ``images`` ``(N, 32, 32, 3)``.

    ``tta`` is the test-time augmentation level: False/0 none; True/1 the mean of the
    logits of each image and its horizontal mirror; 2 airbench's six views (the image and
    its mirror, each also shifted one pixel up-left and down-right; :data:`TTA_VIEWS`
    gives their weights). The model is put in eval mode and left there.
    """
    from cifarzoo.data.loader import normalize

    device = torch.device(device)
    level = int(tta)
    if level not in TTA_VIEWS:
        raise ValueError(f"tta must be 0/False (none), 1/True (flip) or 2 (flip and translations), got {tta!r}")
    model.eval()
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True), mean, std,
                      channels_last=channels_last)
        with autocast_context(device, precision):
            logits = None
            for weight, view in tta_views(x, level):
                y = weight * model(view).float() if level else model(view).float()
                logits = y if logits is None else logits + y
        out.append(logits)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out).cpu()


@torch.inference_mode()
def predict_tta_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    mean,
    std,
    *,
    levels=(0, 1),
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict[int, torch.Tensor]:
    """``{level: logits}`` for each TTA level in ``levels``, from one forward pass per view.

    The views of the highest level include every lower level's (the image, its mirror),
    so each view is run once and each level is its weighted sum of them, added in the
    order :func:`predict_logits` adds them: the same values as one call of it per level.
    """
    from cifarzoo.data.loader import normalize

    device = torch.device(device)
    levels = sorted({int(v) for v in levels})
    if not levels or any(v not in TTA_VIEWS for v in levels):
        raise ValueError(f"tta levels must be among 0 (none), 1 (flip), 2 (flip and translations), got {levels!r}")
    views = [(flip, shift) for flip, shift, _ in TTA_VIEWS[max(levels)]]
    model.eval()
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    out: dict[int, list[torch.Tensor]] = {v: [] for v in levels}
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True), mean, std,
                      channels_last=channels_last)
        with autocast_context(device, precision):
            # tta_views(x, max level) yields every view once, in TTA_VIEWS' order.
            view_logits = {view: model(v).float() for view, (_, v) in zip(views, tta_views(x, max(levels)))}
        for level in levels:
            logits = None
            for flip, shift, weight in TTA_VIEWS[level]:
                y = view_logits[(flip, shift)]
                y = weight * y if level else y
                logits = y if logits is None else logits + y
            out[level].append(logits)
    return {v: torch.cat(chunks).cpu() if chunks else torch.empty(0, 0) for v, chunks in out.items()}


class ImageClassifier(nn.Module):
    """``model`` behind its input normalization: images in [0, 255] -> logits ``(B, C)``.

    ``layout`` "nhwc" takes ``(B, 32, 32, 3)`` (what a Dataset, ``load_data`` and PIL give),
    "nchw" ``(B, 3, 32, 32)``; uint8 or float pixel values, never rescaled to [0, 1]. The
    arithmetic is :func:`cifarzoo.data.loader.normalize`'s, with ``mean``/``std`` (3 numbers,
    [0, 255] units) as buffers, so an exported graph holds it too. ``.model`` is the bare
    network, which takes normalized NCHW float batches.
    """

    def __init__(self, model: nn.Module, mean, std, layout: str = "nhwc") -> None:
        super().__init__()
        if layout not in ("nhwc", "nchw"):
            raise ValueError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")
        self.model, self.layout = model, layout
        # (1, 3, 1, 1), [0, 255] units
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float()
        if self.layout == "nhwc":
            images = images.permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
        return self.model((images - self.mean) / self.std)


def loss_and_accuracy(logits: torch.Tensor, labels: np.ndarray | torch.Tensor,
                      outputs: str = "logits") -> tuple[float, float]:
    """Mean loss (cross-entropy, no smoothing; an as-written network's own, see ``outputs`` of
    ``models.as_written``) and top-1 accuracy in [0, 1]."""
    from cifarzoo.models.as_written import output_loss

    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) == 0:
        return math.nan, math.nan
    loss = output_loss(logits, y, outputs).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm
