"""A study's report, built from its run folders alone: results.json, results.csv, report.md, report.html.

``write_report(DIR)`` reads ``DIR/study.json`` and every ``DIR/runs/<model>-s<seed>/``
(so ``cifarzoo benchmark --report-only`` rebuilds it at any time, also from a study
still in progress) and writes, atomically::

    DIR/results.json   the schema below
    DIR/results.csv    one row per model: RESULT_COLUMNS
    DIR/report.md      references DIR/figures/*.png
    DIR/report.html    self-contained: inline CSS, every image a base64 data: URI, no network
    DIR/figures/       curves.png, tradeoffs.png, data-examples.png,
                       confusion-<model>.png, top-losses-<model>.png

results.json (accuracies are fractions in [0, 1]; times in seconds; memory in bytes;
a value that does not exist is null)::

    schema            "cifarzoo.study.results/1"
    study             {preset, preset_description, models: [str], seeds: [int], rule: str,
                       data_spec: str|null, created: str, report_date: str, cifarzoo: str,
                       configs: {model: TrainConfig dict}}
    data              {source, classes: [str], train_images, test_images, eval_split,
                       mean: [r,g,b], std: [r,g,b]}         # [0, 255] units, training-set statistics
    environment       {device, precision, compiled, world_size, torch, python, numpy, cifarzoo, host}
    original_study    {model: str} (what the original Keras study reported; preset "seed" only) | null
    models            [one row per model, in study order, keys RESULT_COLUMNS (+ "paper")]:
        model str, paper str, status str ("finished" every seed finished | "partial" some failed |
        "failed" none finished | "incomplete" some not run or not finished yet), n_seeds int (seeds
        finished), n_failed int, parameters int, macs int (multiply-accumulates per image), epochs int,
        test_acc_mean/test_acc_std, test_acc_tta_mean/test_acc_tta_std (flip TTA),
        test_loss_mean/test_loss_std float, train_seconds_mean float, images_per_second_mean float,
        peak_memory_bytes int (max over seeds), peak_memory_kind str, original_study str|null
        (means over the finished seeds; std is the sample standard deviation, null below 2 seeds)
    runs              [one per (model, seed), in study order]:
        name, model, seed, status ("finished" | "failed" | "unfinished" | "missing"), run_dir
        (relative to DIR), epochs, epochs_completed, test_acc, test_acc_tta, test_loss, test_loss_tta,
        train_seconds, warmup_seconds (untimed warm-up before training; null: none), compile_seconds
        (torch.compile's share of it; null: not compiled), tta_level and test_acc_tta_level (multi-crop
        TTA, runs with tta_level 2; else null), images_per_second, peak_memory_bytes, peak_memory_kind,
        parameters, macs, precision, device, kind, reason, diagnosis (failed runs; else null),
        per_class_accuracy [float] | null, eval_error str | null, stall_check str ("passed" | "not run
        (too few steps)" | "allowed to stall") and warnings [str] (no stall check; accuracy within
        noise of chance) from summary.json
"""
from __future__ import annotations

import csv
import html
import io
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from cifarzoo import __version__
from cifarzoo.errors import CifarzooError
from cifarzoo import plots
from cifarzoo.evaluate import top_confusions
from cifarzoo.plots import MANY_CLASSES
from cifarzoo.io import atomic_write_bytes, png_data_uri, read_json_object, write_json
from cifarzoo.study.plan import EVAL_FILE, NOT_TUNED, ORIGINAL_STUDY, STUDY_FILE, StudyPlan, load_plan
from cifarzoo.train.rundir import FAILED, FINISHED, FOREIGN, RESUMABLE, RunDir

SCHEMA = "cifarzoo.study.results/1"
RESULT_COLUMNS = (
    "model", "status", "n_seeds", "n_failed", "parameters", "macs", "epochs",
    "test_acc_mean", "test_acc_std", "test_acc_tta_mean", "test_acc_tta_std",
    "test_loss_mean", "test_loss_std", "train_seconds_mean", "images_per_second_mean",
    "peak_memory_bytes", "peak_memory_kind", "original_study",
)
RUN_KEYS = (
    "name", "model", "seed", "status", "run_dir", "epochs", "epochs_completed", "test_acc", "test_acc_tta",
    "test_loss", "test_loss_tta", "train_seconds", "warmup_seconds", "compile_seconds", "tta_level",
    "test_acc_tta_level", "images_per_second", "peak_memory_bytes",
    "peak_memory_kind", "parameters", "macs", "precision", "device", "kind", "reason", "diagnosis",
    "per_class_accuracy", "eval_error", "stall_check", "warnings",
)
FIGURES = "figures"
GRID_CLASSES = 20  # rows of the example-image grid; with more classes (CIFAR-100), a random sample of them


