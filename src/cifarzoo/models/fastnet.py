"""FastNet: the small network of the fastest published CIFAR-10 trainer.

Keller Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (arXiv:2404.00498),
the ``airbench94`` network. Built for 32×32 inputs, so there is nothing to adapt:

* **Whitening layer**: a 2×2 conv, padding 0, with bias, from 3 to 24 = 2·(3·2·2)
  channels (32×32 → 31×31), then GELU. Its 12 filters are meant to be set from the
  data, not learned from scratch: :func:`init_whitening` makes them the eigenvectors of
  the covariance of 2×2 input patches, each scaled by 1/sqrt(eigenvalue + eps), and
  the other 12 their negatives (so that after GELU both signs of every whitened
  component survive). Its width is fixed by the patch size and is not scaled by
  ``width_mult``.
* **Three blocks** of conv 3×3 → max-pool 2 → BN → GELU → conv 3×3 → BN → GELU, with
  64, 256, 256 channels (31 → 15 → 7 → 3 pixels). Pooling right after the first conv
  makes the second conv of every block four times cheaper.
* **Head**: global max pooling (airbench's ``MaxPool2d(3)`` on the 3×3 map), a linear
  layer without bias, and the logits multiplied by 1/9 (airbench's scaling factor,
  which keeps early logits small without touching the init).

As in airbench, the 3×3 convs are bias-free, keep PyTorch's default init and have
their first ``in_channels`` filters set to the identity (``dirac_``); the whitening
bias starts at zero. Batch norm has no scale (a fixed 1, as airbench's frozen BN
weights: only the shift learns, so a large lr for it cannot blow up the
normalization), ``eps`` 1e-12 and a fast running-average momentum (0.4 in PyTorch's
convention, airbench's 0.6). The default init matters: the trainer's lr for these
scale-invariant convs was tuned for the weight norms it gives (a Kaiming-normal init
is 2.4× larger, which shrinks the effective step 6×). Freezing the whitening weights
after :func:`init_whitening`, as airbench does, is the trainer's job (``fit`` does it
when ``whiten_init`` is on, so a run that resumes freezes them too).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifarzoo.errors import CifarzooError
from cifarzoo.models.registry import register_model, scale_width

WIDTHS = (64, 256, 256)  # airbench94's block1, block2, block3
WHITEN_KERNEL = 2


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d without the scale parameter: ``(x - mean) / sqrt(var + eps) + bias``.

    ``weight`` is None, which ``F.batch_norm`` (and the ONNX exporters) treat as ones.
    """

    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        self.register_parameter("weight", None)


