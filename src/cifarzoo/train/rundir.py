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
import os
import time
from pathlib import Path

from cifarzoo.io import atomic_write_bytes, read_json, save_figure, write_json  # noqa: F401  (re-exported)

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


def plot_curves(path: str | os.PathLike, rows: list[dict], title: str = "") -> None:
    """Loss and accuracy per epoch, train and eval, side by side (see :mod:`cifarzoo.plots`)."""
    from cifarzoo.plots import plot_curves as _plot

    _plot(path, rows, title=title)