# --------------------------------------------------------------------------- reading the runs
@dataclass
class RunRecord:
    """Everything the report knows about one (model, seed): results.json's row plus what the figures need."""

    row: dict  # the results.json "runs" entry
    metrics: list[dict]  # metrics.csv rows ([] if none)
    config_info: dict | None  # config.json
    evaluation: dict | None  # EVAL_FILE (per-class accuracy, confusion, top losses)


def collect_runs(plan: StudyPlan) -> list[RunRecord]:
    """Read every run folder of ``plan`` (missing ones included, as status "missing")."""
    records = []
    for spec in plan.runs:
        run = RunDir(spec.run_dir)
        summary = run.read_summary() or {}
        info = run.read_info()
        evaluation = read_json_object(run.path / EVAL_FILE)
        metrics = run.read_metrics()
        state = run.state()
        if state in (FINISHED, FAILED):
            status = state
        else:
            status = "unfinished" if state in (RESUMABLE, FOREIGN) or metrics else "missing"
        row = {k: None for k in RUN_KEYS}
        row.update({
            "name": spec.name, "model": spec.model, "seed": spec.seed, "status": status,
            "run_dir": os.path.relpath(run.path, plan.out_dir), "epochs": spec.config.epochs,
            "epochs_completed": len(metrics),
        })
        for k in ("test_acc", "test_acc_tta", "test_loss", "test_loss_tta", "train_seconds", "warmup_seconds",
                  "compile_seconds", "tta_level", "test_acc_tta_level", "images_per_second", "peak_memory_bytes",
                  "peak_memory_kind", "parameters", "macs", "precision", "device", "stall_check", "warnings"):
            if k in summary:
                row[k] = summary[k]
        if status == FAILED:
            row.update(kind=summary.get("kind"), reason=summary.get("reason"), diagnosis=summary.get("diagnosis"))
            row["epochs_completed"] = summary.get("epochs_completed", len(metrics))
        if row["parameters"] is None and info:
            row["parameters"] = info.get("parameters")
        if evaluation is not None:
            if "error" in evaluation:
                row["eval_error"] = evaluation["error"]
                evaluation = None
            else:
                row["per_class_accuracy"] = evaluation.get("per_class_accuracy")
        records.append(RunRecord(row, metrics, info, evaluation))
    return records


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _mean_std(values: list) -> tuple[float | None, float | None]:
    xs = [x for x in (_num(v) for v in values) if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) >= 2 else None)


def model_rows(plan: StudyPlan, records: list[RunRecord], num_classes: int = 10) -> list[dict]:
    """One results row per model (RESULT_COLUMNS + paper), statistics over its finished seeds.

    ``num_classes`` sizes a model no run of which has finished (the data's class count).
    """
    from cifarzoo.models import get_entry
    from cifarzoo.models.summary import count_macs, count_parameters

    rows = []
    for model in plan.models:
        runs = [r.row for r in records if r.row["model"] == model]
        done = [r for r in runs if r["status"] == "finished"]
        failed = [r for r in runs if r["status"] == "failed"]
        if len(done) == len(runs):
            status = "finished"
        elif any(r["status"] in ("missing", "unfinished") for r in runs):
            status = "incomplete"
        elif not done:
            status = "failed"
        else:
            status = "partial"
        cfg = next(s.config for s in plan.runs if s.model == model)
        params = next((r["parameters"] for r in runs if r["parameters"] is not None), None)
        macs = next((r["macs"] for r in runs if r["macs"] is not None), None)
        if params is None or macs is None:  # no run finished: size the model as configured
            try:
                from cifarzoo import models

                net = models.from_config(cfg, num_classes)
                params = count_parameters(net) if params is None else params
                macs = count_macs(net) if macs is None else macs
            except Exception:  # sizing is informative only
                pass
        row: dict[str, Any] = {"model": model, "status": status, "n_seeds": len(done), "n_failed": len(failed),
                               "parameters": params, "macs": macs, "epochs": cfg.epochs}
        for key in ("test_acc", "test_acc_tta", "test_loss"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r[key] for r in done])
        row["train_seconds_mean"] = _mean_std([r["train_seconds"] for r in done])[0]
        row["images_per_second_mean"] = _mean_std([r["images_per_second"] for r in done])[0]
        peaks = [r["peak_memory_bytes"] for r in done if r["peak_memory_bytes"] is not None]
        row["peak_memory_bytes"] = max(peaks) if peaks else None
        row["peak_memory_kind"] = next((r["peak_memory_kind"] for r in done if r["peak_memory_kind"]), None)
        row["original_study"] = ORIGINAL_STUDY.get(model) if plan.preset == "seed" else None
        try:
            row["paper"] = get_entry(model).paper
        except Exception:
            row["paper"] = ""
        rows.append(row)
    return rows


