"""The run folder: the one record a training run leaves.

    config.json   every setting, data source and statistics, versions, device
    metrics.csv   one row per epoch (METRIC_COLUMNS)
    checkpoint.pt self-describing, atomic, rewritten every epoch (see checkpoint.py)
    summary.json  final test figures, time, throughput, memory, size
    curves.png    loss and accuracy per epoch

Every file is written atomically (temp file, then rename), so an interrupted run
never leaves a half-written record.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from cifarzoo.errors import CifarzooError
from cifarzoo.train.checkpoint import atomic_write_bytes

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc",
                  "epoch_seconds", "elapsed_seconds", "images_per_second")


def new_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    """``runs/<model>-<YYYYmmdd-HHMMSS>`` (a numeric suffix if that exists already)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{model}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def _clean(obj):
    """JSON has no NaN/Infinity: write them as null rather than emit invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CifarzooError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise CifarzooError(f"{path}: not valid JSON ({exc})") from None


def write_metrics(path: str | os.PathLike, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue().encode()))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (int(v) if k == "epoch" else (float(v) if v not in ("", None) else float("nan")))
                         for k, v in r.items()})
    return rows


def curves_figure(rows: list[dict], title: str = "", eval_name: str = "eval", figure_class=None):
    """Loss and accuracy per epoch, train and eval, side by side, as a matplotlib Figure.

    Built with the Figure API, not pyplot: no global state, no backend change (a notebook's
    inline plots stay as they are), and the caller owns the figure. ``figure_class``: a
    Figure subclass to build (default Figure).
    """
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = (figure_class or Figure)(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax1.plot(epochs, [r["eval_loss"] for r in rows], "s-", label=eval_name)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.set_title("loss"), ax1.legend()
    ax2.plot(epochs, [100 * r["train_acc"] for r in rows], "o-", label="train")
    ax2.plot(epochs, [100 * r["eval_acc"] for r in rows], "s-", label=eval_name)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy (%)"), ax2.set_title("accuracy"), ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: int = 100) -> bytes:
    """A Figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_curves(path: str | os.PathLike, rows: list[dict], title: str = "") -> None:
    """Write :func:`curves_figure` to ``path`` as a PNG (atomically)."""
    png = figure_png(curves_figure(rows, title))
    atomic_write_bytes(path, lambda f: f.write(png))
