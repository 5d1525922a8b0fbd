"""Training configuration, per-model recipes and study presets — all as data, in one place.

``TrainConfig`` is frozen: a run is described by one value that is saved into
``config.json``, every checkpoint and every report. Recipes and presets are
dictionaries of overrides applied in this order (later wins)::

    TrainConfig defaults  <  RECIPES[model]  <  PRESETS[preset]["all"]  <  PRESETS[preset][model]  <  user flags
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cifarzoo.errors import CifarzooError, DataError

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "resnet18"  # registered model name (see `cifarzoo models`)
    width_mult: float = 1.0  # channel multiplier; 1.0 is the paper's width
    model_kwargs: dict = field(default_factory=dict)  # extra builder kwargs, e.g. {"aux_logits": True}
    data: str | None = None  # --data spec: None (default cache), "sample", or a path
    subset: int | None = None  # use only the first N training images, class-balanced
    val_split: int = 0  # hold N training images out as the per-epoch evaluation set (0: evaluate on test)
    epochs: int = 30  # full passes over the training set
    batch_size: int | None = None  # images per optimizer step, the global batch under DDP (None: 512, smaller for small data)
    eval_batch_size: int = 1024  # images per evaluation forward pass
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adam | adamw | muon (Muon on conv filters, SGD on the rest)
    lr: float = 0.2  # peak learning rate for this batch size (reached after warm-up)
    momentum: float = 0.9  # SGD momentum / Adam beta1
    weight_decay: float = 5e-4  # L2 on conv/linear weights only; never on BN or bias parameters
    schedule: str = "onecycle"  # onecycle | cosine | step | constant (each after linear warm-up)
    warmup_epochs: float = 1.0  # linear warm-up from lr/10 (onecycle: 25% of the run, see loop)
    label_smoothing: float = 0.1  # cross-entropy label smoothing, 0..1
    augment: str = "crop,flip"  # comma list of crop, flip (random) or altflip (alternating), cutout; or "none"
    cutout_size: int = 12  # side in pixels of the cutout square
    crop_pad: int = 4  # pixels of reflect padding for the random crop: shifts of at most this many pixels (airbench: 2)
    aux_weight: float = 0.3  # weight of auxiliary-classifier losses (Inception), as in the paper
    precision: str = "auto"  # auto (bf16 autocast on capable GPUs, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool = True  # NHWC memory format: faster convolutions on tensor-core GPUs and with oneDNN on CPU
    compile: str = "auto"  # torch.compile: auto (on for long GPU runs) | on | off
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # seeds weights, shuffling, augmentation and dropout
    allow_stall: bool = False  # do not stop a run whose loss stays at ln(C) with chance accuracy
    stall_steps: int | None = None  # check for a stall after this many steps (None: end of the first epoch, >= 30 steps)
    nan_check_every: int = 20  # steps between (cheap, batched) host checks for a non-finite loss on GPU
    ema: bool = False  # keep an exponential moving average of weights for evaluation (fastnet recipe)
    whiten_init: bool = False  # initialize a model's `whiten` conv from data patches (fastnet)
    lookahead: bool = False  # every 5 steps pull weights to their short EMA; end on it (airbench; fastnet)
    bias_lr_scale: float = 1.0  # lr multiplier for BatchNorm parameters (airbench's 64 for fastnet)
    sync_bn: bool = False  # under DDP, convert BatchNorm to SyncBatchNorm (statistics over the global batch)
    muon_lr: float = 0.24  # optimizer "muon": size of the orthogonalized step of conv filters kept at norm sqrt(out_channels) (per step)
    muon_momentum: float = 0.6  # optimizer "muon": Nesterov momentum of the conv filters' Muon (the rest use `momentum`)
    bn_bias_decay: float = 0.0  # L2 on BN shifts and the whitening bias, like weight_decay (per-step shrink lr·bias_lr_scale·this)
    whiten_bias_epochs: int | None = None  # epochs the `whiten` conv's bias trains before it is frozen (None: all; airbench: 3)
    tta_level: int = 1  # test-time augmentation of the "TTA" result: 1 flip (2 views), 2 flip + 1-pixel shifts (6 views)

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> "TrainConfig":
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CifarzooError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations ``augment`` names, in the loader's order (parsed by the loader's own parser)."""
        from cifarzoo.data.loader import AUGMENTATIONS, parse_augment

        names = parse_augment(self.augment)
        return tuple(a for a in AUGMENTATIONS if a in names)