def _data_info(records: list[RunRecord], dataset) -> dict:
    info = next((r.config_info["data"] for r in records if r.config_info and "data" in r.config_info), {})
    out = {"source": info.get("source"), "classes": info.get("classes"), "train_images": info.get("train_images"),
           "test_images": info.get("test_images"), "eval_split": info.get("eval_split", "test"),
           "mean": info.get("mean"), "std": info.get("std")}
    if dataset is not None:
        out.update(source=dataset.source, classes=list(dataset.classes), test_images=int(len(dataset.test_labels)),
                   mean=[float(v) for v in dataset.mean], std=[float(v) for v in dataset.std])
        if out["train_images"] is None:
            out["train_images"] = int(len(dataset.train_labels))
    return out


def _environment(records: list[RunRecord]) -> dict:
    info = next((r.config_info for r in records if r.config_info), None) or {}
    v = info.get("versions", {})
    import torch

    return {
        "device": info.get("device_name"), "precision": info.get("precision"), "compiled": info.get("compiled"),
        "world_size": info.get("world_size"), "torch": v.get("torch", torch.__version__),
        "python": v.get("python", platform.python_version()), "numpy": v.get("numpy", np.__version__),
        "cifarzoo": v.get("cifarzoo", __version__), "host": f"{platform.system()} {platform.machine()}",
    }


def build_results(plan: StudyPlan, records: list[RunRecord], dataset=None, created: str | None = None) -> dict:
    """The content of results.json (see the module doc)."""
    meta = plan.to_dict()
    data = _data_info(records, dataset)
    return {
        "schema": SCHEMA,
        "study": {
            "preset": plan.preset, "preset_description": meta["preset_description"], "models": list(plan.models),
            "seeds": list(plan.seeds), "rule": plan.rule, "tuning": plan.tuning, "data_spec": plan.data,
            "created": created, "report_date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cifarzoo": __version__,
            "configs": meta["configs"], "overrides": preset_overrides(plan),
        },
        "data": data,
        "environment": _environment(records),
        "original_study": {m: ORIGINAL_STUDY.get(m) for m in plan.models} if plan.preset == "seed" else None,
        "models": model_rows(plan, records, len(data.get("classes") or []) or 10),
        "runs": [r.row for r in records],
    }


def preset_overrides(plan: StudyPlan) -> list[str]:
    """Each setting of the study that is not its preset's, as "name value (preset: value)"; the data too."""
    from cifarzoo.train.config import PRESETS, make_config

    out = []
    preset_data = PRESETS[plan.preset].get("data")
    if plan.data != preset_data:
        out.append(f"data {plan.data or 'the full CIFAR-10'} (preset: {preset_data or 'the full CIFAR-10'})")
    for key, value in sorted(plan.overrides.items()):
        if key == "data":
            continue
        preset_values = sorted({repr(make_config(m, preset=plan.preset).to_dict().get(key)) for m in plan.models})
        if preset_values != [repr(value)]:
            out.append(f"{key} {value!r} (preset: {', '.join(preset_values)})")
    return out


def write_results_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                    for k in RESULT_COLUMNS})
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue().encode()))


# --------------------------------------------------------------------------- formatting
def fmt_pct(mean, std=None, digits: int = 2) -> str:
    if mean is None:
        return "–"
    s = f"{100 * mean:.{digits}f}"
    return f"{s} ± {100 * std:.{digits}f}%" if std is not None else f"{s}%"


def fmt_count(n) -> str:
    if n is None:
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def fmt_seconds(s) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_bytes(b) -> str:
    if b is None:
        return "–"
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if b >= div:
            return f"{b / div:.2f} {unit}"
    return f"{int(b)} B"


