"""Muon on the conv filters, Nesterov SGD on everything else, as one optimizer (``optimizer="muon"``).

Muon (Jordan et al. 2024; airbench94_muon) replaces a filter's momentum-SGD step by
the nearest semi-orthogonal matrix to it: the filter bank ``(out, in, kh, kw)`` is
flattened to an ``(out, in·kh·kw)`` matrix ``G``, and the step is ``-lr · NS(G)`` where
``NS`` runs a few Newton-Schulz iterations that push every singular value of ``G``
towards 1. So every direction the gradient moves the filters in moves by about the
same amount, however unbalanced the gradient's spectrum. PyTorch ships the 2-D
optimizer (``torch.optim.Muon``, torch >= 2.9); this module feeds it the filters.

How the 4-D filters reach a 2-D optimizer. ``torch.optim.Muon`` keeps its momentum
buffers keyed by the tensors it was given, so it gets one persistent 2-D stand-in per
filter bank. Before each step the stand-in is pointed at ``filter.reshape(out, -1)``
(``.data`` rebinding: a view of the filter's own storage when the filter is contiguous,
so the update lands in place; a copy for a channels_last filter, whose result is
copied back after the step) and given the gradient reshaped the same way. The matrix
is always in the ``(out, in·kh·kw)`` order, whatever the memory format, so momentum
and checkpoints mean the same on CPU and GPU. The filters stay the module's own
parameters: nothing else (the model, lookahead, checkpoints, DDP) sees the stand-ins.

As in airbench, each filter bank is rescaled to norm ``sqrt(out)`` before its step
(every conv it applies to is followed by batch norm, so the scale carries no
information) and gets no weight decay: the step size relative to the weights stays
``muon_lr`` all run. The other parameters are Nesterov SGD groups: weights (the linear
head) at ``lr`` with ``weight_decay``; BN parameters and the whitening bias at
``lr · bias_lr_scale`` with ``bn_bias_decay``, the whitening bias in a group of its own
whose step is zero after ``whiten_bias_epochs`` epochs (airbench trains it for 3); any
other 1-D parameter at ``lr`` without decay.

:class:`MuonSGD` is a ``torch.optim.Optimizer``: an ``LRScheduler`` scales every
group's ``lr`` (group 0 is the filters' Muon group), ``GradScaler`` unscales the real
gradients, and ``state_dict``/``load_state_dict`` round-trip everything, the step count
included.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cifarzoo.errors import CifarzooError

NS_STEPS = 3  # Newton-Schulz iterations per step: airbench94_muon's (torch's default is 5)


def muon_param_groups(model: nn.Module, c) -> tuple[list[nn.Parameter], list[dict]]:
    """(4-D conv filters for Muon, named SGD groups) of ``model``'s trainable parameters."""
    from cifarzoo.models import get_entry

    hook = get_entry(c.model).param_groups  # the model's own groups (fastnet's whitening bias)
    own = {id(p) for p in (hook(model) if hook else {}).get("whiten_bias", ())}
    bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
          for p in m.parameters(recurse=False)}
    filters, weights, biases, wbias, rest = [], [], [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in own:
            wbias.append(p)
        elif p.ndim == 4:
            filters.append(p)
        elif p.ndim > 1:
            weights.append(p)
        else:
            (biases if id(p) in bn else rest).append(p)
    bias_lr = c.lr * c.bias_lr_scale
    groups = [dict(name="weights", params=weights, lr=c.lr, weight_decay=c.weight_decay),
              dict(name="bn", params=biases, lr=bias_lr, weight_decay=c.bn_bias_decay),
              dict(name="whiten_bias", params=wbias, lr=bias_lr, weight_decay=c.bn_bias_decay),
              dict(name="other", params=rest, lr=c.lr, weight_decay=0.0)]
    return filters, [g for g in groups if g["params"]]


class MuonSGD(torch.optim.Optimizer):
    """Muon for ``filters`` (4-D), Nesterov SGD for ``sgd_groups``; one step, one state.

    ``freeze_after`` is a name -> step count: that SGD group's step is zero from that
    optimizer step on (the whitening bias). Hyperparameters live in this object's
    ``param_groups`` (what schedulers change) and are copied to the two inner
    optimizers at every step.
    """

    def __init__(self, filters: list[nn.Parameter], sgd_groups: list[dict], *, muon_lr: float,
                 muon_momentum: float, momentum: float, fused: bool = False,
                 freeze_after: dict[str, int] | None = None):
        muon_group = dict(name="filters", params=list(filters), lr=muon_lr, momentum=muon_momentum, weight_decay=0.0)
        sgd_groups = [dict(g, momentum=momentum) for g in sgd_groups]
        super().__init__([muon_group] + sgd_groups, dict(lr=muon_lr, momentum=momentum, weight_decay=0.0))
        self._filters = list(filters)
        # One persistent 2-D stand-in per filter bank: the key of its Muon momentum buffer.
        self._flat = [p.detach().reshape(p.shape[0], -1) for p in self._filters]
        self.muon = torch.optim.Muon(self._flat, lr=muon_lr, momentum=muon_momentum, nesterov=True,
                                     weight_decay=0.0, ns_steps=NS_STEPS) if filters else None
        extra = {"fused": True} if fused else {}
        self.sgd = torch.optim.SGD([{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
                                    for g in sgd_groups], lr=muon_lr, momentum=momentum, nesterov=momentum > 0,
                                   **extra) if sgd_groups else None
        self.freeze_after = dict(freeze_after or {})
        self.steps = 0  # optimizer steps taken

    def _sync_hyperparameters(self) -> None:
        muon_group, *sgd_groups = self.param_groups
        if self.muon is not None:
            self.muon.param_groups[0].update(lr=muon_group["lr"], momentum=muon_group["momentum"])
        if self.sgd is not None:
            for outer, inner in zip(sgd_groups, self.sgd.param_groups):
                frozen = self.steps >= self.freeze_after.get(outer["name"], math.inf)
                # lr 0 is an exact freeze for SGD: the step, decay included, is lr times something.
                inner.update(lr=0.0 if frozen else outer["lr"], weight_decay=outer["weight_decay"],
                             momentum=outer["momentum"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_hyperparameters()
        for p, flat in zip(self._filters, self._flat):
            if p.grad is None:
                flat.grad = None
                continue
            flat.data = p.detach().reshape(p.shape[0], -1)  # (out, in·kh·kw): a view if p is contiguous
            flat.mul_(math.sqrt(flat.shape[0]) / flat.norm())  # airbench: filters at norm sqrt(out)
            flat.grad = p.grad.reshape(p.shape[0], -1)
        if self.muon is not None:
            self.muon.step()
        if self.sgd is not None:
            self.sgd.step()
        for p, flat in zip(self._filters, self._flat):
            if flat.grad is not None and flat.data_ptr() != p.data_ptr():
                p.copy_(flat.view(p.shape))  # a channels_last filter: its update was made on a copy
            flat.grad = None
        self.steps += 1
        return loss

    def state_dict(self) -> dict:
        return {
            "muon": self.muon.state_dict() if self.muon is not None else None,
            "sgd": self.sgd.state_dict() if self.sgd is not None else None,
            "groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        groups = state.get("groups") if isinstance(state, dict) else None
        if groups is None or [g.get("name") for g in groups] != [g["name"] for g in self.param_groups]:
            raise CifarzooError("this checkpoint's optimizer state is not from the same model with optimizer "
                                "'muon' (its parameter groups differ); resume with the settings it was saved with")
        for inner, key in ((self.muon, "muon"), (self.sgd, "sgd")):
            if inner is not None:
                inner.load_state_dict(state[key])
        for g, saved in zip(self.param_groups, groups):
            g.update(saved)
        self.steps = int(state["steps"])


def make_muon_optimizer(model: nn.Module, c, device: torch.device,
                        steps_per_epoch: int | None = None) -> MuonSGD:
    """The ``optimizer="muon"`` optimizer for ``model`` under TrainConfig ``c``.

    ``steps_per_epoch`` is needed when ``c.whiten_bias_epochs`` is set (the whitening
    bias is frozen after that many epochs of steps).
    """
    if not hasattr(torch.optim, "Muon"):
        raise CifarzooError(f"optimizer 'muon' needs PyTorch >= 2.9 (torch.optim.Muon); this is torch "
                            f"{torch.__version__}: upgrade it or use --optimizer sgd")
    filters, groups = muon_param_groups(model, c)
    freeze = {}
    if c.whiten_bias_epochs is not None and any(g["name"] == "whiten_bias" for g in groups):
        if steps_per_epoch is None:
            raise CifarzooError("whiten_bias_epochs needs the number of steps per epoch to freeze the "
                                "whitening bias (pass steps_per_epoch)")
        freeze["whiten_bias"] = c.whiten_bias_epochs * steps_per_epoch
    fused = device.type == "cuda" and all(p.is_cuda for g in groups for p in g["params"])
    return MuonSGD(filters, groups, muon_lr=c.muon_lr, muon_momentum=c.muon_momentum, momentum=c.momentum,
                   fused=fused, freeze_after=freeze)
