"""`cifarzoo doctor MODEL`: the checks a careful practitioner runs before a long training.

Each check returns a :class:`Check` with a plain-words finding. Every one of them
would have caught a failure of the original study before its 50 epochs:
- the train and test images come out of the *same* normalization (it divided train
  by 225 and test by 255);
- the labels are balanced and aligned (a model can fit them at all);
- at initialization the loss is close to ln(C) and the outputs are logits, not
  probabilities or ReLU'd values;
- the network's structure (models/checks.py): no ReLU'd layer as narrow as the classes
  before the output, no 3x3 convolution on a 1x1 feature map (ImageNet strides), and no
  residual block that ignores its shortcut;
- the model can overfit one batch (a missing shortcut, a ReLU on the logits or a
  crushed 32x32 input shows up here);
- a short learning-rate range test (Smith 2017) shows where the loss diverges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cifarzoo.data import Dataset
from cifarzoo.errors import CifarzooError


@dataclass
class Check:
    name: str
    ok: bool
    finding: str  # one or two plain sentences
    details: dict = field(default_factory=dict)


@dataclass
class DoctorReport:
    model: str
    checks: list[Check]
    suggested_lr: float | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def check_normalization(ds: Dataset, mode: str = "mean-std") -> Check:
    """Normalize train and test as a run with ``normalize=mode`` does (TrainConfig.normalize): one
    transform for both, and with the training mean/std both should come out near mean 0, std 1."""
    from cifarzoo.data.loader import input_normalization, normalize

    eval_ds, train_mean, train_std = input_normalization(ds, mode)
    transforms = {"train": (tuple(train_mean), tuple(train_std)), "test": (tuple(eval_ds.mean), tuple(eval_ds.std))}
    stats = {}
    for split, images in (("train", ds.train_images), ("test", ds.test_images)):
        x = normalize(torch.from_numpy(images[:10000]), *transforms[split])
        stats[split] = {"mean": x.mean(dim=(0, 2, 3)).tolist(), "std": x.std(dim=(0, 2, 3)).tolist()}
    fmt = lambda v: "/".join(f"{x:+.2f}" for x in v)  # noqa: E731
    finding = (f"train has per-channel mean {fmt(stats['train']['mean'])}, std {fmt(stats['train']['std'])}; "
               f"test has mean {fmt(stats['test']['mean'])}, std {fmt(stats['test']['std'])}.")
    if transforms["train"] != transforms["test"]:
        (m_tr, s_tr), (m_te, s_te) = transforms["train"], transforms["test"]
        scale = s_te[0] / s_tr[0]
        return Check("normalization", False,
                     f"train and test are normalized differently: training images (x - {m_tr[0]:g}) / {s_tr[0]:g}, "
                     f"test images (x - {m_te[0]:g}) / {s_te[0]:g}, so every test input is {scale:.3f}x what the "
                     "same image gave in training. " + finding, {**stats, "transforms": transforms})
    if mode != "mean-std":  # one transform for both, but not centred: nothing more to compare
        return Check("normalization", True, "both splits go through the same transform. " + finding, stats)
    worst_mean = max(abs(m) for s in stats.values() for m in s["mean"])
    worst_std = max(abs(math.log(v)) for s in stats.values() for v in s["std"])
    ok = worst_mean < 0.25 and worst_std < math.log(1.3)
    finding = "after normalizing with the training mean/std, " + finding
    finding += (" Both splits go through the same transform." if ok else
                " The splits do not look alike after one normalization: check the data source.")
    return Check("normalization", ok, finding, stats)


def check_balance(ds: Dataset) -> Check:
    details, worst = {}, 1.0
    for split, labels in (("train", ds.train_labels), ("test", ds.test_labels)):
        counts = np.bincount(labels, minlength=ds.num_classes)
        details[split] = dict(zip(ds.classes, counts.tolist()))
        if counts.min() == 0:
            worst = math.inf
        else:
            worst = max(worst, counts.max() / counts.min())
    ok = worst <= 1.5
    finding = (f"labels are balanced (largest/smallest class ratio {worst:.2f})." if ok else
               f"labels are imbalanced (largest/smallest class ratio {worst:.2f}); accuracy will favour large classes.")
    return Check("label balance", ok, finding, details)


def check_initial_outputs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> Check:
    """The initial loss (the network's own: cross-entropy on logits, Keras' on an as-written network's
    outputs) near ln(C), and outputs that are logits (models.checks.outputs_problem)."""
    from cifarzoo.models.as_written import output_kind, output_loss
    from cifarzoo.models.checks import outputs_problem

    model.eval()
    with torch.no_grad():
        out = model(x)
    loss = output_loss(out, y, output_kind(model)).item()
    ln_c = math.log(num_classes)
    problem = outputs_problem(model, x)
    problems = [problem] if problem else []
    if not (0.5 * ln_c < loss < 2.5 * ln_c):
        problems.append(f"the initial loss {loss:.3f} is far from ln({num_classes}) = {ln_c:.3f}: "
                        "the initial logits are too large")
    ok = not problems
    finding = (f"initial loss {loss:.3f} (ln {num_classes} = {ln_c:.3f}); outputs are unconstrained logits."
               if ok else "; ".join(problems) + ".")
    return Check("initial outputs", ok, finding, {"initial_loss": loss})


def check_structure(model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> list[Check]:
    """The output layer's input, the feature map size and the residual shortcuts (models.checks)."""
    from cifarzoo.models.checks import crushed_map_problem, relu_bottleneck_problem, shortcut_problem

    found = [
        ("output layer's input", relu_bottleneck_problem(model, x, num_classes),
         "the output layer does not read a ReLU'd layer narrower than the classes."),
        ("feature map size", crushed_map_problem(model, x),
         "no 3x3 (or larger) convolution runs on a 1x1 feature map."),
        ("residual shortcuts", shortcut_problem(model, x),
         "every residual block's output depends on its shortcut (or the network has none)."),
    ]
    return [Check(name, problem is None, problem + "." if problem else fine) for name, problem, fine in found]


