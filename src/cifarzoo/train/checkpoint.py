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
    train_seconds   training time so far (evaluation not counted)
    finished        bool, True once the run has completed every epoch
    data_source     the Dataset's source string
    ema_state_dict  (with --ema) the AveragedModel's state_dict
    train_state_dict (with --ema) the trained model's own weights, to resume from
    lookahead       (with --lookahead) the averaged tensors, a list

``predict``, ``evaluate`` and ``export`` rebuild the model from ``model`` alone, as
nanoGPT's ``sample.py`` does from ``model_args``.
"""
from __future__ import annotations

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
from cifarzoo.train.rundir import CHECKPOINT_FILE

FORMAT = "cifarzoo.checkpoint"
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


def load_checkpoint(run_or_checkpoint: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint with ``weights_only=True``."""
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
    for key in ("model", "classes", "normalization", "state_dict"):
        if key not in ckpt:
            raise CifarzooError(f"{path}: checkpoint lacks {key!r}")
    ckpt["path"] = str(path)
    return ckpt


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


def build_model(ckpt: dict) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights; eval mode, on CPU."""
    from cifarzoo import models

    spec = ckpt["model"]
    classes, num_classes = ckpt["classes"], spec.get("kwargs", {}).get("num_classes")
    if not isinstance(classes, list) or (num_classes is not None and len(classes) != num_classes):
        raise CifarzooError(f"{ckpt.get('path', 'checkpoint')}: damaged: it names "
                            f"{len(classes) if isinstance(classes, list) else 'no list of'} classes for a model "
                            f"with {num_classes} outputs")
    try:
        model = models.create(spec["name"], **spec.get("kwargs", {}))
    except (TypeError, ValueError) as exc:
        raise CifarzooError(f"{ckpt.get('path', 'checkpoint')}: damaged: cannot build model "
                            f"{spec.get('name')!r} from its description ({exc})") from None
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CifarzooError(
            f"{ckpt.get('path', 'checkpoint')}: weights do not fit model {spec['name']!r} "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return model.eval()


def load_model(run_or_checkpoint: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """``(model, ckpt)`` for a run folder or checkpoint: the model in eval mode."""
    ckpt = load_checkpoint(run_or_checkpoint, map_location=map_location)
    return build_model(ckpt), ckpt