def validate(c: TrainConfig) -> None:
    def bad(field_name, value, expected):
        raise CifarzooError(f"invalid {field_name} {value!r}: expected {expected}")

    if c.optimizer not in OPTIMIZERS:
        bad("--optimizer", c.optimizer, " | ".join(OPTIMIZERS))
    if c.schedule not in SCHEDULES:
        bad("--schedule", c.schedule, " | ".join(SCHEDULES))
    if c.precision not in PRECISIONS:
        bad("--precision", c.precision, " | ".join(PRECISIONS))
    if c.compile not in COMPILE_MODES:
        bad("--compile", c.compile, " | ".join(COMPILE_MODES))
    if c.device not in DEVICES:
        bad("--device", c.device, " | ".join(DEVICES))
    try:
        c.augmentations
    except DataError:
        from cifarzoo.data.loader import AUGMENTATIONS

        bad("--augment", c.augment, f"a comma list of {', '.join(AUGMENTATIONS)}, or none")
    _validate_numbers(c, bad)
    if "flip" in c.augmentations and "altflip" in c.augmentations:
        bad("--augment", c.augment, "flip or altflip, not both")
    if c.optimizer != "muon" and (c.bn_bias_decay or c.whiten_bias_epochs is not None):
        bad("--optimizer", c.optimizer, "muon for bn_bias_decay and whiten_bias_epochs (its optimizer applies them)")
    if c.tta_level not in (0, 1, 2):
        bad("--tta-level", c.tta_level, "0 (none), 1 (flip) or 2 (flip and 1-pixel translations)")



# name: (integer?, lowest, highest, lowest allowed?, highest allowed?, None allowed?) of every
# number TrainConfig holds; floats must also be finite.
_NUMBERS: dict[str, tuple] = {
    "width_mult": (False, 0, None, False, None, False),
    "subset": (True, 1, None, True, None, True),
    "val_split": (True, 0, None, True, None, False),
    "epochs": (True, 1, None, True, None, False),
    "batch_size": (True, 1, None, True, None, True),
    "eval_batch_size": (True, 1, None, True, None, False),
    "lr": (False, 0, None, False, None, False),
    "momentum": (False, 0, 1, True, False, False),
    "weight_decay": (False, 0, None, True, None, False),
    "warmup_epochs": (False, 0, None, True, None, False),
    "label_smoothing": (False, 0, 1, True, False, False),
    "cutout_size": (True, 1, 32, True, True, False),
    "crop_pad": (True, 0, 15, True, True, False),
    "aux_weight": (False, 0, None, True, None, False),
    "seed": (True, 0, 2**64 - 1, True, True, False),  # torch's seeds are 64-bit
    "stall_steps": (True, 1, None, True, None, True),
    "nan_check_every": (True, 1, None, True, None, False),
    "bias_lr_scale": (False, 0, None, False, None, False),
    "muon_lr": (False, 0, None, False, None, False),
    "muon_momentum": (False, 0, 1, True, False, False),
    "bn_bias_decay": (False, 0, None, True, None, False),
    "whiten_bias_epochs": (True, 0, None, True, None, True),
}


def _validate_numbers(c: TrainConfig, bad) -> None:
    """Every number in range and finite (see _NUMBERS), so that a bad value is named, not diagnosed later."""
    for name, (integer, lo, hi, lo_ok, hi_ok, optional) in _NUMBERS.items():
        value = getattr(c, name)
        if value is None and optional:
            continue
        kind = "an integer" if integer else "a number"
        lo_text = f"{'>=' if lo_ok else '>'} {lo}"
        expected = (f"{kind} {lo_text}" if hi is None else
                    f"{kind} in {'[' if lo_ok else '('}{lo}, {hi}{']' if hi_ok else ')'}")
        if optional:
            expected += ", or none"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            bad("--" + name.replace("_", "-"), value, expected)
        if not math.isfinite(value) or not (value >= lo if lo_ok else value > lo) or (
                hi is not None and not (value <= hi if hi_ok else value < hi)):
            bad("--" + name.replace("_", "-"), value, expected)

