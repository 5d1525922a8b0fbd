"""The weight initialization the zoo's networks share."""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, *, linear_std: float | None = 0.01) -> None:
    """Kaiming-normal convolutions, BN scale 1 / shift 0, and N(0, ``linear_std``) linear layers.

    Convolutions use fan_out (He et al. 2015), except depthwise ones: a depthwise filter
    sees one channel, so fan_out (C·k²) would make it tiny; they use fan_in (k²).
    ``linear_std=None`` keeps PyTorch's default linear init (VGG's BN-free classifier,
    where N(0, 0.01) shrinks the signal ~10x per layer).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            mode = "fan_in" if m.groups > 1 else "fan_out"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
