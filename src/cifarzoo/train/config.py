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
WARMUP_MODES = ("auto", "on", "off")
# How images become network inputs. mean-std: every split minus the training images' per-channel
# mean, over their std (the one right way); unit: every split /255; study: the original study's
# mismatch, training images /225 and test images /255 (kept to replay it, never a default).
NORMALIZATIONS = ("mean-std", "unit", "study")
MAX_THREADS = 4096  # above any machine's CPU count; resolve_threads checks the CPUs present
MAX_SEEDS = 100  # a study's seeds 0..N-1: 100 already means 100 runs of every model
WARMUP_STEPS = 3  # untimed warm-up steps: compile's forward and backward graphs, cuDNN's search, lazy kernels


@dataclass(frozen=True)
class TrainConfig:
    model: str = "resnet18"  # registered model name (see `cifarzoo models`)
    width_mult: float = 1.0  # channel multiplier; 1.0 is the paper's width
    model_kwargs: dict = field(default_factory=dict)  # extra builder kwargs, e.g. {"aux_logits": True}
    data: str | None = None  # --data spec: None (default cache), "sample", or a path
    labels: str = "fine"  # CIFAR-100's labelling: fine (100 classes) | coarse (20 superclasses); others: fine
    subset: int | None = None  # use only the first N training images, class-balanced
    val_split: int | float = 0  # hold N training images (or a fraction in (0, 1) of them) out as the per-epoch evaluation set (0: evaluate on test)
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
    normalize: str = "mean-std"  # mean-std | unit (/255) | study (train /225, test /255: the study's bug, to replay it)
    augment: str = "crop,flip"  # comma list of crop, flip (random) or altflip (alternating), cutout; or "none"
    cutout_size: int = 12  # side in pixels of the cutout square
    crop_pad: int = 4  # pixels of reflect padding for the random crop: shifts of at most this many pixels (airbench: 2)
    aux_weight: float = 0.3  # weight of auxiliary-classifier losses (Inception), as in the paper
    precision: str = "auto"  # auto (bf16 on capable GPUs and where the CPU's native bf16 is faster, see device.py) | fp32 | bf16 | fp16
    channels_last: bool = True  # NHWC memory format: faster convolutions on tensor-core GPUs and with oneDNN on CPU
    compile: str = "auto"  # torch.compile: auto (on for long GPU runs) | on | off
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch's CPU threads (None: $OMP_NUM_THREADS if set, else the physical cores)
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
    eval_every: int = 1  # evaluate after every K-th epoch and always after the last (0: the last only)
    checkpoint_every: int = 1  # checkpoint every K epochs (0: never mid-run); always at the end and on Ctrl-C
    warmup: str = "auto"  # untimed warm-up steps, then state restored: auto (when compiled or on CUDA) | on | off
    tta_level: int = 1  # test-time augmentation of the "TTA" result: 1 flip (2 views), 2 flip + 1-pixel shifts (6 views)

    def __post_init__(self):
        for name in _CHOICE_FIELDS:  # option values are case-insensitive, as model names are
            value = getattr(self, name)
            if isinstance(value, str) and value != value.lower():
                object.__setattr__(self, name, value.lower())
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> "TrainConfig":
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config a dict (config.json, a checkpoint) describes; one line naming the first bad setting."""
        if not isinstance(d, dict):
            raise CifarzooError(f"training settings must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known, key=str)  # keys of a hand-edited file need not be strings
        if unknown:
            raise CifarzooError("unknown training settings: "
                                + "; ".join(unknown_setting_hint(k, known) for k in unknown))
        _check_types(d)
        return cls(**d)

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations ``augment`` names, in the loader's order (parsed by the loader's own parser)."""
        from cifarzoo.data.loader import AUGMENTATIONS, parse_augment

        names = parse_augment(self.augment)
        return tuple(a for a in AUGMENTATIONS if a in names)


