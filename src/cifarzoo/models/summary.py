"""Size and cost of the registered models: parameters, multiply-accumulates, layer tables.

Library functions return values; the ``cifarzoo models`` command prints them.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cifarzoo.models.registry import create, get_entry, list_models

INPUT_SIZE = (1, 3, 32, 32)  # one CIFAR image


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...] = INPUT_SIZE) -> int:
    """Multiply-accumulates of one eval-mode forward on CPU (convolutions and matmuls).

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which reports 2 FLOPs
    per multiply-accumulate; element-wise layers (BN, activations, pooling) are not
    counted, as is usual for MAC figures. The model's mode is restored afterwards.
    """
    was_training = model.training
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(input_size, dtype=dtype)
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_table(width_mult: float = 1.0, num_classes: int = 10, *, as_written: bool = False) -> list[dict]:
    """One row per registered model: ``{name, params, macs, paper, aliases}``; the original study's
    networks as written too if ``as_written``."""
    rows = []
    for name in list_models(as_written=as_written):
        entry = get_entry(name)
        model = create(name, num_classes=num_classes, width_mult=width_mult)
        rows.append({
            "name": name,
            "params": count_parameters(model),
            "macs": count_macs(model),
            "paper": entry.paper,
            "aliases": list(entry.aliases),
        })
    return rows


def layer_summary(name: str, width_mult: float = 1.0, num_classes: int = 10, depth: int = 3) -> str:
    """A torchinfo table of model ``name``: every layer to ``depth`` with output shape and parameters."""
    import torchinfo  # imported here: only this function needs it

    model = create(name, num_classes=num_classes, width_mult=width_mult).eval()
    stats = torchinfo.summary(
        model,
        input_size=INPUT_SIZE,
        depth=depth,
        col_names=("output_size", "num_params"),
        row_settings=("var_names",),
        device="cpu",
        mode="eval",
        verbose=0,
    )
    return str(stats)
