"""Self-describing checkpoints, written atomically, readable with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(path, weights_only=True)`` reads it (no pickled classes). ``fit`` writes
(see ``Trainer.checkpoint`` in loop.py and ``TrainStep.state_dict`` in step.py):

    format          "cifarzoo.checkpoint"
    version         1
    model           {"name": str, "kwargs": {"num_classes": int, "width_mult": float, ...}}
    classes         [str, ...]
    normalization   {"mean": [r, g, b], "std": [r, g, b]}  # [0, 255] units, training-set stats
    config          TrainConfig as a dict
    metrics         [ {epoch row as in metrics.csv}, ... ]
    epoch           number of finished epochs
    state_dict      the weights to evaluate: the EMA copy's with --ema, else the model's
                    (the un-wrapped, un-compiled module's)
    optimizer       optimizer.state_dict()
    scheduler       the lr scheduler's state_dict()
    scaler          fp16 GradScaler state, or None when not in fp16
    rng             {"torch": ByteTensor} (+ "cuda": ByteTensor on a GPU)
    partial         None at an epoch's end; after Ctrl-C mid-epoch {"step": int, "step_loss",
                    "step_correct", "step_count": per-step tensors, "epoch_seconds": float}
                    ("step" is the steps per epoch after Ctrl-C in the epoch's evaluation)
    train_seconds   training time so far (evaluation not counted)
    finished        bool, True once the run has completed every epoch
    data_source     the Dataset's source string
    ema_state_dict  (with --ema) the AveragedModel's state_dict
    train_state_dict (with --ema) the trained model's own weights, to resume from
    lookahead       (with --lookahead) the averaged tensors, a list
    callbacks       (with callbacks that have a state, e.g. --early-stopping) {"<position>:<class>": state}
    stop_reason     (once a callback asked the run to stop) its reason
    best            (with --keep-best) {"epoch", "eval_acc", "state_dict"} of the best epoch on validation

``predict``, ``evaluate`` and ``export`` rebuild the model from ``model`` alone, as
nanoGPT's ``sample.py`` does from ``model_args``.

:func:`load_checkpoint` checks every field present against this schema once, on load
(:func:`check_schema`): ``model``, ``classes``, ``normalization``, ``state_dict`` and ``config``
are always required, the rest with ``resume=True``. A damaged or hand-edited checkpoint is
one line naming the field, never a traceback from deeper down.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarzoo.errors import CifarzooError
from cifarzoo.io import atomic_write_bytes, open_regular
from cifarzoo.train.config import TrainConfig
from cifarzoo.train.rundir import CHECKPOINT_FILE, CHECKPOINT_FORMAT

FORMAT = CHECKPOINT_FORMAT
# The most a checkpoint can hold: resnet50, the largest registered model (23,758,425 parameters
# and buffers at width 1 with 100 classes), at the widest width_mult (2: four times the
# weights) in fp32, six times over (weights, the EMA copy, the trained copy, lookahead and
# Adam's two moments), with a quarter more for the metadata: about 2.85 GB.
MAX_CHECKPOINT_BYTES = int(23_758_425 * 4 * 4 * 6 * 1.25)
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (see module doc) atomically to ``path``."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def resolve_checkpoint_path(run_or_checkpoint: str | os.PathLike) -> Path:
    """Accept a run folder (containing checkpoint.pt) or a checkpoint file."""
    p = Path(run_or_checkpoint)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
        if not p.exists():
            raise CifarzooError(f"{run_or_checkpoint}: not a run folder (no {CHECKPOINT_FILE} inside)")
    elif not p.exists():
        raise CifarzooError(f"{run_or_checkpoint}: no such run folder or checkpoint file")
    return p


def load_checkpoint(run_or_checkpoint: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    resume: bool = False) -> dict:
    """Load a checkpoint with ``weights_only=True`` and check its schema (:func:`check_schema`; ``resume``:
    also the fields continuing the run needs)."""
    path = resolve_checkpoint_path(run_or_checkpoint)
    with open_regular(path) as f:
        _check_records(f, path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says it all
                ckpt = torch.load(f, map_location=map_location, weights_only=True)
        except Exception as exc:  # truncated zip, not a torch file, forbidden global ...
            raise CifarzooError(f"{path}: not a cifarzoo checkpoint, or damaged ({_load_failure(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CifarzooError(f"{path}: not a cifarzoo checkpoint (missing format marker {FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise CifarzooError(f"{path}: checkpoint version {ckpt.get('version')!r}; this cifarzoo reads {VERSION}")
    check_schema(ckpt, path, resume=resume)
    ckpt["path"] = str(path)
    return ckpt


# --------------------------------------------------------------------------- the schema, checked once on load
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_tensor_dict(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


# Every key a checkpoint of ``fit`` holds (module doc), and what its value must be; "a.b" is key b of dict a.
_FIELDS: dict[str, tuple[Any, str]] = {
    "model": (lambda v: isinstance(v, dict), 'a dict {"name": str, "kwargs": dict}'),
    "model.name": (lambda v: isinstance(v, str), "a model name"),
    "model.kwargs": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a dict of builder options"),
    "classes": (lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v),
                "a list of at least 2 class names"),
    "normalization": (lambda v: isinstance(v, dict), 'a dict {"mean": [r, g, b], "std": [r, g, b]}'),
    "normalization.mean": (lambda v: _is_rgb(v), "3 finite numbers"),
    "normalization.std": (lambda v: _is_rgb(v) and all(x > 0 for x in v), "3 finite numbers > 0"),
    "state_dict": (lambda v: _is_tensor_dict(v) and all(bool(torch.isfinite(t).all()) for t in v.values()
                                                         if t.is_floating_point()),
                   "a dict of named tensors of finite values (NaN or infinite weights give NaN predictions)"),
    "config": (lambda v: isinstance(v, dict), "a dict of training settings"),
}
# What only continuing a run needs: required by ``load_checkpoint(..., resume=True)``, checked whenever present.
_RESUME_FIELDS: dict[str, tuple[Any, str]] = {
    "metrics": (lambda v: isinstance(v, list) and all(_is_metrics_row(r) for r in v),
                "a list of epoch rows, each a dict of numbers"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "optimizer": (lambda v: _is_optimizer_state(v) or (  # or Muon's pair (train/muon.py)
        isinstance(v, dict) and isinstance(v.get("groups"), list) and _is_int(v.get("steps"))
        and all(v.get(k) is None or _is_optimizer_state(v.get(k)) for k in ("muon", "sgd"))),
                  "an optimizer state_dict"),
    "scheduler": (lambda v: isinstance(v, dict), "a scheduler state_dict"),
    "scaler": (lambda v: v is None or isinstance(v, dict), "None or a GradScaler state_dict"),
    "rng": (lambda v: isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor) and all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 for t in v.values()),
            'a dict {"torch": ByteTensor}'),
    "partial": (lambda v: v is None or _is_partial(v), "None or the statistics of an unfinished epoch"),
    "train_seconds": (lambda v: _is_number(v) and v >= 0, "a number of seconds >= 0"),
    "finished": (lambda v: isinstance(v, bool), "true or false"),
    "data_source": (lambda v: isinstance(v, str), "a string"),
}
_OPTIONAL_FIELDS: dict[str, tuple[Any, str]] = {
    "ema_state_dict": (_is_tensor_dict, "a dict of named tensors"),
    "train_state_dict": (_is_tensor_dict, "a dict of named tensors"),
    "lookahead": (lambda v: isinstance(v, list) and all(isinstance(t, torch.Tensor) for t in v), "a list of tensors"),
    "callbacks": (lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()),
                  "a dict of the callbacks' states"),
    "stop_reason": (lambda v: isinstance(v, str), "a string"),
    "best": (lambda v: isinstance(v, dict) and _is_int(v.get("epoch")) and _is_number(v.get("eval_acc"))
             and _is_tensor_dict(v.get("state_dict")), 'a dict {"epoch": int, "eval_acc": float, "state_dict"}'),
}
_METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "epoch_seconds",
                    "elapsed_seconds", "images_per_second")


def _is_optimizer_state(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)


def _is_rgb(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)


def _is_metrics_row(row) -> bool:
    # NaN is allowed: an epoch without evaluation has NaN eval columns
    return isinstance(row, dict) and all(
        isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) for k in _METRICS_COLUMNS)


def _is_partial(v) -> bool:
    if not isinstance(v, dict):
        return False
    tensors = [v.get(f"step_{k}") for k in ("loss", "correct", "count")]
    return (_is_int(v.get("step")) and v["step"] >= 0 and _is_number(v.get("epoch_seconds"))
            and all(isinstance(t, torch.Tensor) and t.dim() == 1 and len(t) == len(tensors[0]) for t in tensors))


def check_schema(ckpt: dict, path: Path, *, resume: bool = False) -> None:
    """Raise one line naming the first field of ``ckpt`` that is missing or not what ``fit`` writes:
    a damaged or hand-edited checkpoint is refused here, never by a traceback further on.
    Every field present is checked; ``resume`` also requires those that continuing a run needs."""
    required = {*_FIELDS, *(_RESUME_FIELDS if resume else ())} - {"model.kwargs"}
    for key, (ok, expected) in {**_FIELDS, **_RESUME_FIELDS, **_OPTIONAL_FIELDS}.items():
        parent, _, name = key.rpartition(".")
        holder = ckpt[parent] if parent else ckpt  # a parent is checked to be a dict before its keys
        if name not in holder:
            if key in required:
                raise CifarzooError(f"{path}: damaged checkpoint: it lacks {key!r}")
            continue
        if not ok(holder[name]):
            raise CifarzooError(f"{path}: damaged checkpoint: {key!r} is {_describe(holder[name])}, "
                                f"expected {expected}")
    try:
        config = TrainConfig.from_dict(ckpt["config"])
    except CifarzooError as exc:
        raise CifarzooError(f"{path}: damaged checkpoint: 'config': {exc}") from None
    if ckpt.get("epoch", 0) > config.epochs:
        raise CifarzooError(f"{path}: damaged checkpoint: 'epoch' is {ckpt['epoch']}, more than the "
                            f"{config.epochs} epochs of its config")


def _describe(value) -> str:
    """A short description of a bad value for a one-line message (never a 1 MB repr)."""
    small = isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, list) and len(value) <= 8 and all(isinstance(v, (int, float, str)) for v in value))
    text = repr(value) if small else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _check_records(f, path: Path) -> None:
    """Refuse, before loading, a checkpoint whose zip records declare more than they hold.

    ``torch.save`` stores every record uncompressed, so a record's declared size is the
    bytes it takes in the file; a deflated record (a 3 MB file declaring 1 GB) is never
    one of ours. The records together are bounded by :data:`MAX_CHECKPOINT_BYTES`.
    """
    try:
        with zipfile.ZipFile(f) as z:
            records = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip: torch.load says what it is
    finally:
        f.seek(0)
    total = sum(r.file_size for r in records)
    packed = [r for r in records if r.compress_type != zipfile.ZIP_STORED or r.compress_size != r.file_size]
    if packed:
        raise CifarzooError(f"{path}: refused: record {packed[0].filename!r} is compressed to "
                            f"{packed[0].compress_size:,} bytes from {packed[0].file_size:,}; torch.save "
                            f"stores every record as is, so this is not a cifarzoo checkpoint")
    if total > MAX_CHECKPOINT_BYTES:
        raise CifarzooError(f"{path}: refused: its records come to {total:,} bytes, more than a cifarzoo "
                            f"checkpoint holds (at most {MAX_CHECKPOINT_BYTES:,})")


def _load_failure(exc: Exception) -> str:
    """One plain line on why torch.load failed (torch's own text spans lines, has terminal escapes and
    advises turning the safe loader off, which a cifarzoo checkpoint never needs)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc))
    code = re.search(r"GLOBAL ([\w.]+)", text)
    if code:
        return f"it refers to Python code ({code.group(1)}), which a checkpoint of plain tensors never does"
    if isinstance(exc, pickle.UnpicklingError):
        return "its contents are not plain tensors, numbers and strings"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first or "weights_only" in first:
        return type(exc).__name__
    return f"{type(exc).__name__}: {first.split('. ')[0][:200]}"


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model a checkpoint (checked by :func:`check_schema`) describes and load its weights;
    eval mode, on CPU."""
    from cifarzoo import models

    where = ckpt.get("path", "checkpoint")
    spec = ckpt["model"]
    classes, num_classes = ckpt["classes"], spec.get("kwargs", {}).get("num_classes")
    if num_classes is not None and len(classes) != num_classes:
        raise CifarzooError(f"{where}: damaged: it names {len(classes)} classes for a model with {num_classes} outputs")
    try:
        model = models.create(spec["name"], **spec.get("kwargs", {}))
    except models.ModelNotImportable:  # its code is not here: say so, it is not damage
        raise
    except (CifarzooError, TypeError, ValueError) as exc:
        raise CifarzooError(f"{where}: damaged: cannot build model {spec['name']!r} from its description "
                            f"({exc})") from None
    load_weights(model, ckpt["state_dict"], f"{where}: weights do not fit model {spec['name']!r} "
                                            f"with {spec.get('kwargs', {})}")
    return model.eval()


def load_weights(model: nn.Module, state_dict: dict, what: str) -> None:
    """``model.load_state_dict(state_dict)``, refused with one line (``what``: where and which) when a
    name is missing or unexpected or a shape differs (torch's own error is a page of text)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected:
        raise CifarzooError(f"{what} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        raise CifarzooError(f"{what} ({k} has shape {tuple(state_dict[k].shape)}, the model's is "
                            f"{tuple(own[k].shape)}; {len(wrong)} such)")
    model.load_state_dict(state_dict)


def load_model(run_or_checkpoint: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """``(model, ckpt)`` for a run folder or checkpoint: the model in eval mode."""
    ckpt = load_checkpoint(run_or_checkpoint, map_location=map_location)
    return model_from_checkpoint(ckpt), ckpt
