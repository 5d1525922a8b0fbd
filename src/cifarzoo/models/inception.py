"""Inception-v1 (GoogLeNet) for 32×32 inputs.

Szegedy et al. 2015, "Going Deeper with Convolutions" (CVPR). Nine Inception modules
3a…5b with the branch widths of the paper's Table 1. Each module runs four branches on
the same input and concatenates them on channels:

    1×1  |  1×1 reduce → 3×3  |  1×1 reduce → 5×5  |  3×3 max-pool (stride 1) → 1×1 "pool proj"

The 5×5 branch is the paper's true 5×5 convolution (many CIFAR ports, e.g.
kuangliu/pytorch-cifar and torchvision's, put a 3×3 there or stack two 3×3s).

Changes for CIFAR (32×32):

* **Stem**: one 3×3 stride-1 conv to 192 channels + BN + ReLU, instead of the paper's
  7×7/2 conv, max-pool, 1×1 and 3×3 convs and a second max-pool (which take 224 → 28
  pixels). The stem does no early pooling: 3a and 3b run at the full 32×32.
* **Strides**: 3×3 stride-2 max-pools after 3b (32 → 16) and after 4e (16 → 8), where
  the paper pools 28 → 14 and 14 → 7. So 4a…4e run at 16×16 and 5a, 5b at 8×8.
* **Normalization**: batch norm after every conv, then ReLU (the paper predates BN;
  this is the "BN-Inception" habit). Convs have no bias.
* **Classifier**: global average pooling (8×8 instead of 7×7), dropout 0.4 as in the
  paper, one linear layer to ``num_classes``; plain logits.
* **Auxiliary classifiers** (``aux_logits=True``): after 4a and 4d, as in the paper:
  5×5 stride-3 average pool, 1×1 conv to 128 + BN + ReLU, FC 1024 + ReLU, dropout 0.7,
  linear. On the 16×16 map the pool gives 4×4, exactly the paper's size (14×14 → 4×4),
  so the FC has the paper's 128·4·4 = 2048 inputs. They run only in training mode:
  ``model.train()`` gives :class:`InceptionOutputs` ``(logits, aux1, aux2)`` (``.logits``,
  ``.aux_logits``, as torchvision's ``GoogLeNetOutputs``), ``model.eval()`` just logits (the
  trainer weights the auxiliary losses by 0.3, as the paper does). With
  ``aux_logits=False`` (the default) the auxiliary heads are not built at all;
  :meth:`GoogLeNet.drop_aux` removes them from a trained model, e.g. before export.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cifarzoo.models.init import init_weights
from cifarzoo.models.registry import register_model, scale_width
from cifarzoo.recipe_kit import CoreBudget


class InceptionOutputs(NamedTuple):
    """Training-mode output with auxiliary heads; each ``(B, num_classes)``."""

    logits: torch.Tensor
    aux1: torch.Tensor  # head after 4a
    aux2: torch.Tensor  # head after 4d

    @property
    def aux_logits(self) -> tuple[torch.Tensor, ...]:
        return (self.aux1, self.aux2)


# Architectures as data: the paper's Table 1, one row per module,
# (1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool proj). "M" is a 3×3/2 max-pool.
MODULES: list[tuple[str, tuple[int, int, int, int, int, int]] | str] = [
    ("3a", (64, 96, 128, 16, 32, 32)),      # → 256 channels
    ("3b", (128, 128, 192, 32, 96, 64)),    # → 480
    "M",                                    # 32 → 16
    ("4a", (192, 96, 208, 16, 48, 64)),     # → 512   (aux1 reads this output)
    ("4b", (160, 112, 224, 24, 64, 64)),    # → 512
    ("4c", (128, 128, 256, 24, 64, 64)),    # → 512
    ("4d", (112, 144, 288, 32, 64, 64)),    # → 528   (aux2 reads this output)
    ("4e", (256, 160, 320, 32, 128, 128)),  # → 832
    "M",                                    # 16 → 8
    ("5a", (256, 160, 320, 32, 128, 128)),  # → 832
    ("5b", (384, 192, 384, 48, 128, 128)),  # → 1024
]
AUX_AFTER = ("4a", "4d")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    """Four parallel branches concatenated on channels; the spatial size is kept."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int,
                 ch5x5red: int, ch5x5: int, pool_proj: int):
        super().__init__()
        self.branch1 = conv_bn_relu(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv_bn_relu(in_channels, ch3x3red, 1), conv_bn_relu(ch3x3red, ch3x3, 3))
        self.branch3 = nn.Sequential(conv_bn_relu(in_channels, ch5x5red, 1), conv_bn_relu(ch5x5red, ch5x5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], dim=1)  # (B, out_channels, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier on a 16×16 map: avgpool 5/3 → 1×1 conv 128 → FC 1024 → dropout 0.7 → linear."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0, dropout: float = 0.7):
        super().__init__()
        conv_channels = scale_width(128, width_mult)
        hidden = scale_width(1024, width_mult)
        self.pool = nn.AvgPool2d(kernel_size=5, stride=3)  # (B, C, 16, 16) → (B, C, 4, 4)
        self.conv = conv_bn_relu(in_channels, conv_channels, 1)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(conv_channels * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.pool(x)))


