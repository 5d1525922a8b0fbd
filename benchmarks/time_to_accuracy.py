#!/usr/bin/env python
"""Seconds of training each model needs to reach given test accuracies, and where it ends.

    python benchmarks/time_to_accuracy.py --models fastnet --preset quick                 # CPU, minutes
    python benchmarks/time_to_accuracy.py --models fastnet --preset standard --seeds 5   # one GPU
    python benchmarks/time_to_accuracy.py --models vgg16,resnet18 --data /path/to/cifar --json tta.json

Every run goes through ``cifarzoo.train.fit`` with the preset's settings (the same
config ``cifarzoo train MODEL --preset P`` uses) and leaves a normal run folder under
``--out``. Time is the trainer's own ``elapsed_seconds`` column of ``metrics.csv``:
cumulative training time at the end of each epoch, evaluation excluded, and so are the
untimed warm-up steps before it (compilation, cuDNN's search: ``warmup_seconds``, of which
``compile_seconds``). Every epoch is evaluated (``eval_every`` 1 unless ``--set`` says otherwise).
A threshold counts as reached at the first epoch whose end-of-epoch evaluation
accuracy (``eval_acc``, on the test set unless ``--val-split``) is at least that
value, so times have the resolution of one epoch. The final accuracies are fit's
``test_acc`` (last epoch's weights) and ``test_acc_tta`` (with flip TTA).

``--epochs`` shorter than a recipe's cuts its schedule, and the recipe's warm-up (about
a fifth of its epochs) would then fill the whole run: ``--truncate-schedule`` scales the
warm-up by the same factor, so every model runs its own one-cycle shape in miniature
and the JSON says ``schedule: "truncated"``; those accuracies say how fast a model
learns under its recipe's shape, not what the full recipe reaches.

One run's failure (a stall, a non-finite loss, out of memory, any exception) is
recorded as that run's ``status: "failed"`` with its ``reason``, and the next run
trains; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import cifarzoo  # noqa: F401,E402  first: it sets OMP_WAIT_POLICY before torch loads OpenMP, as the CLI does

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_output_options, attempt, comma_list, finish, fmt, markdown_head, save, start_result,
)
from cifarzoo.train.config import COMPILE_MODES, DEVICES, PRECISIONS, PRESETS  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        # An empty cell is an epoch without evaluation (eval_every > 1): NaN, never reached.
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
                for row in csv.DictReader(f)]


def time_to(metrics: list[dict], threshold: float) -> dict | None:
    """First epoch whose eval_acc >= threshold: {epoch, seconds}; None if never."""
    for row in metrics:
        if row["eval_acc"] >= threshold:
            return {"epoch": int(row["epoch"]), "seconds": row["elapsed_seconds"]}
    return None


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def summarize(runs: list[dict], thresholds: list[float]) -> list[dict]:
    """One row per model: mean/std of the final accuracies and times over its seeds."""
    out = []
    for model in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == model and r["status"] == "finished"]
        row = {"model": model, "runs": len(rs)}
        for key in ("test_acc", "test_acc_tta", "train_seconds"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r[key] for r in rs])
        comp = [r["compile_seconds"] for r in rs if r.get("compile_seconds") is not None]
        row["compile_seconds_mean"] = statistics.fmean(comp) if comp else None
        row["thresholds"] = {}
        for t in thresholds:
            hits = [r["time_to"][f"{t:g}"] for r in rs if r["time_to"].get(f"{t:g}")]
            row["thresholds"][f"{t:g}"] = {
                "reached": len(hits),
                "seconds_mean": statistics.fmean(h["seconds"] for h in hits) if hits else None,
            }
        out.append(row)
    return out


def markdown(result: dict) -> str:
    th = result["thresholds"]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    secs = lambda v: fmt(v, ".1f")  # noqa: E731
    note = f", preset {result['preset']}, data {result['data_source']}" + (
        ", schedules truncated to --epochs (warm-up scaled): accuracies show early learning, not the "
        "recipes' results" if result.get("schedule") == "truncated" else "")
    lines = [*markdown_head("Time to accuracy", result, note=note),
             "| model | seed | " + " | ".join(f"s to {100 * t:g}%" for t in th)
             + " | test acc | flip TTA | train s | compile s | epochs |",
             "|---|---|" + "---|" * len(th) + "---|---|---|---|---|"]
    for r in result["runs"]:
        if r["status"] != "finished":
            lines.append(f"| {r['model']} | {r['seed']} | " + " | ".join("-" for _ in th)
                         + f" | {r['status']}: {r.get('reason', '')} | | | | {r.get('epochs', '-')} |")
            continue
        times = []
        for t in th:
            hit = r["time_to"].get(f"{t:g}")
            times.append(f"{hit['seconds']:.1f} (ep {hit['epoch']})" if hit else "not reached")
        lines.append(f"| {r['model']} | {r['seed']} | " + " | ".join(times)
                     + f" | {pct(r['test_acc'])} | {pct(r['test_acc_tta'])} | {secs(r['train_seconds'])} "
                     f"| {secs(r.get('compile_seconds'))} | {r['epochs']} |")
    if any(s["runs"] > 1 for s in result["summary"]):
        lines += ["", "| model | runs | test acc (mean ± std) | flip TTA (mean ± std) | train s (mean) |",
                  "|---|---|---|---|---|"]
        for s in result["summary"]:
            pm = lambda k: "-" if s[f"{k}_mean"] is None else (  # noqa: E731
                f"{100 * s[f'{k}_mean']:.2f}" + (f" ± {100 * s[f'{k}_std']:.2f}" if s[f"{k}_std"] else "") + "%")
            lines.append(f"| {s['model']} | {s['runs']} | {pm('test_acc')} | {pm('test_acc_tta')} "
                         f"| {secs(s['train_seconds_mean'])} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="fastnet", help="comma list (default fastnet)")
    p.add_argument("--preset", default="standard", choices=list(PRESETS), help="a study preset (default standard)")
    p.add_argument("--data", default=None, help="--data spec (default: the preset's)")
    p.add_argument("--thresholds", default="0.5,0.8,0.9", help="comma list of accuracies in [0, 1]")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 of every model (default 1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    p.add_argument("--truncate-schedule", action="store_true",
                   help="with --epochs: scale each recipe's warm-up by epochs/recipe epochs (its schedule in "
                        "miniature; the JSON and table say 'truncated')")
    p.add_argument("--subset", type=int, default=None, help="first N training images, class-balanced")
    p.add_argument("--width-mult", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--compile", choices=COMPILE_MODES, default=None, help="override the preset's")
    p.add_argument("--precision", choices=PRECISIONS, default=None)
    p.add_argument("--device", choices=DEVICES, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field, e.g. --set lookahead=False --set lr=0.75 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default="runs/time_to_accuracy", help="folder of the run folders")
    add_output_options(p, "run")
    return p.parse_args(argv)


def parse_sets(items: list[str]) -> dict:
    """``["lookahead=False", "lr=0.75"]`` -> {"lookahead": False, "lr": 0.75} (Python literals, else strings)."""
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"time_to_accuracy.py: --set wants KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def run_config(model: str, seed: int, args, overrides: dict):
    """The preset's config for ``model``; with --truncate-schedule its warm-up scaled to --epochs."""
    from cifarzoo.train import make_config

    config = make_config(model, preset=args.preset, data=args.data, seed=seed, **overrides)
    if args.truncate_schedule and args.epochs:
        recipe = make_config(model, preset=args.preset, data=args.data)
        config = config.replace(warmup_epochs=recipe.warmup_epochs * args.epochs / recipe.epochs)
    return config


