"""The one training step: ``fit``, ``benchmarks/throughput.py`` and ``doctor``'s lr range test all call it.

    model = build_model(config, num_classes=10, device=device, whiten_images=x)   # the recipe's model
    step = make_step(model, config, device, total_steps=n, steps_per_epoch=k)      # optimizer, schedule, ...
    loss, logits = step(x, y)                                                      # one optimizer step

``TrainStep`` holds everything a step touches (optimizer, lr schedule, fp16 grad
scaler, EMA, lookahead, the compiled or DDP-wrapped forward) and its state for a
checkpoint, so what the benchmark times is exactly what training runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarzoo.device import autocast_context
from cifarzoo.models.as_written import output_kind, output_loss
from cifarzoo.train.config import TrainConfig
from cifarzoo.train.optim import DeviceEMA, Lookahead, make_optimizer, make_scheduler


def model_loss(out, y: torch.Tensor, config: TrainConfig, outputs: str = "logits",
               split_outputs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to optimize, main logits). Auxiliary heads (Inception, training only) add aux_weight x their loss.

    ``outputs`` is what the network returns (``models.as_written.output_kind``): the zoo's
    networks give logits; the original study's as-written ones are trained under Keras'
    probability loss, as they were. ``split_outputs`` is the model's hook that separates
    the logits from the auxiliary heads' (default: ``config.model``'s).
    """
    if split_outputs is None:
        from cifarzoo.models import get_entry

        split_outputs = get_entry(config.model).split_outputs
    logits, aux = split_outputs(out)
    loss = output_loss(logits, y, outputs, config.label_smoothing)
    for a in aux:
        loss = loss + config.aux_weight * F.cross_entropy(a.float(), y, label_smoothing=config.label_smoothing)
    return loss, logits


def build_model(config: TrainConfig, num_classes: int, device: torch.device, *,
                whiten_images: torch.Tensor | None = None) -> nn.Module:
    """The recipe's model on ``device``: its data-dependent init (fastnet's whitening), channels_last.

    ``whiten_images`` (normalized ``(N, 3, 32, 32)``) go to the model's ``init_from_data``
    hook when the recipe's ``whiten_init`` is set; without them (a resumed run, a
    benchmark) the hook only prepares the model (fastnet: frozen filters).
    """
    from cifarzoo import models

    model = models.from_config(config, num_classes)
    init = models.get_entry(config.model).init_from_data
    if config.whiten_init and init is not None:
        init(model, whiten_images)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class TrainStep:
    """One optimizer step of ``model`` under ``config``; call it with a batch, get ``(loss, logits)`` back.

    ``model`` is the plain module whose weights are saved; ``forward`` is what runs the
    batch (``model`` itself, or wrapped in DDP and/or torch.compile). The returned
    tensors are detached and stay on the device: no host sync inside the step.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, device: torch.device, *, precision: str,
                 total_steps: int, steps_per_epoch: int, forward: nn.Module | None = None, lr_lambda=None):
        self.model, self.config, self.device, self.precision = model, config, device, precision
        self.forward = forward if forward is not None else model
        self.outputs = output_kind(model)  # "logits", or an as-written network's probabilities
        self.total_steps = total_steps
        self.global_step = 0  # optimizer steps taken so far (lookahead's clock)
        self.optimizer = make_optimizer(model, config, device, steps_per_epoch)
        self.scheduler = make_scheduler(self.optimizer, config, total_steps=total_steps,
                                        steps_per_epoch=steps_per_epoch, lr_lambda=lr_lambda)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(precision == "fp16"))
        self.ema = None
        if config.ema:
            # Average of weights (and BN statistics) for evaluation; decay per step; no host sync.
            self.ema = DeviceEMA(model, decay=0.999)
        self.lookahead = Lookahead(model) if config.lookahead else None
        self.torn = False  # True while (or if interrupted while) the weights are being updated
        self._buffers: list[torch.Tensor] | None = None  # the model's buffers and their copies (_snapshot)
        self._saved: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Phase 1 touches only gradients, BatchNorm's running statistics and the RNG (dropout):
        # interrupted there, they are put back, so the state is that of the last completed step.
        snapshot = self._snapshot()
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with autocast_context(self.device, self.precision):
                out = self.forward(x)
            # The zoo's networks (logits) call model_loss(out, y, config) exactly as before.
            extra = {} if self.outputs == "logits" else {"outputs": self.outputs}
            loss, logits = model_loss(out, y, self.config, **extra)
            self.scaler.scale(loss).backward()
        except BaseException:
            self._restore(snapshot)
            raise
        # Phase 2 changes weights, optimizer, schedule, EMA and lookahead: interrupted there, the
        # state is between two steps and is marked ``torn`` (not to be saved).
        self.torn = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.global_step += 1
        if self.lookahead is not None:
            self.lookahead.step(self.model, self.global_step, self.total_steps)
        self.torn = False
        return loss.detach(), logits.detach()

    def _snapshot(self) -> tuple:
        """Copies of what a forward pass changes besides gradients: buffers (BN statistics) and the RNG."""
        if self._buffers is None:
            self._buffers = [b for b in self.model.buffers() if b is not None]
            self._saved = [b.clone() for b in self._buffers]
        if self._buffers:
            torch._foreach_copy_(self._saved, self._buffers)
        # CUDA's RNG (dropout on the GPU): no CPU stand-in; a Ctrl-C on a GPU run exercises it.
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda_rng

    def _restore(self, snapshot: tuple) -> None:
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._saved)
        torch.set_rng_state(snapshot[0])
        if snapshot[1] is not None:
            torch.cuda.set_rng_state(snapshot[1], self.device)
        self.optimizer.zero_grad(set_to_none=True)

    step = __call__

    def train(self) -> None:
        self.forward.train()

    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate and save: the EMA copy when the recipe keeps one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        """The checkpoint keys this step owns (see :mod:`cifarzoo.train.checkpoint`)."""
        state = {
            "state_dict": self.eval_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        if self.ema is not None:
            state["ema_state_dict"] = self.ema.state_dict()
            state["train_state_dict"] = self.model.state_dict()
        if self.lookahead is not None:
            state["lookahead"] = self.lookahead.state_dict()
        return state

    def load_state_dict(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["train_state_dict"] if "train_state_dict" in ckpt else ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and "ema_state_dict" in ckpt:
            self.ema.load_state_dict(ckpt["ema_state_dict"])
        if self.lookahead is not None and "lookahead" in ckpt:
            self.lookahead.load_state_dict(ckpt["lookahead"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])


def make_step(model: nn.Module, config: TrainConfig, device: torch.device, *, total_steps: int,
              steps_per_epoch: int, precision: str = "fp32", compile: bool = False, ddp: bool = False,
              lr_lambda=None) -> TrainStep:
    """The :class:`TrainStep` ``fit`` runs for ``model`` (from :func:`build_model`) under ``config``.

    ``total_steps``/``steps_per_epoch`` shape the lr schedule and lookahead's decay;
    ``lr_lambda(step)`` replaces the schedule's multiplier of the peak lr. ``ddp`` wraps
    the forward in DistributedDataParallel, ``compile`` in torch.compile (in that order).
    """
    forward: nn.Module = model
    if ddp:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        forward = torch.compile(forward)
    return TrainStep(model, config, device, precision=precision, total_steps=total_steps,
                     steps_per_epoch=steps_per_epoch, forward=forward, lr_lambda=lr_lambda)
