"""`cifarzoo tune MODEL --trials N --budget 30m --out DIR`: search a model's settings on the validation split."""
from __future__ import annotations

import argparse
import sys

from cifarzoo.cli.common import (
    add_config_options,
    add_data_argument,
    add_labels_argument,
    config_overrides,
)
from cifarzoo.progress import ConsoleReporter
from cifarzoo.train.config import PRESETS


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from cifarzoo.tuning.space import DEFAULT_SEARCH, SEARCHABLE

    p = sub.add_parser(
        "tune", help="search a model's training settings on the validation split (Ray Tune)",
        description="Search MODEL's training settings with Ray Tune (ASHA early stopping on the per-epoch "
                    "validation accuracy, Optuna's TPE) on the training images less a validation split; the test "
                    "set is not looked at. Writes trials.csv, best.json (a settings file for `cifarzoo train "
                    "--config`) and report.html into --out, then trains the best settings once on the whole "
                    "training set and evaluates them once on the test set. Needs cifarzoo[tune]. Training "
                    "options below fix the starting point (recipe < preset < options) that the search varies.")
    p.add_argument("model", nargs="?", help="model name (see `cifarzoo models`); omit with --resume")
    add_data_argument(p)
    add_labels_argument(p)
    p.add_argument("--preset", choices=list(PRESETS), help="start from a study preset's settings for this model")
    p.add_argument("--trials", type=int, default=8, metavar="N", help="trials to run at most (default 8)")
    p.add_argument("--budget", default="30m", metavar="DURATION",
                   help="wall time of the search, e.g. 30m, 2h, 1h30m (default 30m); each trial is capped at its "
                        "share (the budget x trials side by side / trials)")
    p.add_argument("--search", metavar="LIST",
                   help=f"comma list of settings to search with their default priors, of {', '.join(SEARCHABLE)} "
                        f"(default {','.join(DEFAULT_SEARCH)})")
    p.add_argument("--space", metavar="FILE", help="JSON or TOML file of priors, e.g. {\"lr\": {\"log_uniform\": "
                                                   "[0.01, 0.5]}}: each replaces or adds a setting (README)")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="local: a Ray instance on this machine, bound to 127.0.0.1 (default); ray: the Ray cluster "
                        "at --address (with --resume: where the search continues; default where it ran)")
    p.add_argument("--address", metavar="auto|HOST:PORT", help="with --executor ray: the Ray cluster's head")
    p.add_argument("--cpus-per-trial", type=float, default=1, metavar="N",
                   help="CPUs per trial, and its torch threads (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0, metavar="N",
                   help="GPUs per trial (default 0; 0.25 packs four trials on a GPU)")
    p.add_argument("--out", metavar="DIR", help="tuning folder (default tune/<model>)")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted search in DIR")
    p.add_argument("--no-final", action="store_true",
                   help="stop after the search: do not train the best settings on the full training set")
    p.add_argument("--quiet", action="store_true", help="print only the results")
    add_config_options(p)
    return p


def run(args) -> int:
    from cifarzoo.errors import CifarzooError
    from cifarzoo.tuning import tune

    if args.resume and args.model:
        raise CifarzooError("give either MODEL or --resume DIR, not both (a resumed search keeps its settings)")
    if not (args.resume or args.model):
        raise CifarzooError("missing MODEL (see `cifarzoo models`), or --resume DIR")
    out = args.resume or args.out or f"tune/{args.model}"
    settings = {k: v for k, v in config_overrides(args).items() if v is not None and k not in ("data", "val_split")}
    if args.resume and (settings or args.preset or args.val_split is not None or args.out or args.space
                        or args.search):
        raise CifarzooError(f"--resume continues {args.resume} as it was asked; drop the other settings")
    try:
        result = tune(args.model, out=out, preset=args.preset, data=args.data, trials=args.trials,
                      budget=args.budget, search=args.search, space=args.space, val_split=args.val_split,
                      executor=args.executor, address=args.address, cpus_per_trial=args.cpus_per_trial,
                      gpus_per_trial=args.gpus_per_trial, final=not args.no_final, resume=bool(args.resume),
                      verbose=0 if args.quiet else 1, reporter=ConsoleReporter(quiet=args.quiet), **settings)
    except KeyboardInterrupt:
        print(f"interrupted; the finished trials are in {out}; continue with: cifarzoo tune --resume {out}",
              file=sys.stderr)
        return 130
    counts: dict[str, int] = {}
    for t in result.trials:
        counts[t.status.split(":")[0]] = counts.get(t.status.split(":")[0], 0) + 1
    print(f"{len(result.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if result.best is None:
        print(f"no trial reported a validation accuracy; see {out}/trials.csv", file=sys.stderr)
        return 1
    print(f"best validation accuracy {100 * result.best_val_acc:.2f}%: {out}/best.json "
          f"(cifarzoo train --config {out}/best.json); report: {out}/report.html")
    if result.final:
        f = result.final
        print(f"best settings on the full training set, test accuracy {100 * f['test_acc']:.2f}% "
              f"(flip TTA {100 * f['test_acc_tta']:.2f}%): {f['run_dir']}")
    return 0
