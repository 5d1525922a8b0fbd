"""The optimizer side of training: parameter groups, optimizers, the lr schedule and Lookahead.

Everything here is a pure function of the model and the :class:`TrainConfig`, so that
``fit``, the throughput benchmark and ``doctor`` build exactly the same optimizer.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from cifarzoo.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float):
    """Weight decay on conv and linear weights only: never on BN scales/shifts or biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_update(device: torch.device) -> bool:
    """Whether SGD and Adam(W) use their fused kernels (the whole update in a few launches): on CUDA.

    torch has CPU kernels for them too, so tests force this on CPU (monkeypatch) to run the
    GPU's optimizer path; for training on a CPU the default foreach path is kept.
    """
    return device.type == "cuda"


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device,
                   steps_per_epoch: int | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer; ``steps_per_epoch`` is needed by Muon's whitening-bias freeze."""
    c = config
    if c.optimizer == "muon":
        from cifarzoo.train.muon import make_muon_optimizer

        return make_muon_optimizer(model, c, device, steps_per_epoch)
    groups = param_groups(model, c.weight_decay)
    if c.bias_lr_scale != 1.0:
        # airbench's bias scaler (fastnet: 64): a larger lr for BN shifts only, in a third group.
        bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              for p in m.parameters(recurse=False)}
        rest = groups[1]["params"]
        groups[1]["params"] = [p for p in rest if id(p) not in bn]
        groups.append({"params": [p for p in rest if id(p) in bn], "weight_decay": 0.0,
                       "lr": c.lr * c.bias_lr_scale})
    fused = {"fused": True} if fused_update(device) else {}
    if c.optimizer == "sgd":
        if "fused" not in inspect.signature(torch.optim.SGD).parameters:  # torch < 2.4
            fused = {}
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0, **fused)
    if c.optimizer == "adam":
        # Adam's weight decay is L2 added to the gradient (the seed study used none).
        return torch.optim.Adam(groups, lr=c.lr, betas=(c.momentum, 0.999), **fused)
    return torch.optim.AdamW(groups, lr=c.lr, betas=(c.momentum, 0.999), **fused)


def lr_factor(step: int, total: int, steps_per_epoch: int, c: TrainConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total``.

    Every schedule starts with a linear warm-up from lr/10 over ``warmup_epochs``:
    - onecycle: warm-up, then linear decay to 0 at the last step (no warm-up given: 25% of the run);
    - cosine:   warm-up, then half a cosine to 0;
    - step:     warm-up, then x0.1 at 50% and again at 75% of the run;
    - constant: warm-up, then the peak.
    """
    warm = int(round(c.warmup_epochs * steps_per_epoch))
    if c.schedule == "onecycle" and warm == 0:
        warm = int(0.25 * total)
    warm = min(warm, total - 1) if total > 1 else 0
    if step < warm:
        return 0.1 + 0.9 * step / warm
    progress = (step - warm) / max(1, total - warm)  # 0 at the peak, -> 1 at the end
    if c.schedule == "onecycle":
        return max(0.0, 1.0 - progress)
    if c.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if c.schedule == "step":
        return 1.0 if progress < 0.5 else (0.1 if progress < 0.75 else 0.01)
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, *, total_steps: int,
                   steps_per_epoch: int, lr_lambda=None) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR of :func:`lr_factor` (or of ``lr_lambda(step)``, e.g. an lr range test's ramp)."""
    if lr_lambda is None:
        def lr_lambda(s: int) -> float:
            return lr_factor(s, total_steps, steps_per_epoch, config)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


class Lookahead:
    """airbench's lookahead (from hlb-CIFAR10): every 5 steps the weights and BN statistics
    move to an exponential average of themselves, ``avg = d·avg + (1-d)·w; w = avg``.

    The decay ``d = 0.95**5 · (step/total)**3`` is 0 early (plain SGD) and grows to 0.77 at
    the end, so the average spans only the last few tens of steps; at the last step the
    weights become the average. Paired with the fast BN momentum of fastnet, this gives
    the weight averaging of an EMA without an evaluation copy that lags behind a short run.
    The update is a few fused device ops on live tensors: no host sync.
    """

    every = 5

    def __init__(self, model: nn.Module):
        # state_dict() tensors alias the module's parameters and buffers (create after .to()).
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.avg = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def step(self, model: nn.Module, global_step: int, total_steps: int) -> None:
        if global_step % self.every == 0:
            decay = 0.95 ** self.every * (global_step / total_steps) ** 3
            torch._foreach_lerp_(self.avg, self.live, 1.0 - decay)
            torch._foreach_copy_(self.live, self.avg)
        if global_step == total_steps:
            torch._foreach_copy_(self.live, self.avg)  # the run ends on the average

    def state_dict(self) -> list[torch.Tensor]:
        return [t.clone() for t in self.avg]

    @torch.no_grad()
    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        torch._foreach_copy_(self.avg, [t.to(a.device) for t, a in zip(state, self.avg)])


class DeviceEMA(torch.optim.swa_utils.AveragedModel):
    """``--ema``: an exponential moving average of the weights and buffers, ``avg = d·avg + (1-d)·w``
    after every step (the first update copies), as ``AveragedModel`` with ``get_ema_multi_avg_fn(d)``
    and ``use_buffers=True`` computes it, with the same state_dict.

    torch's ``update_parameters`` reads its step counter ``n_averaged`` on the host every step
    and copies it to the device: on CUDA two blocking syncs per step. Here the counter lives on
    the model's device and is only added to; whether the next update is the first is known
    on the host (one read after construction or loading, not per step).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        device = next(model.parameters()).device
        super().__init__(model, device=device, use_buffers=True)
        self.decay = decay
        self._first: bool | None = None  # None: read n_averaged once at the next update

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._first is None:
            self._first = int(self.n_averaged) == 0
        pairs = list(zip([*self.module.parameters(), *self.module.buffers()],
                         [*model.parameters(), *model.buffers()]))
        floats = [(a, w.detach()) for a, w in pairs if a.is_floating_point()]
        if floats:
            avg, live = [a for a, _ in floats], [w for _, w in floats]
            if self._first:
                torch._foreach_copy_(avg, live)
            else:
                torch._foreach_lerp_(avg, live, 1.0 - self.decay)
        for a, w in pairs:  # integer buffers (BN's num_batches_tracked), as AveragedModel treats them
            if not a.is_floating_point():
                a.copy_(w if self._first else a * self.decay + w * (1.0 - self.decay))
        self.n_averaged += 1
        self._first = False

    def load_state_dict(self, *args, **kwargs):
        result = super().load_state_dict(*args, **kwargs)
        self._first = None
        return result