# Per-model recipes: what `cifarzoo train MODEL` uses unless told otherwise, and the
# base of the `standard` preset. SGD + Nesterov, one-cycle, label smoothing 0.1,
# crop+flip, batch 512 (auto_batch_size: smaller on small data), bf16 on GPU: a simple
# recipe measured at VGG16 89.1%, ResNet18 90.7%, ResNet50 88.8% on a JPEG copy of
# CIFAR-10. Peak lr and epochs per model follow it; see benchmarks/RESULTS.md for what
# has been measured with this code.
RECIPES: dict[str, dict[str, Any]] = {
    "vgg16": dict(epochs=40, lr=0.1),
    "vgg19": dict(epochs=40, lr=0.1),
    "resnet18": dict(epochs=40, lr=0.2),
    "resnet50": dict(epochs=30, lr=0.2, model_kwargs={"zero_init_residual": True}),
    "inception": dict(epochs=30, lr=0.1, model_kwargs={"aux_logits": True}),
    "xception": dict(epochs=30, lr=0.1),
    # airbench94's hyperparameters in this trainer's units (mean loss, lr per batch): its
    # lr 11.5 and wd 0.0153 "per 1024 examples" with momentum 0.85 are lr 1.5 and L2 1.33e-3
    # here; BN shifts at 64x lr; warm-up over 23% of the run; lookahead; whitened frozen stem.
    "fastnet": dict(epochs=10, lr=1.5, batch_size=1024, momentum=0.85, weight_decay=1.33e-3,
                    label_smoothing=0.2, bias_lr_scale=64.0, lookahead=True, whiten_init=True,
                    warmup_epochs=2.3),
}

# airbench94_muon's recipe (94.01% mean of 200 runs in its paper's setting) in this trainer's
# units, for the `airbench` preset. Muon (lr 0.24, momentum 0.6, Nesterov) on the conv
# filters; Nesterov SGD (momentum 0.85) on the head at lr 1.5 and BN shifts + whitening bias at
# 64x (96): airbench's head lr 0.67 and bias lr 0.053 are per summed loss over a batch of 2000
# with a head of unit-std weights scaled by 1/256, i.e. 1.7 and 106 for this mean loss and
# this head (default init, x1/9), within 10% of the SGD recipe's 1.5 and 96, so those are
# kept. Its decoupled decay of 0.004 per step on head and biases is L2 4e-3/1.5 = 2.67e-3 on
# the head and 4e-3/96 = 4.2e-5 on the biases. 8 epochs of 25 steps at batch 2000, linear
# decay to 0 (warm-up 0.04 epochs = 1 step: a zero warm-up would get onecycle's default 25%),
# label smoothing 0.2, 2-pixel translations, alternating flip, the whitening bias trained for
# 3 epochs, no lookahead, 6-view TTA. Needs the loop to build the "muon" optimizer (train/muon.py).
FASTNET_MUON: dict[str, Any] = dict(
    epochs=8, batch_size=2000, optimizer="muon", lr=1.5, momentum=0.85, muon_lr=0.24, muon_momentum=0.6,
    weight_decay=2.67e-3, bn_bias_decay=4.2e-5, bias_lr_scale=64.0, label_smoothing=0.2, warmup_epochs=0.04,
    augment="crop,altflip", crop_pad=2, whiten_init=True, whiten_bias_epochs=3, lookahead=False, tta_level=2,
)

