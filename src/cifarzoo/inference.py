"""Batched inference shared by training-time evaluation, `evaluate`, `predict` and the study report.

One place turns uint8 images into logits, with the same normalization everywhere
(``cifarzoo.data.loader.normalize``) and optional flip test-time augmentation.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarzoo.device import autocast_context


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    mean,
    std,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    tta: bool = False,
    precision: str = "fp32",
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits ``(N, C)`` float32 on CPU for uint8 NHWC ``images`` ``(N, 32, 32, 3)``.

    ``tta`` averages the logits of each image and its horizontal mirror. The model is
    put in eval mode and left there.
    """
    from cifarzoo.data.loader import normalize

    device = torch.device(device)
    model.eval()
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True), mean, std,
                      channels_last=channels_last)
        with autocast_context(device, precision):
            logits = model(x).float()
            if tta:
                logits = 0.5 * (logits + model(torch.flip(x, dims=[3])).float())
        out.append(logits)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out).cpu()


def loss_and_accuracy(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and top-1 accuracy in [0, 1]."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) == 0:
        return math.nan, math.nan
    loss = F.cross_entropy(logits.float(), y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm
