"""Training configuration and study presets, as data.

``TrainConfig`` is frozen: a run is described by one value that is saved into
``config.json``, every checkpoint and every report. A model's recipe and its entry in
each preset live in its ``@register_model`` (models/*.py); they are dictionaries of
overrides applied in this order (later wins)::

    TrainConfig defaults  <  recipe(model)  <  PRESETS[preset]["all"]  <  preset_entry(model, preset)  <  user flags
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cifarzoo.errors import CifarzooError, DataError
from cifarzoo.recipe_kit import CPU_CORE_MINUTES, STUDY_SETTINGS, CoreBudget

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


# --help groups of `cifarzoo train`, in the order shown (timm's argument groups); each field names its own.
GROUPS = ("Model", "Dataset", "Training", "Optimizer parameters", "Learning-rate schedule", "Augmentation",
          "Evaluation", "Precision and speed", "Stall and NaN checks", "Run folder")
_MAX_IMAGES = 60_000  # a CIFAR dataset's images: the bound of every image count


class Range(NamedTuple):
    """A number's bounds (an end is excluded where its ``*_ok`` is False). Every number has one, far above any
    recipe yet below what overflows or exhausts memory (docs/recipes.md, "Bounds")."""
    lo: float
    hi: float
    lo_ok: bool = True
    hi_ok: bool = True


def setting(default: Any = dataclasses.MISSING, *, help: str, group: str, range: Range | None = None,
            choices: tuple[str, ...] | None = None, word: bool = False, default_factory: Any = dataclasses.MISSING):
    """A TrainConfig field described once: its --help text and group, and its range (a number) or its choices
    (one word). ``word``: a value matched case-insensitively (any field with choices is one). `cifarzoo train`'s
    options (cli/common.py) and validate() are made from this metadata."""
    metadata = {"help": help, "group": group, "range": range, "choices": choices, "word": word or bool(choices)}
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    model: str = setting("resnet18", group="Model", help="registered model name (see `cifarzoo models`)")
    width_mult: float = setting(1.0, group="Model", range=Range(0, 2, lo_ok=False),
                                help="channel multiplier (1.0 = the paper's width)")
    model_kwargs: dict = setting(default_factory=dict, group="Model",
                                 help='extra builder kwargs, e.g. {"aux_logits": True} (set by recipes)')
    data: str | None = setting(None, group="Dataset", help='--data spec: None (default cache), "sample", or a path')
    labels: str = setting("fine", group="Dataset", word=True,
                          help="CIFAR-100's labelling: fine (100 classes) | coarse (20 superclasses); others: fine")
    subset: int | None = setting(None, group="Dataset", range=Range(1, _MAX_IMAGES),
                                 help="use only the first N training images, class-balanced")
    val_split: int | float = setting(0, group="Dataset", range=Range(0, _MAX_IMAGES),  # a fraction: see validate
                                     help="hold N training images (or a fraction in (0, 1) of them, such as 0.1) out "
                                          "as the per-epoch evaluation set (0: evaluate on test)")
    epochs: int = setting(30, group="Training", range=Range(1, 10_000), help="full passes over the training set")
    batch_size: int | None = setting(None, group="Training", range=Range(1, _MAX_IMAGES),
                                     help="images per optimizer step, the global batch under DDP (default 512, "
                                          "smaller for small data)")
    eval_batch_size: int = setting(1024, group="Evaluation", range=Range(1, _MAX_IMAGES),
                                   help="images per evaluation forward pass")
    optimizer: str = setting("sgd", group="Optimizer parameters", choices=OPTIMIZERS,
                             help="sgd (Nesterov momentum) | adam | adamw | muon (Muon on conv filters, SGD on the "
                                  "rest)")
    lr: float = setting(0.2, group="Optimizer parameters", range=Range(0, 10, lo_ok=False),
                        help="peak learning rate for this batch size (reached after warm-up)")
    momentum: float = setting(0.9, group="Optimizer parameters", range=Range(0, 1, hi_ok=False),
                              help="SGD momentum / Adam beta1")
    weight_decay: float = setting(5e-4, group="Optimizer parameters", range=Range(0, 1),
                                  help="L2 on conv/linear weights only; never on BN or bias parameters")
    schedule: str = setting("onecycle", group="Learning-rate schedule", choices=SCHEDULES,
                            help="onecycle | cosine | step | constant (each after linear warm-up)")
    warmup_epochs: float = setting(1.0, group="Learning-rate schedule", range=Range(0, 10_000),
                                   help="epochs of linear warm-up from lr/10 (onecycle with 0: 25% of the run)")
    label_smoothing: float = setting(0.1, group="Training", range=Range(0, 1, hi_ok=False),
                                     help="cross-entropy label smoothing, in [0, 1)")
    normalize: str = setting("mean-std", group="Dataset", choices=NORMALIZATIONS,
                             help="mean-std: the training images' per-channel mean/std for every split | unit: /255 "
                                  "| study: train /225 and test /255, the original study's mismatch (to replay it)")
    augment: str = setting("crop,flip", group="Augmentation", word=True,
                           help="comma list of crop, flip (random) or altflip (alternating), cutout; or none")
    cutout_size: int = setting(12, group="Augmentation", range=Range(1, 32), help="side in pixels of the cutout square")
    crop_pad: int = setting(4, group="Augmentation", range=Range(0, 15),
                            help="pixels of reflect padding for the random crop: shifts of at most this many pixels "
                                 "(airbench: 2)")
    aux_weight: float = setting(0.3, group="Training", range=Range(0, 10),
                                help="weight of auxiliary-classifier losses (Inception), as in the paper")
    precision: str = setting("auto", group="Precision and speed", choices=PRECISIONS,
                             help="auto: bf16 on GPUs that have it and on CPUs where native bf16 was measured faster "
                                  "(AMX-BF16; AVX512-BF16 on one thread), else fp32 | fp32 | bf16 | fp16")
    channels_last: bool = setting(True, group="Precision and speed",
                                  help="NHWC memory format: faster convolutions on tensor-core GPUs and with oneDNN on "
                                       "CPU")
    compile: str = setting("auto", group="Precision and speed", choices=COMPILE_MODES,
                           help="torch.compile: auto (on for long GPU runs) | on | off")
    device: str = setting("auto", group="Precision and speed", choices=DEVICES, help="auto | cpu | cuda")
    threads: int | None = setting(None, group="Precision and speed", range=Range(1, MAX_THREADS),
                                  help="torch's CPU threads, at most the CPUs present (default: $OMP_NUM_THREADS if "
                                       "set, else the physical cores)")
    seed: int = setting(0, group="Training", range=Range(0, 2**64 - 1),  # torch's seeds are 64-bit
                        help="seeds weights, shuffling, augmentation and dropout")
    allow_stall: bool = setting(False, group="Stall and NaN checks",
                                help="do not stop a run whose loss stays at ln(C) with chance accuracy")
    stall_steps: int | None = setting(None, group="Stall and NaN checks", range=Range(1, 10**7),
                                      help="check for a stall after N steps (default: the end of the first epoch, "
                                           "at least 30 steps)")
    nan_check_every: int = setting(20, group="Stall and NaN checks", range=Range(1, 10**7),
                                   help="steps between (cheap, batched) host checks for a non-finite loss on GPU")
    ema: bool = setting(False, group="Evaluation",
                        help="evaluate an exponential moving average of the weights (fastnet recipe)")
    whiten_init: bool = setting(False, group="Model",
                                help="initialize a model's whitening stem from data patches (fastnet)")
    lookahead: bool = setting(False, group="Optimizer parameters",
                              help="every 5 steps pull the weights to their short EMA; end on it (airbench; fastnet)")
    bias_lr_scale: float = setting(1.0, group="Optimizer parameters", range=Range(0, 1_000, lo_ok=False),
                                   help="lr multiplier for BatchNorm parameters (airbench's 64 for fastnet)")
    sync_bn: bool = setting(False, group="Precision and speed",
                            help="under torchrun/DDP, SyncBatchNorm: statistics over the global batch")
    muon_lr: float = setting(0.24, group="Optimizer parameters", range=Range(0, 10, lo_ok=False),
                             help="optimizer muon: size of the orthogonalized step of conv filters kept at norm "
                                  "sqrt(out_channels) (per step)")
    muon_momentum: float = setting(0.6, group="Optimizer parameters", range=Range(0, 1, hi_ok=False),
                                   help="optimizer muon: Nesterov momentum of the conv filters' Muon (the rest use "
                                        "--momentum)")
    bn_bias_decay: float = setting(0.0, group="Optimizer parameters", range=Range(0, 1),
                                   help="optimizer muon: L2 on BN shifts and the whitening bias, like --weight-decay "
                                        "(per-step shrink lr x bias_lr_scale x this)")
    whiten_bias_epochs: int | None = setting(None, group="Optimizer parameters", range=Range(0, 10_000),
                                             help="optimizer muon: epochs the whitening conv's bias trains before it "
                                                  "is frozen (default: all; airbench: 3)")
    eval_every: int = setting(1, group="Evaluation", range=Range(0, 10_000),
                              help="evaluate after every K-th epoch and always after the last (0: the last only; "
                                   "GPU presets: 10)")
    checkpoint_every: int = setting(1, group="Run folder", range=Range(0, 10_000),
                                    help="checkpoint every K epochs (0: never mid-run); always at the end and on "
                                         "Ctrl-C")
    warmup: str = setting("auto", group="Precision and speed", choices=WARMUP_MODES,
                          help="untimed warm-up steps before the clock, state restored after: auto (when compiled "
                               "or on CUDA) | on | off")
    tta_level: int = setting(1, group="Evaluation",  # checked in validate: one of three levels
                             help="test-time augmentation of the TTA result: 0 none, 1 flip (2 views), 2 flip and "
                                  "1-pixel shifts (6 views)")
    early_stopping: int | None = setting(None, group="Evaluation", range=Range(1, 10_000),
                                         help="stop after PATIENCE evaluated epochs without a better validation "
                                              "accuracy (needs --val-split)")
    keep_best: bool = setting(False, group="Evaluation",
                              help="end on the weights of the epoch with the best validation accuracy, not the "
                                   "last (needs --val-split; the test set is never used to choose)")

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
        from cifarzoo.data.augment import AUGMENTATIONS, parse_augment

        names = parse_augment(self.augment)
        return tuple(a for a in AUGMENTATIONS if a in names)


# Fields whose value is one word (lower-cased before validation): from each field's metadata.
_CHOICE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("word"))

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

    for f in dataclasses.fields(c):  # the fields with a fixed set of choices (their metadata)
        choices = f.metadata.get("choices")
        if choices and getattr(c, f.name) not in choices:
            bad(_flag(f.name), getattr(c, f.name), " | ".join(choices))
    from cifarzoo.data.sources import LABELS

    if c.labels not in LABELS:
        bad("--labels", c.labels, " | ".join(LABELS))
    try:
        c.augmentations
    except DataError as e:  # the loader's own message: did-you-mean and the registered names
        raise CifarzooError(f"invalid --augment {c.augment!r}: {e}") from None
    _validate_numbers(c, bad)
    v = c.val_split
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
            (isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0 < v < 1)):
        bad("--val-split", v, "an image count >= 0, or a fraction in (0, 1) of the training images")
    if "flip" in c.augmentations and "altflip" in c.augmentations:
        bad("--augment", c.augment, "flip or altflip, not both")
    if c.optimizer != "muon" and (c.bn_bias_decay or c.whiten_bias_epochs is not None):
        bad("--optimizer", c.optimizer, "muon for bn_bias_decay and whiten_bias_epochs (its optimizer applies them)")
    if not (isinstance(c.model_kwargs, dict) and all(isinstance(k, str) for k in c.model_kwargs)):
        bad("model_kwargs", c.model_kwargs, "a dict of the model builder's options by name")
    reserved = sorted({"num_classes", "width_mult"} & set(c.model_kwargs))
    if reserved:  # the builder's own named parameters, which a run sets from its data and --width-mult
        bad("model_kwargs", c.model_kwargs, f"no {' or '.join(reserved)} (num_classes comes from the data's "
                                            "classes, width_mult is a setting of its own)")
    if (c.early_stopping is not None or c.keep_best) and not c.val_split:
        bad("--early-stopping" if c.early_stopping is not None else "--keep-best", c.early_stopping or c.keep_best,
            "a validation split to select on: give --val-split (the test set is never used for selection)")
    if c.tta_level not in (0, 1, 2):
        bad("--tta-level", c.tta_level, "0 (none), 1 (flip) or 2 (flip and 1-pixel translations)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Bounds(NamedTuple):
    """A number field's range (its metadata) with what its annotation says: an integer? None allowed?"""
    integer: bool
    lo: float
    hi: float
    lo_ok: bool
    hi_ok: bool
    optional: bool


def _number_bounds() -> dict[str, Bounds]:
    import typing

    hints = typing.get_type_hints(TrainConfig)
    bounds = {}
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("range") is not None:
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)  # int | None -> (int, NoneType)
            bounds[f.name] = Bounds(float not in kinds, *f.metadata["range"], type(None) in kinds)
    return bounds


_NUMBERS = _number_bounds()  # every number TrainConfig holds, by name (made from the fields' metadata)


def _validate_numbers(c: TrainConfig, bad) -> None:
    """Every number in range and finite (its field's ``range``), so that a bad value is named, not diagnosed later."""
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
            bad(_flag(name), value, expected)
        if not math.isfinite(value) or not (value >= lo if lo_ok else value > lo) or (
                hi is not None and not (value <= hi if hi_ok else value < hi)):
            bad(_flag(name), value, expected)


# A model's recipe (what `cifarzoo train MODEL` uses) and its entry in each preset are written in its
# @register_model, beside the network (models/*.py); recipe_kit holds what they are written with.
# Why each number: docs/recipes.md.

# GPU presets: an epoch takes about a second, so evaluate every 10th epoch and the last, checkpoint only at the
# end and on Ctrl-C (docs/recipes.md, "Evaluation and checkpoint cadence").
GPU_CADENCE: dict[str, Any] = dict(eval_every=10, checkpoint_every=0)


# Study presets. "all" applies to every model; a model's own entry (its @register_model's ``presets``, then
# an entry named after it here, for a preset defined outside the model's file) wins over "all".
PRESETS: dict[str, dict[str, Any]] = {
    # 2-core CPU or laptop: narrow models on the bundled 5k/1k sample, a few epochs.
    "quick": {
        "description": "narrow widths, bundled 5,000/1,000-image sample, 9-26 epochs at batch 32-128, one run per "
                       "CPU core",
        "data": "sample",
        # One run per physical core, one thread each (study/executors.py): a second thread adds little here.
        "one_run_per_core": True,
        # channels_last, precision auto, eval batch 128, compile off: the CPU's fastest (measured); batch 32 for
        # the narrow models, crop + flip, no lookahead: tuned on --val-split 1000 (docs/recipes.md, "The `quick`
        # preset"); epochs fill a 10-minute budget of two one-thread runs side by side.
        "all": dict(width_mult=0.125, epochs=12, batch_size=32, lr=0.05, warmup_epochs=1.0,
                    precision="auto", compile="off", channels_last=True,
                    eval_batch_size=128, lookahead=False),
    },
    # Full CIFAR-10 on a laptop or desktop CPU: fastnet with airbench94_muon's recipe (models/fastnet.py) at
    # full width; the study models side by side under one equal budget (each one's CoreBudget entry;
    # docs/recipes.md, "The `cpu` preset"). precision auto: bf16 where the CPU multiplies bf16 natively.
    "cpu": {
        "description": "full CIFAR-10 on a CPU in minutes: fastnet with airbench94_muon's recipe (~6 min on 2 "
                       "AMX cores, 18 on 2 Zen 4 cores), the study models side by side, each for the same "
                       f"{CPU_CORE_MINUTES} core-minutes at batch 128 (epochs from its measured img/s)",
        "data": None,
        "one_run_per_core": True,
        "all": dict(precision="auto", channels_last=True, compile="off", eval_batch_size=256),
    },
    # One GPU: full widths, full CIFAR-10, each model's tuned recipe.
    "standard": {
        "description": "full-width models, full CIFAR-10, each model's recipe, meant for one GPU",
        "data": None,
        "all": dict(precision="auto", channels_last=True, compile="auto", **GPU_CADENCE),
    },
    # fastnet with airbench94_muon's recipe (its entry, models/fastnet.py); every other model as in standard.
    "airbench": {
        "description": "standard, but fastnet with airbench94_muon's recipe: Muon, alternating flip, 2-pixel "
                       "shifts, 6-view TTA",
        "data": None,
        "all": dict(precision="auto", channels_last=True, compile="auto", **GPU_CADENCE),
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
    """``model``'s recipe: what `cifarzoo train MODEL` uses unless told otherwise (its @register_model's)."""
    from cifarzoo.models import get_entry

    return dict(get_entry(model).recipe)


def preset_entry(model: str, preset: str) -> dict[str, Any]:
    """``model``'s own settings in ``preset`` (over its "all"): its @register_model's entry (a CoreBudget
    gives its settings), then an entry named after it in ``PRESETS[preset]``."""
    from cifarzoo.models import get_entry

    entry = get_entry(model).presets.get(preset, {})
    own = entry.settings() if isinstance(entry, CoreBudget) else dict(entry)
    return {**own, **PRESETS[preset].get(get_entry(model).name, {})}


def equal_budgets(preset: str | None) -> dict[str, CoreBudget]:
    """The models whose entry in ``preset`` is an equal-compute budget (the cpu preset's study models)."""
    from cifarzoo.models import get_entry, list_models

    found = {m: get_entry(m).presets.get(preset or "") for m in list_models()}
    return {m: b for m, b in found.items() if isinstance(b, CoreBudget)}


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
        values.update(preset_entry(name, preset))
        if "epoch_factor" in p:
            values["epochs"] = max(1, int(round(values.get("epochs", TrainConfig.epochs) * p["epoch_factor"])))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