def fmt_float(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_loss(mean, std=None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


# --------------------------------------------------------------------------- document model
class Block(NamedTuple):
    """One element of the report, rendered twice (Markdown and HTML) so the two never disagree.

    ``kind`` is h1 | h2 | h3 | p | pre (``text``), kv (``items``: [(key, value)]), table
    (``text``: its id, ``headers``, ``items``: rows, ``row_classes``), img (``path``,
    ``text``: alt), gallery | stack (``items``: [(path, caption)], side by side | one
    under another), fold (``text``: its summary line, ``items``: the Blocks shown when opened).
    """

    kind: str
    text: str = ""
    items: Sequence = ()
    path: Path | None = None
    headers: Sequence = ()
    row_classes: Sequence | None = None


def _table(table_id: str, headers: Sequence, rows: Sequence, row_classes: Sequence | None) -> Block:
    return Block("table", table_id, items=rows, headers=headers, row_classes=row_classes)


def _img(path: Path, alt: str) -> Block:
    return Block("img", alt, path=path)


def _summary_table(rows: list[dict], seed_preset: bool) -> Block:
    headers = ["Model", "Status", "Parameters", "MACs", "Test accuracy", "Flip TTA", "Test loss",
               "Train time", "Images/s", "Peak memory", "Epochs", "Seeds"]
    if seed_preset:
        headers.insert(4, "Original study")
    body, classes = [], []
    for r in rows:
        status = r["status"] + (f" ({r['n_failed']} failed)" if r["n_failed"] and r["status"] != "failed" else "")
        cells = [r["model"], status, fmt_count(r["parameters"]), fmt_count(r["macs"]),
                 fmt_pct(r["test_acc_mean"], r["test_acc_std"]), fmt_pct(r["test_acc_tta_mean"], r["test_acc_tta_std"]),
                 fmt_loss(r["test_loss_mean"], r["test_loss_std"]), fmt_seconds(r["train_seconds_mean"]),
                 "–" if r["images_per_second_mean"] is None else f"{r['images_per_second_mean']:,.0f}",
                 fmt_bytes(r["peak_memory_bytes"]), str(r["epochs"]), f"{r['n_seeds']}"]
        if seed_preset:
            cells.insert(4, r.get("original_study") or "–")
        body.append(cells)
        classes.append(r["status"])
    return _table("summary", headers, body, classes)


def _figure_path(out_dir: Path, name: str) -> Path:
    return out_dir / FIGURES / name


def _safe(model: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in model)


def make_figures(out_dir: Path, plan: StudyPlan, records: list[RunRecord], rows: list[dict], dataset,
                 notes: list[str], figs_meta: dict | None = None) -> dict[str, Path]:
    """Draw every figure into ``out_dir/figures``; returns name -> path of those drawn.

    ``figs_meta["top_seed"][model]`` receives the seed whose most-wrong images are shown.
    """
    figs: dict[str, Path] = {}
    top_seed = figs_meta.setdefault("top_seed", {}) if figs_meta is not None else {}
    eval_name = next((r.config_info["data"].get("eval_split", "test") for r in records
                      if r.config_info and "data" in r.config_info), "test")
    curves = {m: [r.metrics for r in records if r.row["model"] == m and r.row["status"] == "finished" and r.metrics]
              for m in plan.models}
    curves = {m: c for m, c in curves.items() if c}
    if curves:
        path = _figure_path(out_dir, "curves.png")
        plots.plot_learning_curves(path, curves, eval_name=eval_name)
        figs["curves"] = path
    if any(r["test_acc_mean"] is not None for r in rows):
        path = _figure_path(out_dir, "tradeoffs.png")
        plots.plot_tradeoffs(path, rows)
        figs["tradeoffs"] = path
    if dataset is not None:
        from cifarzoo.data.show import draw_class_grid

        path = _figure_path(out_dir, "data-examples.png")
        draw_class_grid(dataset, path, per_class=10, seed=0, max_classes=GRID_CLASSES)
        figs["data"] = path
    for model in plan.models:
        summed = summed_confusion(model, records)
        if summed is None:
            continue
        classes, cm, evals = summed
        acc = np.trace(cm) / max(1, cm.sum())
        path = _figure_path(out_dir, f"confusion-{_safe(model)}.png")
        seeds = f", {len(evals)} seeds summed" if len(evals) > 1 else ""
        plots.plot_confusion(path, cm, classes, title=f"{model}: test accuracy {100 * acc:.2f}%{seeds}")
        figs[f"confusion:{model}"] = path
        first = next(r for r in records if r.row["model"] == model and r.evaluation is evals[0])
        items = evals[0].get("top_losses", [])
        if dataset is None:
            continue
        images = dataset.test_images
        ok = [it for it in items if 0 <= it["index"] < len(images)
              and int(dataset.test_labels[it["index"]]) == it["true"]]
        if len(ok) < len(items):
            notes.append(f"{model}: some most-wrong images do not match the loaded test set; they are left out")
        path = _figure_path(out_dir, f"top-losses-{_safe(model)}.png")
        plots.plot_top_losses(path, np.stack([images[it["index"]] for it in ok]) if ok else np.zeros((0, 32, 32, 3)),
                              ok, classes)
        figs[f"top:{model}"] = path
        top_seed[model] = first.row["seed"]
    return figs


def summed_confusion(model: str, records: list[RunRecord]) -> tuple[list[str], np.ndarray, list[dict]] | None:
    """(classes, confusion matrix summed over the finished seeds, their evaluations) of ``model``; None if none."""
    evals = [r.evaluation for r in records if r.row["model"] == model and r.row["status"] == "finished"
             and r.evaluation]
    if not evals:
        return None
    return evals[0]["classes"], np.sum([np.asarray(e["confusion"]) for e in evals], axis=0), evals


def _memory_note(rows: list[dict]) -> str:
    kinds = sorted({r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")})
    if not kinds:
        return ""
    text = f" Peak memory is {' / '.join(kinds)}"
    if any("RSS" in k for k in kinds):
        text += (" (the whole process's high-water mark: where runs train one after the other in the study's "
                 "process it includes the runs before, so later runs can read higher than they needed; runs "
                 "trained side by side each have a process of their own)")
    return text + "."


def build_blocks(out_dir: Path, results: dict, records: list[RunRecord], figs: dict[str, Path],
                 notes: list[str], figs_meta: dict | None = None) -> list[Block]:
    st, data, rows = results["study"], results["data"], results["models"]
    seed_preset = st["preset"] == "seed"
    n_runs = len(results["runs"])
    blocks: list[Block] = [
        Block("h1", f"cifarzoo study — preset “{st['preset']}”"),
        Block("p", f"{len(st['models'])} models × {len(st['seeds'])} seed{'s' if len(st['seeds']) != 1 else ''} "
                   f"= {n_runs} runs on {data.get('source') or st['data_spec'] or 'CIFAR-10'}. "
                   f"Preset: {st['preset_description']}"
                   + (f"; overridden here: {'; '.join(st['overrides'])}" if st.get("overrides") else "")
                   + f". Report built {st['report_date']} by cifarzoo {st['cifarzoo']}."),
        Block("kv", items=[("Budget rule", st["rule"]), ("Tuning", st.get("tuning") or NOT_TUNED)]),
        Block("h2", "Results"),
        Block("p", "Test accuracy and loss are the final epoch's weights on the test split; mean ± sample standard "
                   "deviation over the finished seeds. Flip TTA averages each image's and its mirror's logits. "
                   "Train time excludes evaluation." + _memory_note(rows)),
        _summary_table(rows, seed_preset),
    ]
    blocks += _status_blocks(records)
    if seed_preset:
        blocks += _original_study_blocks(rows, st.get("overrides") or [], data.get("source"))
        blocks += _replay_blocks(rows, records)
    blocks += _figure_blocks(figs)
    blocks += _data_blocks(data, figs, st["models"], records)
    blocks += _model_figure_blocks(figs, st["models"], figs_meta, records)
    blocks += _environment_blocks(results)
    blocks += [Block("p", "Note: " + n) for n in notes]
    return blocks


def _status_blocks(records: list[RunRecord]) -> list[Block]:
    """The failed runs with their reasons, and the runs not finished yet."""
    blocks: list[Block] = []
    failed = [r.row for r in records if r.row["status"] == "failed"]
    pending = [r.row for r in records if r.row["status"] in ("missing", "unfinished")]
    if failed:
        blocks.append(Block("h2", "Failed runs"))
        for f in failed:
            blocks.append(Block("h3", f"{f['name']}: {f['kind']} after {f['epochs_completed']} of "
                                      f"{f['epochs']} epochs"))
            blocks.append(Block("p", f["reason"] or ""))
            if f.get("diagnosis"):
                blocks.append(Block("pre", f["diagnosis"]))
    warned = [r.row for r in records if r.row["status"] == "finished" and r.row.get("warnings")]
    if warned:  # finished, but its accuracy may mean nothing: said where the accuracy is read
        blocks.append(Block("h2", "Finished with warnings"))
        for w in warned:
            blocks.append(Block("p", f"{w['name']}: " + "; ".join(w["warnings"]) + "."))
    if pending:
        blocks.append(Block("p", "Not finished yet: " + ", ".join(
            f"{r['name']} ({r['status']}, {r['epochs_completed']}/{r['epochs']} epochs)" for r in pending)
            + ". Run the same `cifarzoo benchmark` command again to continue."))
    return blocks


def _original_study_blocks(rows: list[dict], overrides: list[str], source: str | None) -> list[Block]:
    original = ("The original Keras study trained these networks with Adam 1e-3, batch 32, no augmentation, "
                "50 epochs, on the full CIFAR-10 (50,000 training images). ")
    if overrides:
        text = (original + "This study changed the preset's settings: " + "; ".join(overrides)
                + (f" (data: {source})" if source else "") + ". So these are not the original settings: "
                "its figures, as it reported them, next to this study's on correctly built networks, "
                "for orientation only:")
    else:
        text = original + ("Its figures, as it reported them, next to the same settings on correctly built "
                           "networks:")
    return [
        Block("h2", "The original study beside this one"),
        Block("p", text),
        _table("original", ["Model", "Original study", "This study (test accuracy)", "Status"],
               [[r["model"], r.get("original_study") or "–", fmt_pct(r["test_acc_mean"], r["test_acc_std"]),
                 r["status"]] for r in rows], [r["status"] for r in rows]),
    ]


def _replay_cell(row: dict, records: list[RunRecord]) -> str:
    """An as-written network's result: test accuracy and last-epoch training loss, or how the guard stopped it."""
    runs = [r for r in records if r.row["model"] == row["model"]]
    losses = [r.metrics[-1]["train_loss"] for r in runs if r.row["status"] == "finished" and r.metrics]
    if row["test_acc_mean"] is not None:
        loss = _mean_std(losses)[0]
        return (f"{fmt_pct(row['test_acc_mean'], row['test_acc_std'])}"
                + (f", training loss {loss:.4f} in its last epoch" if loss is not None else ""))
    stopped = [r.row for r in runs if r.row["status"] == "failed"]
    if stopped:
        f = stopped[0]
        return f"stopped in epoch {f['epochs_completed'] + 1} ({f['kind']}): {f['reason'] or ''}"
    return row["status"]


def _replay_blocks(rows: list[dict], records: list[RunRecord]) -> list[Block]:
    """The study's printed figures, its networks as written replayed, and the correct networks, side by side."""
    from cifarzoo.study.plan import AS_WRITTEN_OF, ORIGINAL_PRINTED

    by_model = {r["model"]: r for r in rows}
    pairs = [(m, w) for m, w in AS_WRITTEN_OF.items() if w in by_model]
    if not pairs:
        return []
    body = [[m, ORIGINAL_PRINTED.get(m, "–"), _replay_cell(by_model[w], records),
             fmt_pct(by_model[m]["test_acc_mean"], by_model[m]["test_acc_std"]) if m in by_model else "–"]
            for m, w in pairs]
    return [
        Block("h2", "The original study replayed"),
        Block("p", "Its networks as written (models/as_written.py: every bug kept, Keras' initializers and its "
                   "probability loss, training images /225 and test images /255) under its settings, beside the "
                   "zoo's correctly built networks under the same settings. The stall guard stops a network "
                   "that is not learning in its first epoch and names the causes it sees in the network "
                   "(`--allow-stall` lets it train on and shows the frozen loss)."),
        _table("replay", ["Network", "The study printed", "Replay: as written (test accuracy)",
                          "Built correctly (test accuracy)"], body, [by_model[w]["status"] for _, w in pairs]),
    ]


def _figure_blocks(figs: dict[str, Path]) -> list[Block]:
    blocks = [Block("h2", "Learning curves")]
    if "curves" in figs:
        blocks.append(_img(figs["curves"], "test accuracy against epoch and against training seconds"))
    else:
        blocks.append(Block("p", "No finished run yet."))
    blocks.append(Block("h2", "Accuracy against cost"))
    if "tradeoffs" in figs:
        blocks.append(_img(figs["tradeoffs"], "test accuracy against training time and against parameters"))
    return blocks


def _data_blocks(data: dict, figs: dict[str, Path], models: list[str], records: list[RunRecord]) -> list[Block]:
    """The data set, its example images, and each model's per-class test accuracy."""
    mean, std = data.get("mean"), data.get("std")
    blocks = [
        Block("h2", "Data"),
        Block("kv", items=[
            ("Source", data.get("source") or "–"),
            ("Training images", f"{data['train_images']:,}" if data.get("train_images") else "–"),
            ("Test images", f"{data['test_images']:,}" if data.get("test_images") else "–"),
            ("Per-epoch evaluation", f"{data.get('eval_split', 'test')} split"),
            ("Classes", f"{len(data.get('classes') or [])}: " + ", ".join(data.get("classes") or [])),
            ("Channel mean (0–255)", ", ".join(f"{v:.2f}" for v in mean) if mean else "–"),
            ("Channel std (0–255)", ", ".join(f"{v:.2f}" for v in std) if std else "–")]),
    ]
    classes = data.get("classes") or []
    if "data" in figs:
        shown = "each class" if len(classes) <= GRID_CLASSES else f"{GRID_CLASSES} random classes of {len(classes)}"
        blocks.append(_img(figs["data"], f"ten random training images of {shown}"))
    per_class = {}
    for model in models:
        pcs = [r.row["per_class_accuracy"] for r in records
               if r.row["model"] == model and r.row["status"] == "finished" and r.row["per_class_accuracy"]]
        if pcs:
            per_class[model] = np.mean(np.asarray(pcs, dtype=float), axis=0)
    if per_class and classes:
        blocks += [Block("h2", "Per-class test accuracy (%)"), *_per_class_blocks(per_class, classes)]
    return blocks


def _per_class_blocks(per_class: dict[str, np.ndarray], classes: list[str]) -> list[Block]:
    """A row per model and a column per class; with many classes a row per class, worst first, folded."""
    if len(classes) <= MANY_CLASSES:
        return [_table("per-class", ["Model"] + list(classes),
                       [[m] + [f"{100 * v:.1f}" for v in pc] for m, pc in per_class.items()], None)]
    mean = np.mean(list(per_class.values()), axis=0)
    order = np.argsort(mean, kind="stable")
    rows = [[classes[k]] + [f"{100 * pc[k]:.1f}" for pc in per_class.values()] for k in order]
    worst = ", ".join(f"{classes[k]} {100 * mean[k]:.1f}%" for k in order[:5])
    return [Block("p", f"{len(classes)} classes, sorted by the mean over the models, worst first "
                       f"(worst: {worst})."),
            Block("fold", f"the {len(classes)} classes", items=[
                _table("per-class", ["Class"] + list(per_class), rows, None)])]


def _model_figure_blocks(figs: dict[str, Path], models: list[str], figs_meta: dict | None,
                         records: list[RunRecord]) -> list[Block]:
    """Confusion matrices (with many classes, the most frequent confusions first) and most
    confidently wrong images, per model."""
    blocks: list[Block] = []
    summed = {m: c for m in models if (c := summed_confusion(m, records)) is not None}
    many = any(len(classes) > MANY_CLASSES for classes, _, _ in summed.values())
    if many:
        blocks += [Block("h2", "Most frequent confusions"),
                   Block("p", "Per model, the true class → predicted class pairs it gets wrong most often "
                              "(summed over seeds), with their count and share of the true class's test images.")]
        for m, (classes, cm, _) in summed.items():
            top = top_confusions(cm, classes)
            blocks += [Block("h3", m), _table(f"confusions-{_safe(m)}", ["True class", "Predicted", "Count", "Share"],
                                              [[t["true"], t["pred"], str(t["count"]), fmt_pct(t["share"], digits=1)]
                                               for t in top], None) if top else Block("p", "No mistakes.")]
    conf = [(figs[f"confusion:{m}"], m) for m in models if f"confusion:{m}" in figs]
    if conf:
        blocks += [Block("h2", "Confusion matrices"),
                   Block("p", "Rows are the true class, columns the prediction; "
                              + ("shades in % of the true class, on a square-root scale so that small "
                                 "confusions show." if many else "cells in % of the true class.")),
                   Block("gallery", items=conf)]
    top_seed = (figs_meta or {}).get("top_seed", {})
    tops = [(figs[f"top:{m}"], f"{m} (seed {top_seed[m]})" if m in top_seed else m)
            for m in models if f"top:{m}" in figs]
    if tops:
        blocks += [Block("h2", "Most confidently wrong test images"),
                   Block("p", "Per model, the test images it misclassifies with the highest probability: "
                              "predicted class and its probability, the true class, and the loss."),
                   Block("stack", items=tops)]
    return blocks


def _environment_blocks(results: dict) -> list[Block]:
    st, data, env = results["study"], results["data"], results["environment"]
    return [
        Block("h2", "Environment"),
        Block("kv", items=[
            ("Device", env.get("device") or "–"), ("Precision", env.get("precision") or "–"),
            ("torch.compile", "on" if env.get("compiled") else "off"),
            ("torch", env.get("torch") or "–"), ("Python", env.get("python") or "–"),
            ("NumPy", env.get("numpy") or "–"), ("cifarzoo", env.get("cifarzoo") or "–"),
            ("Host", env.get("host") or "–"), ("Preset", st["preset"]),
            ("Data source", data.get("source") or "–"), ("Study started", st.get("created") or "–"),
            ("Report built", st["report_date"])]),
        Block("h2", "Runs"),
        Block("p", "Train time counts training steps only. Warm-up is the untimed steps run before "
                        "the clock starts (then undone), of which compile is torch.compile's first compilation. "
                        "Multi-crop TTA (airbench's 6 views) is given for runs with tta_level 2."),
        _table("runs", ["Run", "Status", "Epochs", "Test accuracy", "Flip TTA", "Multi-crop TTA", "Test loss",
                        "Train time", "Warm-up", "Compile", "Images/s", "Folder"],
               [[r["name"], r["status"] + (f" ({r['kind']})" if r["kind"] else ""),
                 f"{r['epochs_completed']}/{r['epochs']}", fmt_pct(r["test_acc"]), fmt_pct(r["test_acc_tta"]),
                 fmt_pct(r["test_acc_tta_level"]), fmt_loss(_num(r["test_loss"])),
                 fmt_seconds(_num(r["train_seconds"])), fmt_seconds(_num(r["warmup_seconds"])),
                 fmt_seconds(_num(r["compile_seconds"])),
                 "–" if _num(r["images_per_second"]) is None else f"{r['images_per_second']:,.0f}", r["run_dir"]]
                for r in results["runs"]], [r["status"] for r in results["runs"]]),
    ]


# --------------------------------------------------------------------------- renderers
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], out_dir: Path) -> str:
    def rel(path) -> str:
        return Path(os.path.relpath(path, out_dir)).as_posix()

    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "kv":
            out.append("\n".join(f"- **{k}:** {v}" for k, v in b.items))
        elif b.kind == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b.headers) + " |",
                     "|" + "|".join("---" if i == 0 else "---:" for i in range(len(b.headers))) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.items]
            out.append("\n".join(lines))
        elif b.kind == "img":
            out.append(f"![{b.text}]({rel(b.path)})")
        elif b.kind in ("gallery", "stack"):
            out.append("\n\n".join(f"**{cap}**\n\n![{cap}]({rel(path)})" for path, cap in b.items))
        elif b.kind == "pre":
            out.append("```\n" + b.text.rstrip() + "\n```")
        elif b.kind == "fold":  # GitHub-flavoured Markdown renders <details> folded
            out.append(f"<details><summary>{html.escape(b.text)}</summary>\n\n"
                       + render_markdown(list(b.items), out_dir) + "\n</details>")
    return "\n\n".join(out) + "\n"


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;
  max-width:1180px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:1.8em;margin:.2em 0 .4em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.35em;margin:1.6em 0 .5em;border-bottom:1px solid #eaeef2;padding-bottom:.2em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:5px 9px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left;font-weight:600}