# Fields whose value is one word from a fixed set (lower-cased before validation).
_CHOICE_FIELDS = ("optimizer", "schedule", "precision", "compile", "device", "labels", "augment", "warmup",
                  "normalize")

# Names users bring from Keras, Lightning, fastai and timm, and what cifarzoo calls them.
SYNONYMS = {
    "validation_split": "val_split", "valid_pct": "val_split", "learning_rate": "lr", "base_lr": "lr",
    "num_epochs": "epochs", "n_epochs": "epochs", "max_epochs": "epochs", "epoch": "epochs",
    "batch": "batch_size", "bs": "batch_size", "wd": "weight_decay", "l2": "weight_decay",
    "smoothing": "label_smoothing", "width": "width_mult", "width_multiplier": "width_mult",
    "random_seed": "seed", "num_threads": "threads", "opt": "optimizer", "lr_schedule": "schedule",
    "scheduler": "schedule", "sched": "schedule", "augmentation": "augment", "mixed_precision": "precision",
    "amp": "precision",
}
# Names that are not training settings at all, with where the thing lives instead.
NOT_SETTINGS = {
    "validation_data": "the per-epoch evaluation set is the test split, or val_split held out of the "
                       "training images; pass your own split as data=(x_train, y_train, x_test, y_test)",
    "x": "arrays go in data=(x_train, y_train, x_test, y_test)",
    "y": "arrays go in data=(x_train, y_train, x_test, y_test)",
    "verbose": "progress is an argument of cifarzoo.fit: progress='auto' | 'bar' | 'none'",
    "num_classes": "the class count comes from the data",
}


def unknown_setting_hint(name: str, known: set[str]) -> str:
    """``name`` with what the user probably meant: a synonym, a close spelling, or where it lives."""
    import difflib

    key = name.lower() if isinstance(name, str) else str(name)
    if key in NOT_SETTINGS:
        return f"{name} ({NOT_SETTINGS[key]})"
    if SYNONYMS.get(key) in known:
        return f"{name} (cifarzoo calls it {SYNONYMS[key]})"
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"{name} (did you mean {close[0]}?)" if close else f"{name} (see `cifarzoo train --help`)"


def _check_types(d: dict[str, Any]) -> None:
    """Each value of ``d`` of its field's annotated type (an int passes for a float, never a bool for a number),
    so that a hand-edited setting is named here rather than failing deep inside training."""
    import typing

    hints = typing.get_type_hints(TrainConfig)
    for name, value in d.items():
        kinds = typing.get_args(hints[name]) or (hints[name],)  # int | None -> (int, NoneType)
        allowed = tuple(k for k in kinds if isinstance(k, type)) + ((int,) if float in kinds else ())
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("none" if k is type(None) else k.__name__ for k in kinds)
            raise CifarzooError(f"invalid --{name.replace('_', '-')} {value!r}: expected {names}")


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
    from cifarzoo.data.sources import LABELS

    if c.labels not in LABELS:
        bad("--labels", c.labels, " | ".join(LABELS))
    try:
        c.augmentations
    except DataError:
        from cifarzoo.data.loader import AUGMENTATIONS

        bad("--augment", c.augment, f"a comma list of {', '.join(AUGMENTATIONS)}, or none")
    _validate_numbers(c, bad)
    v = c.val_split
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
            (isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0 < v < 1)):
        bad("--val-split", v, "an image count >= 0, or a fraction in (0, 1) of the training images")
    if "flip" in c.augmentations and "altflip" in c.augmentations:
        bad("--augment", c.augment, "flip or altflip, not both")
    if c.optimizer != "muon" and (c.bn_bias_decay or c.whiten_bias_epochs is not None):
        bad("--optimizer", c.optimizer, "muon for bn_bias_decay and whiten_bias_epochs (its optimizer applies them)")
    if c.normalize not in NORMALIZATIONS:
        bad("--normalize", c.normalize, " | ".join(NORMALIZATIONS))
    if c.warmup not in WARMUP_MODES:
        bad("--warmup", c.warmup, " | ".join(WARMUP_MODES))
    if not (isinstance(c.model_kwargs, dict) and all(isinstance(k, str) for k in c.model_kwargs)):
        bad("model_kwargs", c.model_kwargs, "a dict of the model builder's options by name")
    reserved = sorted({"num_classes", "width_mult"} & set(c.model_kwargs))
    if reserved:  # the builder's own named parameters, which a run sets from its data and --width-mult
        bad("model_kwargs", c.model_kwargs, f"no {' or '.join(reserved)} (num_classes comes from the data's "
                                            "classes, width_mult is a setting of its own)")
    if c.tta_level not in (0, 1, 2):
        bad("--tta-level", c.tta_level, "0 (none), 1 (flip) or 2 (flip and 1-pixel translations)")