class GoogLeNet(nn.Module):
    """CIFAR stem → Inception modules (pools between stages) → GAP → dropout → linear."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        width_mult: float = 1.0,
        aux_logits: bool = False,
        dropout: float = 0.4,
        aux_dropout: float = 0.7,
    ):
        super().__init__()
        self.aux_logits = aux_logits
        channels = scale_width(192, width_mult)
        self.stem = conv_bn_relu(3, channels, 3)  # (B, 192, 32, 32)
        self.blocks = nn.ModuleDict()
        self.aux = nn.ModuleDict()
        pools = 0
        for item in MODULES:
            if item == "M":
                pools += 1
                self.blocks[f"pool{pools}"] = nn.MaxPool2d(3, stride=2, padding=1)
                continue
            name, widths = item
            module = Inception(channels, *(scale_width(c, width_mult) for c in widths))
            self.blocks[name] = module
            channels = module.out_channels
            if aux_logits and name in AUX_AFTER:
                self.aux[name] = InceptionAux(channels, num_classes, width_mult, aux_dropout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def drop_aux(self) -> "GoogLeNet":
        """Remove the auxiliary classifiers (after training, before export); returns ``self``."""
        self.aux = nn.ModuleDict()
        self.aux_logits = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | InceptionOutputs:
        use_aux = self.training and self.aux_logits
        aux_out = []
        x = self.stem(x)
        for name, block in self.blocks.items():
            x = block(x)
            if use_aux and name in self.aux:
                aux_out.append(self.aux[name](x))
        logits = self.fc(self.dropout(torch.flatten(self.pool(x), 1)))  # (B, num_classes)
        if use_aux:
            return InceptionOutputs(logits, *aux_out)
        return logits


def _build(*, num_classes: int, width_mult: float, **kwargs) -> GoogLeNet:
    return GoogLeNet(num_classes=num_classes, width_mult=width_mult, **kwargs)


def _split_outputs(out) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The ``split_outputs`` hook: (logits, auxiliary heads' logits) of a training-mode forward."""
    return (out.logits, out.aux_logits) if isinstance(out, InceptionOutputs) else (out, ())


# Recipe: see models/vgg.py's note; expect 89-90% (target 91.5), read from the literature, NOT measured.
# cpu: lr, weight decay, label smoothing, warm-up tuned with `cifarzoo benchmark --preset cpu --tune-budget 64m`.
@register_model(paper="Szegedy et al. 2015, Going Deeper with Convolutions (CVPR)", aliases=("googlenet",),
                split_outputs=_split_outputs,
                recipe=dict(epochs=17, warmup_epochs=3.5, lr=0.1, lookahead=True, model_kwargs={"aux_logits": True}),
                presets={"quick": dict(epochs=9),
                         "cpu": CoreBudget(width=0.125, batch=128, lr=0.445, img_s=228.0,
                                           extra=dict(weight_decay=1.41e-4, label_smoothing=0.238,
                                                      warmup_epochs=0.793))})
def inception(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """Inception-v1; kwargs: ``aux_logits`` (False), ``dropout`` (0.4), ``aux_dropout`` (0.7)."""
    return _build(num_classes=num_classes, width_mult=width_mult, **kwargs)