th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}
tr.failed td{background:#ffebe9}
tr.partial td,tr.incomplete td,tr.unfinished td,tr.missing td{background:#fff8c5}
.scroll{overflow-x:auto}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:.5em 0 1em}
dl.kv dt{font-weight:600;color:#57606a}
dl.kv dd{margin:0}
img{max-width:100%;height:auto}
figure{margin:.5em 0 1em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:14px 18px}
.gallery figure{margin:0;border:1px solid #eaeef2;border-radius:6px;padding:8px}
figcaption{font-weight:600;margin-bottom:4px}
figure.wide{margin:0 0 14px}
details{margin:.4em 0 1em}
summary{cursor:pointer;color:#0969da}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;overflow-x:auto;font-size:.85em}
"""


def _data_uri(path: Path) -> str:
    return png_data_uri(Path(path).read_bytes())


def _html_table(b: Block) -> str:
    e = html.escape
    head = "<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b.headers) + "</tr>"
    body = []
    for i, row in enumerate(b.items):
        cls = f' class="{e(b.row_classes[i])}"' if b.row_classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
    return (f'<div class="scroll"><table id="{e(b.text)}"><thead>{head}</thead><tbody>'
            + "".join(body) + "</tbody></table></div>")


def render_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             *_html_blocks(blocks), "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _html_blocks(blocks: list[Block]) -> list[str]:
    e = html.escape
    parts: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "kv":
            parts.append('<dl class="kv">' + "".join(f"<dt>{e(str(k))}</dt><dd>{e(str(v))}</dd>"
                                                     for k, v in b.items) + "</dl>")
        elif b.kind == "table":
            parts.append(_html_table(b))
        elif b.kind == "img":
            parts.append(f'<figure><img src="{_data_uri(b.path)}" alt="{e(b.text)}"></figure>')
        elif b.kind == "gallery":
            parts.append('<div class="gallery">' + "".join(
                f'<figure><figcaption>{e(cap)}</figcaption><img src="{_data_uri(path)}" alt="{e(cap)}"></figure>'
                for path, cap in b.items) + "</div>")
        elif b.kind == "stack":
            parts.append("".join(
                f'<figure class="wide"><figcaption>{e(cap)}</figcaption><img src="{_data_uri(path)}" '
                f'alt="{e(cap)}"></figure>' for path, cap in b.items))
        elif b.kind == "pre":
            parts.append(f"<pre>{e(b.text.rstrip())}</pre>")
        elif b.kind == "fold":
            parts.append(f"<details><summary>{e(b.text)}</summary>" + "\n".join(_html_blocks(list(b.items)))
                         + "</details>")
    return parts


# --------------------------------------------------------------------------- entry point
def write_report(out_dir: str | os.PathLike, *, dataset=None, plan: StudyPlan | None = None) -> dict[str, Path]:
    """(Re)build the whole report of the study in ``out_dir``; returns name -> path of each file.

    ``dataset`` is the study's data (for the example grid and the most-wrong images);
    when None it is loaded from the study's data spec, and if that fails the report
    is written without those figures (and says so).
    """
    out = Path(out_dir)
    plan = plan or load_plan(out)
    meta = read_json_object(out / STUDY_FILE) or {}
    records = collect_runs(plan)
    notes: list[str] = []
    if dataset is None:
        try:
            from cifarzoo.data import load

            dataset = load(plan.data, labels=plan.labels, progress=False)
        except CifarzooError as exc:
            notes.append(f"the study's data could not be loaded ({exc}); example images and most-wrong images "
                         "are left out")
    results = build_results(plan, records, dataset, created=meta.get("created"))
    write_json(out / "results.json", results)
    write_results_csv(out / "results.csv", results["models"])
    figs_meta: dict = {}
    figs = make_figures(out, plan, records, results["models"], dataset, notes, figs_meta)
    blocks = build_blocks(out, results, records, figs, notes, figs_meta)
    md = render_markdown(blocks, out)
    page = render_html(blocks, title=f"cifarzoo study ({plan.preset})")
    atomic_write_bytes(out / "report.md", lambda f: f.write(md.encode()))
    atomic_write_bytes(out / "report.html", lambda f: f.write(page.encode()))
    return {"results.json": out / "results.json", "results.csv": out / "results.csv",
            "report.md": out / "report.md", "report.html": out / "report.html", **figs}