# Study presets. "all" applies to every model; a model's own entry wins over "all".
PRESETS: dict[str, dict[str, Any]] = {
    # 2-core CPU or laptop: narrow models on the bundled 5k/1k sample, a few epochs.
    "quick": {
        "description": "narrow widths, bundled 5,000/1,000-image sample, a few epochs (CPU-sized)",
        "data": "sample",
        # channels_last: oneDNN's NHWC convolutions halve CPU training time here (measured:
        # inception 11.1 -> 5.0 ms/image, resnet50 5.4 -> 3.1, one thread). fp32, not auto:
        # at these widths bf16 autocast is far slower in fit() even on a CPU with AVX512-BF16
        # (per epoch of 2,560 images: resnet50 11.4 s fp32 vs 48.2 s bf16; vgg16 ~6x slower,
        # inception slower, only xception ~1.3x faster). augment flip only: 6 epochs on 5,000
        # images underfit, and random crops slow the fit further (vgg19 39.5% -> 44.1%).
        # eval_batch_size 128: on CPU a 1,024-image batch evaluates 2.4x slower (resnet50).
        # 5 epochs: the whole quick study must stay under 10 minutes on 2 CPU cores.
        # compile off: no faster on CPU and minutes to compile (benchmarks/RESULTS.md).
        "all": dict(width_mult=0.125, epochs=5, batch_size=128, lr=0.1, warmup_epochs=1.0,
                    precision="fp32", compile="off", channels_last=True, augment="flip",
                    eval_batch_size=128),
        "vgg16": dict(width_mult=0.25), "vgg19": dict(width_mult=0.25),
        # fastnet keeps its recipe at half width, batch and lr scaled to 128 (390 steps on the
        # sample), flips only as above: 66.5% (68.7% flip TTA) in 108 s of one CPU thread, past
        # 50% at 33 s (resnet18 here: 48.1% in 26 s); 67.4% in 110 s with --precision bf16 on
        # AVX512-BF16 under load where fp32 took 161 s (benchmarks/RESULTS.md).
        "fastnet": dict(width_mult=0.5, epochs=10, batch_size=128, lr=0.1875, warmup_epochs=2.3),
    },
    # One GPU: full widths, full CIFAR-10, each model's tuned recipe.
    "standard": {
        "description": "full-width models, full CIFAR-10, each model's recipe, meant for one GPU",
        "data": None,
        "all": dict(precision="auto", channels_last=True, compile="auto"),
    },
    # fastnet with airbench94_muon's recipe (FASTNET_MUON); every other model as in standard.
    "airbench": {
        "description": "standard, but fastnet with airbench94_muon's recipe: Muon, alternating flip, 2-pixel "
                       "shifts, 6-view TTA",
        "data": None,
        "all": dict(precision="auto", channels_last=True, compile="auto"),
        "fastnet": FASTNET_MUON,
    },
    # Longer schedules for the best accuracy.
    "full": {
        "description": "full-width models, full CIFAR-10, schedules twice as long as standard",
        "data": None,
        "all": dict(precision="auto", channels_last=True, compile="auto"),
        "epoch_factor": 2.0,
    },
    # The original study's own settings, on correctly built networks.
    "seed": {
        "description": "the original study's settings: Adam lr 1e-3, batch 32, no augmentation, 50 epochs",
        "data": None,
        "all": dict(optimizer="adam", lr=1e-3, batch_size=32, augment="none", epochs=50, schedule="constant",
                    warmup_epochs=0.0, label_smoothing=0.0, weight_decay=0.0, momentum=0.9,
                    ema=False, whiten_init=False, lookahead=False, bias_lr_scale=1.0, model_kwargs={}),
    },
}

def recipe(model: str) -> dict[str, Any]:
    from cifarzoo.models import resolve

    return dict(RECIPES.get(resolve(model), {}))


def make_config(model: str, preset: str | None = None, **overrides) -> TrainConfig:
    """The TrainConfig for ``model``: defaults < recipe < preset < ``overrides`` (None values ignored)."""
    from cifarzoo.models import resolve

    name = resolve(model)
    values: dict[str, Any] = {"model": name, **recipe(name)}
    if preset is not None:
        if preset not in PRESETS:
            raise CifarzooError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        p = PRESETS[preset]
        values["data"] = p.get("data")
        values.update(p.get("all", {}))
        values.update(p.get(name, {}))
        if "epoch_factor" in p:
            values["epochs"] = max(1, int(round(values.get("epochs", TrainConfig.epochs) * p["epoch_factor"])))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
