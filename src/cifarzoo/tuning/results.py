"""A search's record: trials.csv (one row per trial), best.json (a settings file) and report.html.

Importance of a setting (report.html): the absolute Spearman rank correlation between the setting's
value (its logarithm for log-uniform priors; a choice by its value) and the trial's last validation
accuracy, over the trials that reported at least one epoch. A rough, documented measure: with a few
trials, and trials stopped early by ASHA, it says which settings moved the result, not by how much.
"""
from __future__ import annotations

import csv
import html
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarzoo.io import atomic_write_bytes, figure_bytes, png_data_uri, write_json
from cifarzoo.tuning.search import METRIC

TRIALS_FILE, BEST_FILE, REPORT_FILE = "trials.csv", "best.json", "report.html"


@dataclass
class Trial:
    """One trial as the table shows it: its settings, validation accuracy after each epoch and fate."""

    index: int  # from 1, in the order the searcher proposed the trials
    trial_id: str
    settings: dict[str, Any]  # what it trained with (lr scaled with the batch size)
    sampled: dict[str, Any]  # what the searcher proposed
    val_acc: list[float] = field(default_factory=list)  # after epoch 1, 2, ...
    seconds: float | None = None  # Ray's time of the trial, worker start included
    status: str = "not run"  # finished | stopped by ASHA | stopped at the time cap | failed: ... | not run
    seed: int | None = None

    @property
    def last(self) -> float | None:
        return self.val_acc[-1] if self.val_acc else None


def trials_of(grid, *, start, batch_size: int, trial_cap_s: float) -> list[Trial]:
    """The trials of Ray Tune's ResultGrid, in the order the searcher proposed them."""
    from cifarzoo.tuning.space import trial_settings

    out = []
    for r in grid:
        name = Path(r.path).name if r.path else ""
        m = re.match(r"[A-Za-z_]+_[0-9a-f]+_(\d+)_", name)  # Ray's <trainable>_<id>_<number from 1>_<settings>
        df = r.metrics_dataframe
        accs = [float(a) for a in df[METRIC] if not math.isnan(a)] if df is not None and METRIC in df else []
        settings = trial_settings(r.config or {}, start, batch_size)
        t = Trial(int(m.group(1)) if m else len(out) + 1, (r.metrics or {}).get("trial_id", name), settings,
                  dict(r.config or {}), accs, (r.metrics or {}).get("time_total_s"),
                  seed=(r.metrics or {}).get("seed", start.seed))
        epochs = settings.get("epochs", start.epochs)
        if r.error is not None:
            lines = [ln for ln in str(r.error).splitlines() if ln.strip()]
            t.status = "failed: " + (lines[-1].strip() if lines else type(r.error).__name__)
        elif len(accs) >= epochs:
            t.status = "finished"
        elif accs:
            t.status = "stopped at the time cap" if (t.seconds or 0) >= trial_cap_s else "stopped by ASHA"
        out.append(t)
    return sorted(out, key=lambda t: t.index)


def best_trial(trials: list[Trial]) -> Trial | None:
    """The finished trial with the highest final validation accuracy (else the best of those that reported)."""
    for pool in ([t for t in trials if t.status == "finished"], [t for t in trials if t.val_acc]):
        if pool:
            return max(pool, key=lambda t: t.last)
    return None


def write_trials(path: Path, trials: list[Trial], names: list[str]) -> None:
    epochs = max((len(t.val_acc) for t in trials), default=0)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "status", "seed", *names, "epochs_done", "last_val_acc", "best_val_acc", "seconds",
                *(f"val_acc_{e}" for e in range(1, epochs + 1))])
    for t in trials:
        w.writerow([t.index, t.status, t.seed, *(t.settings.get(n, "") for n in names), len(t.val_acc),
                    _num(t.last), _num(max(t.val_acc, default=None)), _num(t.seconds),
                    *(_num(a) for a in t.val_acc), *([""] * (epochs - len(t.val_acc)))])
    atomic_write_bytes(path, buf.getvalue().encode())


def _num(x) -> str:
    return "" if x is None else f"{x:.6g}"


