"""Every figure cifarzoo draws, as PNG files written atomically: a run's curves, a confusion
matrix, and the study report's figures.

Drawn with matplotlib's object-oriented ``Figure`` API (the Agg canvas, no pyplot):
no global state, no display needed, safe inside other programs. Each model keeps
one colour in every figure (``model_colors``).
"""
from __future__ import annotations

import functools
import math
import os
import sys
from typing import Sequence

import numpy as np

from cifarzoo.io import save_figure

DPI = 100
# Above this many classes (CIFAR-100: 100 fine, 20 coarse) a C x C grid of numbers is unreadable:
# figures drop the per-cell numbers, and tables list the most frequent confusions and sort
# (or fold) the per-class accuracy instead (cifarzoo.evaluate, the study report).
MANY_CLASSES = 20
CURVES_SIZE = (10, 3.8)  # inches: a run's loss and accuracy side by side


def literal_text(draw):
    """Decorator: ``draw`` makes every text literal. Class and model names come from data, and one
    such as ``pay_$_low_$`` would be parsed as mathtext and raise (while laying out, before saving)."""
    import functools

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, layout: str | None = None):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout=layout)


@functools.lru_cache(maxsize=None)
def _png_figure_class():
    """A Figure that Jupyter shows as a PNG even before pyplot's inline backend is set up."""
    from matplotlib.figure import Figure

    from cifarzoo.io import figure_bytes

    class PngFigure(Figure):
        def _repr_png_(self) -> bytes:
            return figure_bytes(self)

    return PngFigure


def user_figure(figsize: tuple[float, float], *, pyplot: bool | None = None):
    """A Figure to hand to a user (``run.plot()``, ``lr_find(...).plot()``).

    With pyplot imported (``pyplot`` None: whether it is), pyplot manages it, so ``plt.show()``
    and the inline backend show it as any figure; without pyplot, no global state is
    touched and Jupyter shows it through its own ``_repr_png_``.
    """
    if pyplot is None:
        pyplot = "matplotlib.pyplot" in sys.modules
    if pyplot:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, dpi=DPI)
    return _png_figure_class()(figsize=figsize, dpi=DPI)


def _save(fig, path: str | os.PathLike) -> None:
    save_figure(fig, path, format="png", dpi=DPI)


def figure_pixels(fig) -> np.ndarray:
    """A Figure rendered as an RGB array (H, W, 3) uint8, on the Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def model_colors(models: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def was_evaluated(row: dict) -> bool:
    """Whether a metrics row's epoch was evaluated: with ``eval_every`` > 1 the others have NaN eval columns."""
    return not math.isnan(float(row.get("eval_acc", math.nan)))


def _evaluated(rows: list[dict]) -> list[dict]:
    """The rows of evaluated epochs."""
    return [r for r in rows if was_evaluated(r)]


def _mean_curve(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std) of ``key`` over the seeds' metrics, up to the shortest run."""
    n = min(len(r) for r in runs)
    vals = np.array([[row[key] for row in r[:n]] for r in runs], dtype=float)  # (seeds, epochs)
    epochs = np.array([row["epoch"] for row in runs[0][:n]])
    return epochs, vals.mean(0), vals.std(0)


@literal_text
def plot_learning_curves(path: str | os.PathLike, curves: dict[str, list[list[dict]]],
                         eval_name: str = "test") -> None:
    """Accuracy against epoch (left) and against training wall-clock seconds (right), every model on both.

    ``curves`` maps a model to its seeds' metrics.csv rows; lines are the mean over
    seeds, the band one standard deviation.
    """
    fig = _figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    colors = model_colors(list(curves))
    for model, runs in curves.items():
        runs = [r for r in map(_evaluated, runs) if r]  # accuracy is known at the evaluated epochs only
        if not runs:
            continue
        epochs, acc, sd = _mean_curve(runs, "eval_acc")
        _, secs, _ = _mean_curve(runs, "elapsed_seconds")
        label = model + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")
        for ax, x in ((ax1, epochs), (ax2, secs)):
            ax.plot(x, 100 * acc, "o-", ms=3, color=colors[model], label=label)
            if len(runs) > 1:
                ax.fill_between(x, 100 * (acc - sd), 100 * (acc + sd), color=colors[model], alpha=0.15, lw=0)
    from matplotlib.ticker import MaxNLocator

    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(f"{eval_name} accuracy (%)")
    ax1.set_title(f"{eval_name} accuracy by epoch")
    ax2.set_xlabel("training time (s, evaluation not counted)")
    ax2.set_title(f"{eval_name} accuracy by wall-clock time")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


@literal_text
def plot_tradeoffs(path: str | os.PathLike, rows: list[dict]) -> None:
    """Test accuracy against training time (left) and parameters (right): one point per model.

    ``rows`` are results.json model rows; error bars are the standard deviation over seeds.
    """
    fig = _figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    rows = [r for r in rows if r.get("test_acc_mean") is not None]
    colors = model_colors([r["model"] for r in rows])
    for r in rows:
        y = 100 * r["test_acc_mean"]
        err = 100 * r["test_acc_std"] if r.get("test_acc_std") is not None else None
        for ax, x in ((ax1, r.get("train_seconds_mean")), (ax2, r.get("parameters"))):
            if x is None or not (x > 0):
                continue
            ax.errorbar([x], [y], yerr=None if err is None else [err], fmt="o", ms=7, capsize=3,
                        color=colors[r["model"]])
            ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9)
    ax1.set_xlabel("training time per run (s)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("accuracy against training time")
    ax2.set_xlabel("parameters")
    ax2.set_title("accuracy against model size")
    for ax, key in ((ax1, "train_seconds_mean"), (ax2, "parameters")):
        xs = [r[key] for r in rows if r.get(key)]
        if xs and max(xs) > 4 * min(xs):  # a log axis only where the models differ by orders of magnitude
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_plain_formatter())
        ax.xaxis.set_minor_formatter(_plain_formatter(minor=True))
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.25, y=0.2)
    fig.tight_layout()
    _save(fig, path)