class ConvGroup(nn.Module):
    """conv 3×3 → max-pool 2 → BN → GELU → conv 3×3 → BN → GELU; halves the resolution (floor)."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float = 0.4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(out_channels, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding="same", bias=False)
        self.norm2 = BatchNorm(out_channels, momentum=bn_momentum)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """Whitening 2×2 conv → GELU → three :class:`ConvGroup` → global max pool → linear (no bias) × scale."""

    def __init__(self, *, num_classes: int = 10, width_mult: float = 1.0,
                 scale: float = 1 / 9, bn_momentum: float = 0.4):
        super().__init__()
        whiten_width = 2 * 3 * WHITEN_KERNEL**2  # 24: eigenvectors of 12-dim patches and their negatives
        self.whiten = nn.Conv2d(3, whiten_width, WHITEN_KERNEL, padding=0, bias=True)
        self.act = nn.GELU()
        groups, channels = [], whiten_width
        for width in WIDTHS:
            width = scale_width(width, width_mult)
            groups.append(ConvGroup(channels, width, bn_momentum))
            channels = width
        self.layers = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(channels, num_classes, bias=False)
        self.scale = scale
        self._init_weights()

    def _init_weights(self) -> None:
        # Convs and the head keep PyTorch's default init (uniform, bound 1/sqrt(fan_in)),
        # as airbench does; ``scale`` shrinks the early logits.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
                if m is not self.whiten:
                    # airbench: the first in_channels filters pass their input through unchanged.
                    with torch.no_grad():
                        nn.init.dirac_(m.weight[: min(m.in_channels, m.out_channels)])
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))  # (B, 24, 31, 31)
        x = self.layers(x)  # (B, 256w, 3, 3)
        return self.head(torch.flatten(self.pool(x), 1)) * self.scale  # (B, num_classes)


def init_whitening(model: nn.Module, images: torch.Tensor, eps: float = 5e-4,
                   chunk_size: int = 1024) -> torch.Tensor:
    """Set ``model.whiten``'s weights from the 2×2 patches of normalized training images.

    ``images`` is a normalized float ``(N, 3, H, W)`` batch (a few thousand images are
    plenty; airbench uses 5000). Every 2×2 patch is a 12-vector ``p``; with
    ``Σ = E[p pᵀ]`` = V diag(λ) Vᵀ, filter ``i`` becomes ``v_i / sqrt(λ_i + eps)`` and
    filter ``i + 12`` its negative, so the first 12 output channels are decorrelated
    with unit variance over the data. The bias is zeroed. Returns the eigenvalues,
    largest first. Works on any device; the covariance is accumulated in float64.
    """
    conv = getattr(model, "whiten", None)
    if not isinstance(conv, nn.Conv2d):
        raise CifarzooError("init_whitening needs a model with a `whiten` conv layer (build it with 'fastnet')")
    if images.ndim != 4 or images.shape[1] != conv.in_channels or not images.is_floating_point():
        raise CifarzooError(
            f"init_whitening needs normalized float images (N, {conv.in_channels}, H, W), "
            f"got {tuple(images.shape)} {images.dtype}"
        )
    kh, kw = conv.kernel_size
    dim = conv.in_channels * kh * kw  # 12
    if conv.out_channels != 2 * dim:
        raise CifarzooError(f"whitening conv must have 2·{dim} output channels, has {conv.out_channels}")
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], chunk_size):
            x = images[start : start + chunk_size].float()
            # (B, C·kh·kw, L): columns are patches, rows ordered (C, kh, kw) like the conv weight.
            patches = F.unfold(x, (kh, kw)).transpose(1, 2).reshape(-1, dim)
            cov += (patches.T @ patches).double().cpu()
            count += patches.shape[0]
        if count == 0:
            raise CifarzooError("init_whitening got no images")
        cov /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)).T.reshape(dim, conv.in_channels, kh, kw)
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))
        if conv.bias is not None:
            conv.bias.zero_()
    return eigenvalues


def _build(*, num_classes: int, width_mult: float, **kwargs) -> FastNet:
    return FastNet(num_classes=num_classes, width_mult=width_mult, **kwargs)


def _whiten_from_data(model: nn.Module, images: torch.Tensor | None) -> None:
    """The trainer's ``init_from_data`` hook (recipe's ``whiten_init``): whitening filters from
    ``images`` (None on resume: the saved ones are loaded next)."""
    if images is not None:
        init_whitening(model, images)
    # The filters stay as the data made them (airbench); only the bias learns. Also on
    # resume, so that the optimizer's parameter groups match the saved state.
    model.whiten.weight.requires_grad_(False)


def _whiten_bias_group(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The ``param_groups`` hook: the whitening bias trains in a group of its own (Muon's, frozen
    after ``whiten_bias_epochs``)."""
    return {"whiten_bias": [model.whiten.bias]}


# airbench94_muon's recipe (94.01% mean of 200 runs in its paper's setting) in this trainer's units, for the
# `airbench` and `cpu` presets; the conversion of each number: docs/recipes.md, "fastnet with airbench94_muon's
# recipe". Needs the loop to build the "muon" optimizer (train/muon.py).
FASTNET_MUON: dict[str, Any] = dict(
    epochs=8, batch_size=2000, optimizer="muon", lr=1.5, momentum=0.85, muon_lr=0.24, muon_momentum=0.6,
    weight_decay=2.67e-3, bn_bias_decay=4.2e-5, bias_lr_scale=64.0, label_smoothing=0.2, warmup_epochs=0.04,
    augment="crop,altflip", crop_pad=2, whiten_init=True, whiten_bias_epochs=3, lookahead=False, tta_level=2,
)


# Recipe: airbench94's hyperparameters in this trainer's units (docs/recipes.md, "fastnet's SGD recipe");
# expect 2.5-4 s of training per run on one GPU (not measured). quick: half width, batch and lr scaled
# to 128, flips only (docs/recipes.md).
@register_model(paper="Jordan 2024, 94% on CIFAR-10 in 3.29 Seconds on a Single GPU (airbench94)",
                init_from_data=_whiten_from_data, param_groups=_whiten_bias_group,
                recipe=dict(epochs=10, lr=1.5, batch_size=1024, momentum=0.85, weight_decay=1.33e-3,
                            label_smoothing=0.2, bias_lr_scale=64.0, lookahead=True, whiten_init=True,
                            warmup_epochs=2.3),
                presets={"quick": dict(width_mult=0.5, epochs=10, batch_size=128, lr=0.1875, warmup_epochs=2.3,
                                       lookahead=True, augment="flip"),
                         "cpu": FASTNET_MUON, "airbench": FASTNET_MUON})
def fastnet(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """airbench94's network; kwargs: ``scale`` (1/9), ``bn_momentum`` (0.4). See :func:`init_whitening`."""
    return _build(num_classes=num_classes, width_mult=width_mult, **kwargs)
