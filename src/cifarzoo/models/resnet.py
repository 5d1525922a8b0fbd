"""ResNet-18 and ResNet-50 for 32×32 inputs.

He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image Recognition" (CVPR).
ResNet-18 stacks BasicBlocks (two 3×3 convs) ``(2, 2, 2, 2)``; ResNet-50 stacks
Bottlenecks (1×1 reduce → 3×3 → 1×1 expand ×4) ``(3, 4, 6, 3)``, in four stages of
64-128-256-512 base channels. Each block computes ``relu(residual(x) + shortcut(x))``:
the shortcut is the identity, or a projection (1×1 conv with the block's stride + BN,
the paper's option B) where the block changes the channel count or the resolution.

Changes for CIFAR (32×32), as in the common CIFAR ResNets (e.g. kuangliu/pytorch-cifar):

* **Stem**: one 3×3 stride-1 conv to 64 channels + BN + ReLU, and *no* max-pool,
  instead of the paper's 7×7 stride-2 conv and 3×3 stride-2 max-pool (which would
  leave a 32×32 image at 8×8 before the first block).
* **Strides**: stage strides 1, 2, 2, 2, so the stages run at 32, 16, 8 and 4 pixels.
  In the Bottleneck the stride sits on the 3×3 conv (torchvision's "v1.5"), not on the
  first 1×1 as in the paper; parameter counts are identical.
* **Classifier**: global average pooling and one linear layer to ``num_classes``
  (plain logits), as in the paper, with 512 (ResNet-18) or 2048 (ResNet-50) inputs.

``zero_init_residual=True`` sets the scale of each block's last BN to zero, so every
block starts as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
"""
from __future__ import annotations

import torch
from torch import nn

from cifarzoo.models.init import init_weights
from cifarzoo.models.registry import register_model, scale_width
from cifarzoo.recipe_kit import CoreBudget


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> list[nn.Module]:
    """A bias-free conv ("same" padding for odd kernels) followed by BN."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Shortcut: identity where the shape is kept, else 1×1 conv (with stride) + BN."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))


class BasicBlock(nn.Module):
    """3×3 conv → BN → ReLU → 3×3 conv → BN, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.residual = nn.Sequential(
            *conv_bn(in_channels, planes, 3, stride),
            nn.ReLU(inplace=True),
            *conv_bn(planes, out_channels, 3),
        )
        self.shortcut = projection(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (stride) → 1×1 expand to ``4·planes``, BN after each, plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.residual = nn.Sequential(
            *conv_bn(in_channels, planes, 1),
            nn.ReLU(inplace=True),
            *conv_bn(planes, planes, 3, stride),
            nn.ReLU(inplace=True),
            *conv_bn(planes, out_channels, 1),
        )
        self.shortcut = projection(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR stem → four stages of ``block`` → global average pool → linear."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        num_classes: int = 10,
        width_mult: float = 1.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        stem_channels = scale_width(64, width_mult)
        self.stem = nn.Sequential(*conv_bn(3, stem_channels, 3), nn.ReLU(inplace=True))  # (B, 64, 32, 32)
        in_channels = stem_channels
        stages = []
        for base, blocks, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2)):
            planes = scale_width(base, width_mult)
            stage = []
            for i in range(blocks):
                stage.append(block(in_channels, planes, stride if i == 0 else 1))
                in_channels = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages  # 32, 16, 8, 4 pixels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.residual[-1].weight)  # the block's last BN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, 64w, 32, 32)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512w·e, 4, 4)
        return self.fc(torch.flatten(self.pool(x), 1))  # (B, num_classes)


def _build(block, layers, *, num_classes: int, width_mult: float, **kwargs) -> ResNet:
    return ResNet(block, layers, num_classes=num_classes, width_mult=width_mult, **kwargs)


_PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition (CVPR)"


# Recipes: see models/vgg.py's note; "expect" is read from the literature, NOT measured (docs/recipes.md).
# resnet18: expect 91.0-91.7% (target 92.0); cpu: width 0.25, 8 epochs.
@register_model(paper=_PAPER, recipe=dict(epochs=42, warmup_epochs=8, lr=0.2, lookahead=True),
                presets={"cpu": dict(width_mult=0.25, epochs=8, warmup_epochs=1.6)})
def resnet18(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """ResNet-18, CIFAR stem; kwargs: ``zero_init_residual`` (False)."""
    return _build(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, width_mult=width_mult, **kwargs)


# expect 90-91% (target 92.0); quick: tuned with `cifarzoo benchmark --preset quick --tune-budget 8m` (batch 32;
# benchmarks/RESULTS.md, "Retuning the quick preset")
@register_model(paper=_PAPER,
                recipe=dict(epochs=28, warmup_epochs=6, lr=0.2, lookahead=True,
                            model_kwargs={"zero_init_residual": True}),
                presets={"quick": dict(lr=0.445, warmup_epochs=1.9, weight_decay=1.41e-4, label_smoothing=0.238),
                         "cpu": CoreBudget(width=0.125, batch=128, lr=0.2, img_s=484.0)})
def resnet50(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """ResNet-50, CIFAR stem; kwargs: ``zero_init_residual`` (False)."""
    return _build(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, width_mult=width_mult, **kwargs)
