"""Xception for 32×32 inputs.

Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions" (CVPR),
Figure 5: an entry flow, a middle flow repeated eight times and an exit flow, 36
convolutions in 14 residual modules. A separable convolution is a depthwise 3×3 conv
followed directly by a pointwise 1×1 conv, with *no* activation or normalization
between them (the paper's Section 4.7 found intermediate non-linearities hurt); batch
normalization follows every convolution and every separable convolution.

* Entry flow: conv 32 → conv 64 (each + BN + ReLU), then three residual blocks of
  [SepConv, ReLU, SepConv, max-pool 3×3/2] with 128, 256, 728 channels and a strided
  1×1 conv + BN projection shortcut (the first block has no leading ReLU because the
  stem just applied one; the others start with ReLU).
* Middle flow: eight blocks of (ReLU → SepConv 728 → BN) × 3 with identity shortcuts.
* Exit flow: block [ReLU, SepConv 728, ReLU, SepConv 1024, max-pool 3×3/2] with a
  projection shortcut to 1024; then SepConv 1536 + BN + ReLU, SepConv 2048 + BN + ReLU,
  global average pooling and a linear layer (the paper's optional FC layers omitted).

Changes for CIFAR (32×32), so the middle flow keeps a useful spatial extent:

* **Stem**: both stem convs stride 1 with padding 1 (the paper: 3×3 stride 2 and
  3×3, unpadded, taking 299 → 147).
* **Strides**: the entry blocks pool with strides 1, 2, 2 (the paper 2, 2, 2), so the
  first runs at 32×32 without pooling and the middle flow runs at 8×8 (the paper:
  19×19). The exit block keeps its stride 2 → 4×4 before global pooling (paper 10×10).
  A stride-1 block has no max-pool and its shortcut is a stride-1 1×1 projection.
* **Classifier**: one linear layer from 2048 to ``num_classes``; plain logits.
"""
from __future__ import annotations

import torch
from torch import nn

from cifarzoo.models.init import init_weights
from cifarzoo.models.registry import register_model, scale_width
from cifarzoo.recipe_kit import CoreBudget

# Architectures as data. Each block: (channels of its separable convs, stride, leading ReLU).
ENTRY = [((128, 128), 1, False), ((256, 256), 2, True), ((728, 728), 2, True)]
MIDDLE = [((728, 728, 728), 1, True)] * 8
EXIT = [((728, 1024), 2, True)]
HEAD = (1536, 2048)  # separable convs after the exit block, each + BN + ReLU


class SeparableConv2d(nn.Sequential):
    """Depthwise 3×3 → pointwise 1×1, no bias, nothing in between."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class XceptionBlock(nn.Module):
    """[ReLU →] SepConv → BN, repeated per entry of ``channels``, [→ max-pool], plus shortcut.

    No ReLU after the sum: the next block begins with one.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], stride: int = 1, start_with_relu: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            if i > 0 or start_with_relu:
                # Not in-place on the first: the block's input is also the shortcut's input.
                layers.append(nn.ReLU(inplace=i > 0))
            layers += [SeparableConv2d(c_in, c_out), nn.BatchNorm2d(c_out)]
            c_in = c_out
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
        self.residual = nn.Sequential(*layers)
        if stride == 1 and in_channels == c_in:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, c_in, 1, stride=stride, bias=False), nn.BatchNorm2d(c_in)
            )
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class Xception(nn.Module):
    """Stem → entry, middle and exit flows of :class:`XceptionBlock` → separable head → GAP → linear."""

    def __init__(self, *, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        c1, c2 = scale_width(32, width_mult), scale_width(64, width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
        )  # (B, 64, 32, 32)
        channels = c2
        flows = []
        for config in (ENTRY, MIDDLE, EXIT):
            blocks = []
            for widths, stride, start_with_relu in config:
                block = XceptionBlock(channels, tuple(scale_width(c, width_mult) for c in widths),
                                      stride, start_with_relu)
                blocks.append(block)
                channels = block.out_channels
            flows.append(nn.Sequential(*blocks))
        self.entry_flow, self.middle_flow, self.exit_flow = flows  # → 8×8, 8×8, 4×4
        head: list[nn.Module] = []
        for c in HEAD:
            c = scale_width(c, width_mult)
            head += [SeparableConv2d(channels, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            channels = c
        self.head = nn.Sequential(*head)  # (B, 2048, 4, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, 64w, 32, 32)
        x = self.exit_flow(self.middle_flow(self.entry_flow(x)))  # (B, 1024w, 4, 4)
        x = self.head(x)  # (B, 2048w, 4, 4)
        return self.fc(torch.flatten(self.pool(x), 1))  # (B, num_classes)


def _build(*, num_classes: int, width_mult: float, **kwargs) -> Xception:
    return Xception(num_classes=num_classes, width_mult=width_mult, **kwargs)


# Recipe: see models/vgg.py's note; expect 87.5-89% (target 91.5), read from the literature, NOT measured.
# quick: tuned with `cifarzoo benchmark --preset quick --tune-budget 8m` (benchmarks/RESULTS.md).
# cpu: lr, weight decay, label smoothing, warm-up tuned with `cifarzoo benchmark --preset cpu --tune-budget 64m`.
@register_model(paper="Chollet 2017, Xception: Deep Learning with Depthwise Separable Convolutions (CVPR)",
                recipe=dict(epochs=24, warmup_epochs=5, lr=0.1, lookahead=True),
                presets={"quick": dict(epochs=11, lr=0.222, warmup_epochs=1.75, weight_decay=1.41e-4,
                                       label_smoothing=0.238),
                         "cpu": CoreBudget(width=0.125, batch=128, lr=0.445, img_s=438.0,
                                           extra=dict(weight_decay=1.41e-4, label_smoothing=0.238,
                                                      warmup_epochs=1.59))})
def xception(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """Xception with CIFAR strides (middle flow at 8×8)."""
    return _build(num_classes=num_classes, width_mult=width_mult, **kwargs)