def train_one(config, dataset, run_dir: Path, thresholds: list[float]) -> dict:
    """One fit and what the tables need from it."""
    from cifarzoo.train import fit

    res = fit(config, dataset=dataset, out_dir=run_dir)
    s = res.summary
    metrics = read_metrics(res.run_dir)
    return dict(
        status="finished", test_acc=s["test_acc"], test_acc_tta=s["test_acc_tta"],
        train_seconds=s["train_seconds"], compile_seconds=s.get("compile_seconds"),
        warmup_seconds=s.get("warmup_seconds"), test_acc_tta_level=s.get("test_acc_tta_level"),
        compiled=s.get("compiled"), precision=s["precision"], device=s["device"],
        time_to={f"{t:g}": time_to(metrics, t) for t in thresholds},
        curve=[{"epoch": int(r["epoch"]), "elapsed_seconds": r["elapsed_seconds"], "eval_acc": r["eval_acc"]}
               for r in metrics],
        config=config.to_dict())


def run_and_record(rec: dict, args, overrides: dict, dataset, thresholds: list[float]) -> dict:
    """Train ``rec``'s model and seed: ``rec`` gets the config's model name and epochs, the result the rest."""
    config = run_config(rec["model"], rec["seed"], args, overrides)
    rec.update(model=config.model, epochs=config.epochs)
    return train_one(config, dataset, Path(rec["run_dir"]), thresholds)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from cifarzoo import data as data_mod
    from cifarzoo.train import make_config
    from cifarzoo.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    thresholds = [float(t) for t in comma_list(args.thresholds)]
    if not all(0 < t <= 1 for t in thresholds):
        raise SystemExit("time_to_accuracy.py: --thresholds are accuracies in (0, 1], e.g. 0.5,0.8,0.9")
    models = comma_list(args.models)
    # eval_every 1 unless --set says otherwise: a time to accuracy needs every epoch's evaluation.
    overrides = {"eval_every": 1, **dict(epochs=args.epochs, subset=args.subset, width_mult=args.width_mult,
                                         batch_size=args.batch_size, compile=args.compile, precision=args.precision,
                                         device=args.device), **parse_sets(args.set)}
    first = make_config(models[0], preset=args.preset, data=args.data)
    dataset = data_mod.load(first.data if args.data is None else args.data)
    device = resolve_device(args.device or first.device)
    result = {**start_result("time_to_accuracy", device, argv), "preset": args.preset,
              "data_source": dataset.source, "thresholds": thresholds,
              "schedule": "truncated" if args.truncate_schedule and args.epochs else "recipe", "runs": []}
    for model in models:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run_dir = Path(args.out) / f"{model}-seed{seed}"
            rec = {"model": model, "seed": seed, "run_dir": str(run_dir)}
            t0 = time.perf_counter()
            rec.update(attempt(run_and_record, device, rec, args, overrides, dataset, thresholds))
            rec["wall_seconds"] = time.perf_counter() - t0
            result["runs"].append(rec)
            result["summary"] = summarize(result["runs"], thresholds)
            acc = f"test {100 * rec['test_acc']:.2f}% (TTA {100 * rec['test_acc_tta']:.2f}%) " \
                  f"in {rec['train_seconds']:.1f}s" if rec["status"] == "finished" else f"failed: {rec['reason']}"
            print(f"{rec['model']} seed {seed}: {acc}", flush=True)
            save(args, result, markdown)
    return finish(result, "runs", markdown)


if __name__ == "__main__":
    sys.exit(main())