def _plain_formatter(minor: bool = False):
    """Tick labels as 1.2k / 3.4M rather than 10^3 (minor ticks: only 2 and 5 x 10^n, to avoid crowding)."""
    from matplotlib.ticker import FuncFormatter

    def fmt(x, _pos):
        if x <= 0:
            return ""
        if minor:
            lead = x / 10 ** math.floor(math.log10(x) + 1e-9)
            if round(lead) not in (2, 5) or abs(lead - round(lead)) > 1e-6:
                return ""
        for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if x >= div:
                return f"{x / div:g}{unit}"
        return f"{x:g}"

    return FuncFormatter(fmt)


@literal_text
def plot_top_losses(path: str | os.PathLike, images: np.ndarray, items: list[dict], classes: Sequence[str],
                    title: str = "", cols: int = 8) -> None:
    """The test images a model gets most confidently wrong (as fastai's ``plot_top_losses``).

    ``images`` are the uint8 ``(k, 32, 32, 3)`` images of ``items`` (``{true, pred, prob, loss}``);
    each cell is titled predicted class / probability, true class, loss.
    """
    k = max(1, len(items))
    cols = min(cols, k)
    rows = math.ceil(k / cols)
    # constrained layout keeps the three-line titles inside the figure (tight_layout clips
    # them above fixed-aspect images)
    fig = _figure(1.5 * cols, 2.05 * rows + (0.3 if title else 0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, img, it in zip(axes, images, items):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"pred: {classes[it['pred']]} {100 * it['prob']:.0f}%\ntrue: {classes[it['true']]}\n"
                     f"loss {it['loss']:.2f}", fontsize=8.5)
    if not items:
        axes[0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


@literal_text
def plot_confusion(path: str | os.PathLike, cm: np.ndarray, classes: Sequence[str], title: str = "") -> None:
    """:func:`confusion_figure` as a PNG, written atomically."""
    _save(confusion_figure(cm, classes, title), path)


@literal_text
def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str = ""):
    """A confusion matrix as a Figure: rows true, columns predicted, cells in % of the true class.

    Up to :data:`MANY_CLASSES` classes each cell is labelled with its percentage. Beyond (CIFAR-100),
    the figure keeps a readable size (about 13 inches for 100 classes): shades on a
    square-root scale and a colour bar, no numbers, every class named in small type.
    """
    cm = np.asarray(cm)
    pct = 100 * cm / np.maximum(1, cm.sum(1, keepdims=True))
    n = len(classes)
    many = n > MANY_CLASSES
    fig = _figure(2.5 + 0.105 * n, 2.0 + 0.105 * n) if many else _figure(1.0 + 0.55 * n, 0.8 + 0.5 * n)
    ax = fig.subplots()
    # Many classes: most mistakes are a few % of a class; a square-root scale keeps them visible.
    from matplotlib.colors import Normalize, PowerNorm

    norm = PowerNorm(0.5, vmin=0, vmax=100) if many else Normalize(vmin=0, vmax=100)
    image = ax.imshow(pct, cmap="Blues", norm=norm)
    ax.set_xticks(range(n), list(classes), rotation=90 if many else 45, ha="center" if many else "right",
                  fontsize=5.5 if many else None)
    ax.set_yticks(range(n), list(classes), fontsize=5.5 if many else None)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if many:
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="% of the true class (square-root scale)")
    else:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if pct[i, j] > 50 else "black")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


@literal_text
def curves_figure(rows: list[dict], title: str = "", eval_name: str = "eval", fig=None):
    """One run's loss and accuracy per epoch, train and eval, side by side, as a Figure.

    Drawn into ``fig`` (an empty Figure, e.g. :func:`user_figure`'s) or a new one that the
    caller owns (no pyplot state, no backend change: a notebook's inline plots stay as they are).
    """
    epochs = [r["epoch"] for r in rows]
    evaluated = _evaluated(rows)  # eval_every > 1: the eval curves join the evaluated epochs
    eval_epochs = [r["epoch"] for r in evaluated]
    fig = fig if fig is not None else _figure(*CURVES_SIZE)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax1.plot(eval_epochs, [r["eval_loss"] for r in evaluated], "s-", label=eval_name)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.set_title("loss"), ax1.legend()
    ax2.plot(epochs, [100 * r["train_acc"] for r in rows], "o-", label="train")
    ax2.plot(eval_epochs, [100 * r["eval_acc"] for r in evaluated], "s-", label=eval_name)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy (%)"), ax2.set_title("accuracy"), ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@literal_text
def plot_curves(path: str | os.PathLike, rows: list[dict], title: str = "") -> None:
    """The run folder's curves.png: :func:`curves_figure` written atomically."""
    _save(curves_figure(rows, title), path)


@literal_text
def lr_curve_figure(lrs: Sequence[float], losses: Sequence[float], suggested: float | None, title: str = "",
                    fig=None):
    """The learning-rate range test: smoothed loss against lr (log axis), the suggested lr marked."""
    fig = fig if fig is not None else _figure(6, 4)
    ax = fig.subplots()
    ax.plot(lrs, losses, "-")
    ax.set_xscale("log")
    if suggested is not None:
        ax.axvline(suggested, color="tab:red", linestyle="--", label=f"suggested lr {suggested:.2g}")
        ax.legend()
    ax.set_xlabel("learning rate"), ax.set_ylabel("loss (smoothed)"), ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