def importance(trials: list[Trial], space: dict[str, dict]) -> dict[str, float]:
    """{setting: |Spearman rho| with the last validation accuracy} (see the module doc); NaN if constant."""
    done = [t for t in trials if t.val_acc]
    acc = _ranks(np.array([t.last for t in done]))
    out = {}
    for name, spec in space.items():
        values = np.array([float(t.sampled.get(name, t.settings.get(name, math.nan))) for t in done])
        if "log_uniform" in spec:
            values = np.log(values)
        r = _ranks(values)
        ok = len(done) >= 3 and r.std() > 0 and acc.std() > 0
        out[name] = float(abs(np.corrcoef(r, acc)[0, 1])) if ok else math.nan
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties given their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def write_report(path: Path, trials: list[Trial], space: dict[str, dict], request: dict,
                 final: dict | None) -> None:
    """report.html: the search's curves, best-so-far, importance, the trials and the final test result apart."""
    from matplotlib.figure import Figure

    def img(fig) -> str:
        return f'<img src="{png_data_uri(figure_bytes(fig))}">'

    curves = Figure(figsize=(6.4, 4))
    ax = curves.subplots()
    for t in trials:
        if t.val_acc:
            ax.plot(range(1, len(t.val_acc) + 1), [100 * a for a in t.val_acc], marker=".",
                    alpha=1.0 if t.status == "finished" else 0.4, label=f"trial {t.index}")
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="every trial (faint: stopped early)")
    best = Figure(figsize=(6.4, 3))
    ax = best.subplots()
    lasts = [t.last for t in trials]
    so_far = np.fmax.accumulate([math.nan if a is None else 100 * a for a in lasts]) if lasts else []
    ax.step(range(len(so_far)), so_far, where="post")
    ax.set(xlabel="trial (in the order proposed)", ylabel="best last val. acc. (%)", title="the search's progress")
    imp = importance(trials, space)
    bars = Figure(figsize=(6.4, 0.5 + 0.4 * max(1, len(imp))))
    ax = bars.subplots()
    ax.barh(list(imp), [0 if math.isnan(v) else v for v in imp.values()])
    ax.set(xlim=(0, 1), xlabel="|Spearman rank correlation| with the last validation accuracy",
           title="importance of each setting")
    rows = "".join(f"<tr><td>{t.index}</td><td>{html.escape(t.status)}</td>"
                   + "".join(f"<td>{html.escape(str(_short(t.settings.get(n, ''))))}</td>" for n in space)
                   + f"<td>{'' if t.last is None else f'{100 * t.last:.2f}%'}</td><td>{len(t.val_acc)}</td></tr>"
                   for t in trials)
    final_html = ("<p>Not trained (the search only).</p>" if final is None else
                  f"<p>The best settings trained once on the full training set ({final['train_images']:,} images) "
                  f"and evaluated once on the test set: <b>{100 * final['test_acc']:.2f}%</b> "
                  f"(flip TTA {100 * final['test_acc_tta']:.2f}%), run folder <code>{html.escape(final['run_dir'])}"
                  "</code>.</p>")
    title = f"cifarzoo tune: {html.escape(request['model'])}"
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:auto}} td,th{{padding:2px 8px}}</style></head><body>
<h1>Tuning {html.escape(request['model'])}</h1>
<p>{html.escape(describe(request))}</p>
<h2>The search (validation split only)</h2>{img(curves)}{img(best)}{img(bars)}
<p>Importance: the absolute Spearman rank correlation between a setting and the trial's last validation
accuracy, over the trials that reported an epoch (log scale for log-uniform priors); rough with few trials.</p>
<table><tr><th>trial</th><th>status</th>{''.join(f'<th>{html.escape(n)}</th>' for n in space)}
<th>last val. acc.</th><th>epochs</th></tr>{rows}</table>
<h2>The best settings on the test set (apart from the search)</h2>{final_html}
</body></html>"""
    atomic_write_bytes(path, text.encode())


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def describe(request: dict) -> str:
    """One sentence saying what the search was: budget, trials, validation images, space, where it ran."""
    space = ", ".join(f"{n} {k.replace('_', '-')} {b}" for n, s in request["space"].items() for k, b in s.items())
    cpus, gpus, slots = request["cpus"], request["gpus"], request.get("slots", 1)
    each = (f"{cpus:g} CPU{'s' if cpus != 1 else ''}" + (f" and {gpus:g} GPU{'s' if gpus != 1 else ''}" if gpus else "")
            + (f" per trial, {slots} trials side by side" if slots > 1 else ""))
    return (f"{request['trials']} trials within {request['budget']} ({request['budget_seconds']:.0f} s) on {each}"
            + f", each trial capped at {request['trial_cap_seconds']:.0f} s, on {request['val_images']:,} "
              f"validation images held out of {request['train_images'] + request['val_images']:,} training "
              f"images; ASHA on the per-epoch validation accuracy, Optuna's TPE; search space: {space}")


def write_best(path: Path, config: dict) -> None:
    write_json(path, config)