# name: (integer?, lowest, highest, lowest allowed?, highest allowed?, None allowed?) of every
# number TrainConfig holds; floats must also be finite. Every one has an upper bound, far above
# any recipe yet below what overflows or exhausts memory: counts of images at most the 60,000
# a CIFAR dataset has; 10,000 epochs (recipes use <= 60); width 2 (4x the paper's weights; the
# checkpoint bound assumes it); lr <= 10 and muon_lr <= 10 (recipes peak at 1.5; 1e308 overflows
# to inf in the first step); decays <= 1 (per-step shrink lr x decay: 1 already zeroes a weight
# at lr 1; recipes use <= 1.33e-3); bias_lr_scale <= 1,000 (airbench: 64).
_MAX_IMAGES = 60_000
_NUMBERS: dict[str, tuple] = {
    "width_mult": (False, 0, 2, False, True, False),
    "subset": (True, 1, _MAX_IMAGES, True, True, True),
    "val_split": (False, 0, _MAX_IMAGES, True, True, False),  # a count, or a fraction (checked in validate)
    "epochs": (True, 1, 10_000, True, True, False),
    "batch_size": (True, 1, _MAX_IMAGES, True, True, True),
    "eval_batch_size": (True, 1, _MAX_IMAGES, True, True, False),
    "lr": (False, 0, 10, False, True, False),
    "momentum": (False, 0, 1, True, False, False),
    "weight_decay": (False, 0, 1, True, True, False),
    "warmup_epochs": (False, 0, 10_000, True, True, False),
    "label_smoothing": (False, 0, 1, True, False, False),
    "cutout_size": (True, 1, 32, True, True, False),
    "crop_pad": (True, 0, 15, True, True, False),
    "aux_weight": (False, 0, 10, True, True, False),
    "seed": (True, 0, 2**64 - 1, True, True, False),  # torch's seeds are 64-bit
    "stall_steps": (True, 1, 10**7, True, True, True),
    "nan_check_every": (True, 1, 10**7, True, True, False),
    "bias_lr_scale": (False, 0, 1_000, False, True, False),
    "muon_lr": (False, 0, 10, False, True, False),
    "muon_momentum": (False, 0, 1, True, False, False),
    "bn_bias_decay": (False, 0, 1, True, True, False),
    "whiten_bias_epochs": (True, 0, 10_000, True, True, True),
    "eval_every": (True, 0, 10_000, True, True, False),  # 0: the last epoch only
    "checkpoint_every": (True, 0, 10_000, True, True, False),  # 0: only at the end and on Ctrl-C
    "threads": (True, 1, MAX_THREADS, True, True, True),  # and at most the CPUs present, when used
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
# base of the `standard` preset. SGD + Nesterov, one-cycle (linear warm-up from lr/10 over
# ~20% of the run, then linear decay to 0: the shape that reaches the best accuracy in a
# fixed, short budget, Smith & Topin 2017; Page's 24-epoch DAWNBench ResNet warmed up for
# 5 epochs, 21%), label smoothing 0.1 (Szegedy et al. 2016),
# crop+flip, batch 512 (auto_batch_size on the full training set: 97 steps per epoch), bf16
# on GPU. The starting point, a simple recipe measured at VGG16 89.1%, ResNet18 90.7%,
# ResNet50 88.8% on a JPEG copy of CIFAR-10, keeps its peak lr per model (0.1 VGG,
# Inception, Xception; 0.2 ResNets) and weight decay 5e-4.
#
# Epochs fit each model's time target on one H100: epochs x 50,000 / throughput <= 90% of
# the target, with the reference eager bf16 training throughputs (img/s; compile is
# expected to be faster, so these are upper bounds on the time). Unmeasured with this code
# (benchmarks/RESULTS.md lists them as such); tune on --val-split only, never on test.
#   vgg16     77.6k img/s: 0.644 s/epoch; 90% of 45 s  = 40.5 s -> at most 62.8 epochs: 60 (38.7 s)
#   vgg19     55.6k img/s: 0.899 s/epoch; 90% of 60 s  = 54.0 s -> at most 60.0 epochs: 58 (52.2 s)
#   resnet18  48.6k img/s: 1.029 s/epoch; 90% of 50 s  = 45.0 s -> at most 43.7 epochs: 42 (43.2 s)
#   resnet50  13.2k img/s: 3.788 s/epoch; 90% of 120 s = 108 s  -> at most 28.5 epochs: 28 (106.1 s)
#   inception  6.7k img/s: 7.463 s/epoch; 90% of 150 s = 135 s  -> at most 18.1 epochs: 17 (126.9 s)
#   xception  an ESTIMATE, 13.2k x 1.30/1.36 GMACs (ResNet50's/Xception's) = 12.6k img/s:
#             3.963 s/epoch; 90% of 120 s = 108 s -> at most 27.3 epochs: 24 (95.1 s), the
#             margin because depthwise convolutions run below ResNet50's img/s per MAC.
# Lookahead (airbench's, from hlb-CIFAR10; see optim.Lookahead) for every model: the run
# ends on an average of its last few tens of weights, which one-cycle's decay to 0 makes
# a small, safe gain, at the cost of a few fused ops every 5 steps and no evaluation copy
# (an EMA with decay 0.999 would average over ~10 epochs of a 17-60 epoch run, weights
# from a much higher lr). VGG's head: no dropout. The paper's 0.5 regularized 4096-wide
# ImageNet layers over 74 epochs; here the head is 512 wide behind batch norm, and with
# crop+flip, label smoothing and weight decay a 60-epoch run underfits rather than
# overfits (CIFAR VGG references with BN use no dropout in the head).
#
# EXPECTED test accuracy of each `standard` recipe on the JPEG copy (NOT measured: read from the
# literature against the epochs each recipe affords; one line beside each recipe, "expect").
# Until a GPU tunes them (on --val-split only, never the test set), the gap to each target is
# where tuning starts; a CPU proxy (the recipe at small width on a subset) may order choices.

# The original study's settings (Adam 1e-3, batch 32, no augmentation, 50 epochs, nothing else): the
# seed preset's, and the recipe of its networks as written (models/as_written.py), which also keep
# its normalization mismatch and Keras' fp32.
STUDY_SETTINGS: dict[str, Any] = dict(
    optimizer="adam", lr=1e-3, batch_size=32, augment="none", epochs=50, schedule="constant", warmup_epochs=0.0,
    label_smoothing=0.0, weight_decay=0.0, momentum=0.9, ema=False, whiten_init=False, lookahead=False,
    bias_lr_scale=1.0)
AS_WRITTEN_RECIPE: dict[str, Any] = dict(STUDY_SETTINGS, normalize="study", precision="fp32")

RECIPES: dict[str, dict[str, Any]] = {
    # expect 89.6-90.4% (target 91.0)
    "vgg16": dict(epochs=60, warmup_epochs=12, lr=0.1, lookahead=True, model_kwargs={"dropout": 0.0}),
    # expect ~0.2 below vgg16: 89.4-90.2% (target 91.0)
    "vgg19": dict(epochs=58, warmup_epochs=12, lr=0.1, lookahead=True, model_kwargs={"dropout": 0.0}),
    # expect 91.0-91.7% (target 92.0)
    "resnet18": dict(epochs=42, warmup_epochs=8, lr=0.2, lookahead=True),
    # expect 90-91% (target 92.0)
    "resnet50": dict(epochs=28, warmup_epochs=6, lr=0.2, lookahead=True, model_kwargs={"zero_init_residual": True}),
    # expect 89-90% (target 92.0)
    "inception": dict(epochs=17, warmup_epochs=3.5, lr=0.1, lookahead=True, model_kwargs={"aux_logits": True}),
    # expect 87.5-89% (target 91.5)
    "xception": dict(epochs=24, warmup_epochs=5, lr=0.1, lookahead=True),
    # airbench94's hyperparameters in this trainer's units (mean loss, lr per batch): its
    # lr 11.5 and wd 0.0153 "per 1024 examples" with momentum 0.85 are lr 1.5 and L2 1.33e-3
    # here; BN shifts at 64x lr; warm-up over 23% of the run; lookahead; whitened frozen stem.
    # expect 2.5-4 s of training per run on one GPU (480 eager steps; the `airbench` preset is
    # the one to compare with airbench94's 2.1 s)
    "fastnet": dict(epochs=10, lr=1.5, batch_size=1024, momentum=0.85, weight_decay=1.33e-3,
                    label_smoothing=0.2, bias_lr_scale=64.0, lookahead=True, whiten_init=True,
                    warmup_epochs=2.3),
    **{name: AS_WRITTEN_RECIPE for name in ("as_written_vgg16", "as_written_vgg19", "as_written_resnet",
                                            "as_written_xception")},
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

# On a GPU an epoch takes about a second, so evaluating and checkpointing every epoch
# would cost a study more wall time than a good part of its training: the GPU presets
# evaluate every 10th epoch and the last (2-6 evaluations per run, the learning curves'
# points), and checkpoint only at the end and on Ctrl-C (a crash reruns the run). The CPU
# presets checkpoint every epoch, where an epoch takes minutes; quick evaluates every epoch, cpu's
# study models about four times per run (_cpu_budget).
GPU_CADENCE: dict[str, Any] = dict(eval_every=10, checkpoint_every=0)

# The cpu preset's equal budget: every study model trains for CPU_CORE_MINUTES of one core at its
# own width and batch, i.e. for the epochs that its training throughput (fit's img/s, data loading
# and augmentation included; one thread, bf16 + channels_last) measured on one core of the
# reference CPU (CPU_REFERENCE) fills: epochs = floor(minutes x 60 x img/s / 50,000 images).
# 20 minutes, not 24 (a fifth of two cores' hour): five equal runs on two cores are two rounds of
# two, then one run alone, which trains on both cores (study/schedule.py) but narrow models gain
# little from a second thread (the study lasts 2 x 20 + 20 / speed-up + evaluation <= 60 min).
CPU_CORE_MINUTES = 20
CPU_REFERENCE = "one core of an AMD EPYC (Zen 4, AVX512-BF16)"
# model: (width, batch, peak lr, training img/s on one reference core: fit's own "trained at" figure
# of a 2-epoch run on 45,000 images with the other core busy, so a quiet core fills a little more).
# Batch 128, not the recipes' 512: 4x the steps per epoch at a higher img/s (resnet50: 62.0% vs
# 43.6% on the validation split after 2 epochs, 484 vs 396 img/s); batch 64 no better per second
# (63.3% at 438 img/s). The VGGs at lr 0.05 (the quick preset's for batch 128), the others at
# their recipes' lr. See benchmarks/RESULTS.md, "Tuning the cpu preset".
# -> epochs: vgg16 28, vgg19 23, resnet50 11, inception 5, xception 10.
CPU_BUDGET: dict[str, tuple[float, int, float, float]] = {
    "vgg16": (0.25, 128, 0.05, 1185.0),
    "vgg19": (0.25, 128, 0.05, 973.0),
    "resnet50": (0.125, 128, 0.2, 484.0),
    "inception": (0.125, 128, 0.1, 228.0),
    "xception": (0.125, 128, 0.1, 438.0),
}
CPU_TRAIN_IMAGES = 50_000


def budget_epochs(img_s: float, minutes: float = CPU_CORE_MINUTES, images: int = CPU_TRAIN_IMAGES) -> int:
    """Whole epochs of ``images`` that ``minutes`` of training at ``img_s`` images per second fill (at least 1)."""
    return max(1, int(minutes * 60 * img_s // images))


def _cpu_budget(model: str) -> dict[str, Any]:
    """The cpu preset's settings of a study model under the equal budget; warm-up 20% of the run.

    Evaluated about four times per run (every ceil(epochs / 4)-th epoch and the last), not every
    epoch: one pass over the 10,000 test images took inception ~12 s and vgg16 ~3 s of one core
    (the run's wall time less its training time, 2-epoch runs), i.e. a minute or more per run at
    every epoch, time the budget does not count.
    """
    width, batch, lr, img_s = CPU_BUDGET[model]
    epochs = budget_epochs(img_s)
    return dict(width_mult=width, batch_size=batch, lr=lr, epochs=epochs, warmup_epochs=round(0.2 * epochs, 1),
                eval_every=-(-epochs // 4))


# Study presets. "all" applies to every model; a model's own entry wins over "all".
PRESETS: dict[str, dict[str, Any]] = {
    # 2-core CPU or laptop: narrow models on the bundled 5k/1k sample, a few epochs.
    "quick": {
        "description": "narrow widths, bundled 5,000/1,000-image sample, 9-26 epochs at batch 32-128, one run per CPU core",
        "data": "sample",
        # On a CPU a study's runs train side by side, one per physical core with one thread each
        # (study/executors.py, LocalExecutor): at these widths a second thread adds little.
        "one_run_per_core": True,
        # channels_last: oneDNN's NHWC convolutions halve CPU training time here (measured:
        # inception 11.1 -> 5.0 ms/image, resnet50 5.4 -> 3.1, one thread). precision auto: bf16
        # where the CPU multiplies bf16 natively (device.py; one thread at these widths: 1.3-2.4x
        # fp32 + channels_last on AVX512-BF16). eval_batch_size 128: on CPU a 1,024-image batch
        # evaluates 2.4x slower (resnet50). compile off: no faster on CPU and minutes to compile
        # (benchmarks/RESULTS.md).
        # Tuned on --val-split 1000 (4,000 training images, one thread per run, bf16; the test set
        # not looked at; benchmarks/RESULTS.md). Crop + flip: with 10-30 epochs the models overfit
        # flips alone (resnet50 12 epochs 57.6% vs 55.9%, xception 59.2% vs 53.2%). Batch 32 (lr
        # 0.05, resnet50 0.1) for resnet50, inception and xception: 4x the steps of batch 128 in
        # the same time, worth 7 points on resnet50 at 3 epochs. The VGGs at batch 128, lr 0.05,
        # without dropout in the head as in their recipes (vgg19 with dropout 0.5: 55.9% flips
        # only, stalls with crops; without: 64.3% at epoch 26 of 30). Epochs share the 10-minute
        # budget of two one-thread runs side by side (one_run_per_core) by each model's cost.
        # lookahead off: as tuned, whatever the GPU recipes (RECIPES) say.
        # The whole study rehearsed on the validation split (vgg16/vgg19 30, resnet50 14, inception
        # 10, xception 13 epochs): 65.8, 65.0, 61.4, 60.1, 62.3% in 497 s wall, i.e. ~10 minutes on
        # 5,000 images: the epochs below are ~15% fewer, for the 10-minute budget.
        "all": dict(width_mult=0.125, epochs=12, batch_size=32, lr=0.05, warmup_epochs=1.0,
                    precision="auto", compile="off", channels_last=True,
                    eval_batch_size=128, lookahead=False),
        "vgg16": dict(width_mult=0.25, epochs=26, batch_size=128),
        "vgg19": dict(width_mult=0.25, epochs=26, batch_size=128),
        "resnet50": dict(lr=0.1), "inception": dict(epochs=9), "xception": dict(epochs=11),
        # fastnet keeps its recipe at half width, batch and lr scaled to 128 (390 steps on the
        # sample), flips only: 66.5% (68.7% flip TTA) in 108 s of one CPU thread, past
        # 50% at 33 s (resnet18 here: 48.1% in 26 s); 67.4% in 110 s with --precision bf16 on
        # AVX512-BF16 under load where fp32 took 161 s (benchmarks/RESULTS.md).
        "fastnet": dict(width_mult=0.5, epochs=10, batch_size=128, lr=0.1875, warmup_epochs=2.3, lookahead=True,
                        augment="flip"),
    },
    # Full CIFAR-10 on a laptop or desktop CPU: minutes per model. fastnet runs airbench94_muon's
    # recipe (FASTNET_MUON) at full width: 8 epochs = 400,000 training images; at the 1,086 img/s
    # measured for fastnet in bf16 on 2 AMX-BF16 cores about 6 minutes; measured on 2 Zen 4 cores
    # (AVX512-BF16, no AMX): 377 img/s, 1,061 s, 90.51% flip TTA (benchmarks/RESULTS.md). The study
    # models train side by side (one_run_per_core) under one equal budget: CPU_CORE_MINUTES of one
    # reference core each, at the width, batch and lr of CPU_BUDGET (the epochs from each model's
    # measured img/s), with ~20% warm-up. Validation-split accuracy at these settings and the
    # estimate for the whole study: benchmarks/RESULTS.md.
    # precision auto: bf16 where the CPU multiplies bf16 natively (device.py).
    "cpu": {
        "description": "full CIFAR-10 on a CPU in minutes: fastnet with airbench94_muon's recipe (~6 min on 2 "
                       "AMX cores, 18 on 2 Zen 4 cores), the study models side by side, each for the same "
                       f"{CPU_CORE_MINUTES} core-minutes at batch 128 (epochs from its measured img/s)",
        "data": None,
        "one_run_per_core": True,
        "all": dict(precision="auto", channels_last=True, compile="off", eval_batch_size=256),
        "budget": dict(core_minutes=CPU_CORE_MINUTES, reference=CPU_REFERENCE, models=tuple(CPU_BUDGET)),
        **{m: _cpu_budget(m) for m in CPU_BUDGET},
        "resnet18": dict(width_mult=0.25, epochs=8, warmup_epochs=1.6),
        "fastnet": FASTNET_MUON,
    },
    # One GPU: full widths, full CIFAR-10, each model's tuned recipe.
    "standard": {
        "description": "full-width models, full CIFAR-10, each model's recipe, meant for one GPU",
        "data": None,
        "all": dict(precision="auto", channels_last=True, compile="auto", **GPU_CADENCE),
    },
    # fastnet with airbench94_muon's recipe (FASTNET_MUON); every other model as in standard.
    "airbench": {
        "description": "standard, but fastnet with airbench94_muon's recipe: Muon, alternating flip, 2-pixel "
                       "shifts, 6-view TTA",
        "data": None,
        "all": dict(precision="auto", channels_last=True, compile="auto", **GPU_CADENCE),
        "fastnet": FASTNET_MUON,
    },
    # Longer schedules for the best accuracy.
    "full": {
        "description": "full-width models, full CIFAR-10, schedules twice as long as standard",
        "data": None,
        "all": dict(precision="auto", channels_last=True, compile="auto", **GPU_CADENCE),
        "epoch_factor": 2.0,
    },
    # The original study's own settings, on correctly built networks.
    "seed": {
        "description": "the original study's settings: Adam lr 1e-3, batch 32, no augmentation, 50 epochs",
        "data": None,
        "all": dict(STUDY_SETTINGS, model_kwargs={}, **GPU_CADENCE),
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