def check_overfit_batch(model, x, y, *, steps: int = 300, lr: float = 1e-3, target: float = 0.1) -> Check:
    """Adam at lr 1e-3 (the seed study's setting) should drive one batch's loss (the network's own)
    below ``target``."""
    from cifarzoo.models.as_written import output_kind, output_loss

    kind = output_kind(model)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(1, steps + 1):
        out = model(x)
        logits = getattr(out, "logits", out)  # Inception in training mode: InceptionOutputs
        loss = output_loss(logits, y, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        if losses[-1] < target:
            return Check("overfit one batch", True,
                         f"the model fits one batch of {len(y)} images (loss {losses[-1]:.3f} < {target}) "
                         f"in {step} steps of Adam at lr {lr:g}.", {"steps": step, "losses": losses})
    return Check("overfit one batch", False,
                 f"the model did NOT fit one batch of {len(y)} images in {steps} steps (loss went "
                 f"{losses[0]:.3f} -> {losses[-1]:.3f}). A network that cannot memorize 64 images will not learn "
                 "50,000: look for a missing shortcut, an activation on the logits, or strides that shrink "
                 "the image to nothing.", {"steps": steps, "losses": losses})


@dataclass(repr=False)
class LRCurve:
    """A learning-rate range test's result: the smoothed loss at each lr tried, and the lr it suggests."""
    lrs: list[float]  # one per step, rising exponentially
    losses: list[float]  # training loss at each, smoothed (0.7 old + 0.3 new)
    suggested_lr: float  # a tenth of the lr where the smoothed loss was lowest
    diverged_at: float | None  # the lr at which the test stopped on a diverging loss, or None
    optimizer: str
    recipe_lr: float  # the peak lr the model's recipe uses, for comparison

    def __repr__(self) -> str:
        return (f"LRCurve(suggested_lr={self.suggested_lr:.2g}, recipe_lr={self.recipe_lr:g}, "
                f"optimizer={self.optimizer!r}, steps={len(self.lrs)}, diverged_at="
                + ("None" if self.diverged_at is None else f"{self.diverged_at:.2g}") + ")")

    def plot(self, *, pyplot: bool | None = None):
        """The loss against the lr (log axis), the suggested lr marked, as a matplotlib Figure
        (shown as :meth:`cifarzoo.Run.plot`'s is)."""
        from cifarzoo.plots import lr_curve_figure, user_figure

        return lr_curve_figure(self.lrs, self.losses, self.suggested_lr, title=f"lr range test ({self.optimizer})",
                               fig=user_figure((6, 4), pyplot=pyplot))


def lr_range_test(model, ds: Dataset, config, *, steps: int = 60, lo: float = 1e-5, hi: float = 10.0,
                  batch_size: int = 64, seed: int = 0) -> Check:
    """:func:`lr_range_curve` as a doctor's check: where the loss was lowest, where it diverged."""
    curve = lr_range_curve(model, ds, config, steps=steps, lo=lo, hi=hi, batch_size=batch_size, seed=seed)
    best = curve.lrs[int(np.argmin(curve.losses))]
    finding = (f"with {config.optimizer}, the loss was lowest at lr {best:.2g}"
               + (f" and diverged at lr {curve.diverged_at:.2g}" if curve.diverged_at else "")
               + f"; a peak lr near {curve.suggested_lr:.2g} is a safe start (the recipe uses {config.lr:g}).")
    return Check("learning-rate range test", True, finding,
                 {"lrs": curve.lrs, "losses": curve.losses, "suggested_lr": curve.suggested_lr,
                  "diverged_at": curve.diverged_at})


def lr_range_curve(model, ds: Dataset, config, *, steps: int = 60, lo: float = 1e-5, hi: float = 10.0,
                   batch_size: int = 64, seed: int = 0) -> LRCurve:
    """Raise the lr exponentially from ``lo`` to ``hi`` over ``steps`` batches; stop where the loss diverges.

    Each batch goes through the trainer's own step (its optimizer and parameter groups,
    its loss), with the lr ramp as its schedule; no EMA or lookahead, fp32 on the CPU.
    """
    from cifarzoo.data.loader import DeviceLoader, input_normalization
    from cifarzoo.train import make_step

    _, mean, std = input_normalization(ds, config.normalize)  # the training images' transform
    loader = DeviceLoader(ds.train_images, ds.train_labels, batch_size=batch_size, mean=mean, std=std,
                          train=True, augment="none", seed=seed)
    loader.set_epoch(0)

    def lr_at(i: int) -> float:
        return lo * (hi / lo) ** (min(i, steps - 1) / max(1, steps - 1))

    # The schedule multiplies the peak lr of each parameter group: lr_at(i) / config.lr.
    step = make_step(model, config.replace(ema=False, lookahead=False), torch.device("cpu"), total_steps=steps,
                     steps_per_epoch=max(1, len(loader)), lr_lambda=lambda i: lr_at(i) / config.lr)
    step.train()
    lrs, losses, smooth = [], [], None
    it = iter(loader)
    for i in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            loader.set_epoch(i)
            it = iter(loader)
            x, y = next(it)
        loss, _ = step(x, y)
        v = loss.item()
        smooth = v if smooth is None else 0.7 * smooth + 0.3 * v
        lrs.append(lr_at(i))
        losses.append(smooth)
        if not math.isfinite(v) or smooth > 4 * min(losses):
            break
    suggested = lrs[int(np.argmin(losses))] / 10
    diverged = lrs[-1] if len(lrs) < steps else None
    return LRCurve(lrs, losses, suggested, diverged, config.optimizer, config.lr)


def run_doctor(model_name: str, ds: Dataset, *, width_mult: float = 1.0, seed: int = 0,
               overfit_steps: int = 300, lr_steps: int = 60, normalize: str | None = None) -> DoctorReport:
    """Every check for ``model_name`` under its recipe; ``normalize`` (TrainConfig.normalize) replaces the
    recipe's (the original study's networks as written keep its "study" mismatch)."""
    from cifarzoo import models
    from cifarzoo.data.loader import input_normalization
    from cifarzoo.data.loader import normalize as normalize_images
    from cifarzoo.train.config import make_config

    if not (isinstance(overfit_steps, int) and not isinstance(overfit_steps, bool) and 1 <= overfit_steps <= 100_000):
        raise CifarzooError(f"--overfit-steps must be an integer in [1, 100000], got {overfit_steps!r}")
    name = models.resolve(model_name)
    config = make_config(name, width_mult=width_mult, seed=seed, normalize=normalize)
    checks = [check_normalization(ds, config.normalize), check_balance(ds)]

    torch.manual_seed(seed)
    model = models.from_config(config, ds.num_classes)
    idx = np.arange(min(64, len(ds.train_labels)))
    _, train_mean, train_std = input_normalization(ds, config.normalize)
    x = normalize_images(torch.from_numpy(ds.train_images[idx]), train_mean, train_std)
    y = torch.from_numpy(ds.train_labels[idx]).long()
    checks.append(check_initial_outputs(model, x, y, ds.num_classes))
    checks += check_structure(model, x, ds.num_classes)
    checks.append(check_overfit_batch(model, x, y, steps=overfit_steps))

    torch.manual_seed(seed)
    fresh = models.from_config(config, ds.num_classes)
    lr_check = lr_range_test(fresh, ds, config, steps=lr_steps, seed=seed)
    checks.append(lr_check)
    return DoctorReport(name, checks, lr_check.details.get("suggested_lr"))
