"""What a network's own structure says about why it cannot learn: the causes of the original study's failure.

Each check runs the network on a small batch in eval mode, under ``no_grad``, with
forward hooks (nothing it changes stays changed), and returns a plain-words problem, or
None when it sees none:

* :func:`outputs_problem`: outputs that are probabilities (a softmax ends the network),
  ReLU'd (all >= 0), or unbounded scores under a loss that expects probabilities;
* :func:`relu_bottleneck_problem`: the output layer reads a ReLU'd layer no wider than the
  number of classes (the study's ``Dense(10, relu)`` before ``Dense(10, softmax)``);
* :func:`crushed_map_problem`: strides that shrink the 32×32 input to 1×1 while 3×3
  convolutions still follow (ImageNet strides on CIFAR);
* :func:`shortcut_problem`: residual blocks whose output does not change when their
  shortcut's value does (a perturbation check): a shortcut computed but never added.

``cifarzoo doctor`` reports them, and the training loop's stall guard names them.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from cifarzoo.models.as_written import output_kind


@contextmanager
def _eval(model: nn.Module):
    """Eval mode and no_grad for the duration, the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return getattr(out, "logits", out).float()


def outputs_problem(model: nn.Module, x: torch.Tensor) -> str | None:
    """Outputs that are not logits, and what the loss does with them."""
    kind = output_kind(model)
    with _eval(model):
        out = _outputs(model, x)
    if kind == "unbounded":
        return ("the outputs are unbounded scores (a plain linear layer, no softmax), but the loss expects "
                "probabilities: it clips them into [1e-7, 1 - 1e-7], so an output outside that range gets no "
                "gradient at all and stays where it is")
    nonneg = bool((out >= 0).all())
    if nonneg and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3):
        return ("the network ends in a softmax: its outputs are probabilities, not logits"
                + (", under a loss that clips them into [1e-7, 1 - 1e-7] (no gradient past either end)"
                   if kind == "probabilities" else ", and the loss applies a softmax of its own on top"))
    if nonneg:
        return "every output is >= 0: a ReLU sits on the outputs, so no class can be voted against"
    return None


def _inputs_seen(model: nn.Module, x: torch.Tensor, modules: list[nn.Module]) -> list[tuple[nn.Module, torch.Tensor]]:
    """(module, its input) for each call of one of ``modules`` in an eval-mode forward pass of ``x``, in call order."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].clone()))) for m in modules]
    try:
        with _eval(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _last_linear_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The input of the last ``nn.Linear`` the forward pass calls (None: none called)."""
    seen = _inputs_seen(model, x, [m for m in model.modules() if isinstance(m, nn.Linear)])
    return seen[-1][1] if seen else None


def relu_bottleneck_problem(model: nn.Module, x: torch.Tensor, num_classes: int) -> str | None:
    """The output layer reads at most ``num_classes`` features, all >= 0: a narrow ReLU'd layer."""
    features = _last_linear_input(model, x)
    if features is None or features.dim() != 2 or features.shape[1] > num_classes or (features < 0).any():
        return None
    dead = int((features == 0).all(0).sum())
    return (f"the output layer reads only {features.shape[1]} ReLU'd units (a ReLU'd {features.shape[1]}-unit "
            f"layer before the output): {dead} of them are 0 for every image of a check batch already; a unit "
            "that is 0 for every image gets no gradient again, and once all are, every image gets the same "
            "output")


def crushed_map_problem(model: nn.Module, x: torch.Tensor) -> str | None:
    """Convolutions larger than 1×1 that run on a 1×1 feature map."""
    seen = _inputs_seen(model, x, [m for m in model.modules() if isinstance(m, nn.Conv2d)])
    convs = [(m.kernel_size[0] * m.kernel_size[1], tuple(t.shape[-2:])) for m, t in seen]  # (kernel area, input H×W)
    on_pixel = [i for i, (area, hw) in enumerate(convs) if area > 1 and hw == (1, 1)]
    if not on_pixel:
        return None
    return (f"the strides shrink the {x.shape[-2]}x{x.shape[-1]} input to a 1x1 feature map before the head: "
            f"{len(on_pixel)} of its {len(convs)} convolutions have a 3x3 (or larger) kernel yet run on a single "
            f"pixel, from convolution {on_pixel[0] + 1} on (strides meant for 224x224 ImageNet images)")


def _blocks_with_shortcut(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "shortcut", None), nn.Module)]


def shortcut_problem(model: nn.Module, x: torch.Tensor) -> str | None:
    """Residual blocks whose output stays the same when their shortcut's output is perturbed."""
    blocks = _blocks_with_shortcut(model)
    if not blocks:
        return None
    names = {id(m): name for name, m in blocks}
    inputs: dict[str, torch.Tensor] = {}
    for m, t in _inputs_seen(model, x, [m for _, m in blocks]):
        inputs.setdefault(names[id(m)], t)  # a block's first call
    ignored = []
    with _eval(model):
        for name, block in blocks:
            if name not in inputs:
                continue
            before = block(inputs[name].clone())
            # Perturb the shortcut's value: add 1 everywhere (its scale: BN'd activations).
            h = block.shortcut.register_forward_hook(lambda _m, _args, out: out + 1.0)
            try:
                after = block(inputs[name].clone())
            finally:
                h.remove()
            if torch.equal(before, after):
                ignored.append(name)
    if not ignored:
        return None
    return (f"{len(ignored)} of {len(blocks)} residual blocks ignore their shortcut: changing the shortcut's value "
            "leaves the block's output unchanged (it is computed but never added), so the network is a plain deep "
            "stack without the identity paths that let a deep network train")


def structure_problems(model: nn.Module, num_classes: int, x: torch.Tensor | None = None) -> list[str]:
    """Every problem the checks above find on ``x`` (default: 4 random normalized 32×32 images)."""
    if x is None:
        param = next(model.parameters(), None)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, 32, 32, generator=gen)
        if param is not None:
            x = x.to(param.device, param.dtype)
    found = [outputs_problem(model, x), relu_bottleneck_problem(model, x, num_classes),
             crushed_map_problem(model, x), shortcut_problem(model, x)]
    return [p for p in found if p]
