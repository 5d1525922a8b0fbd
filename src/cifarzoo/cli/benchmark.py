"""`cifarzoo benchmark`: train several models under one rule and write the report comparing them."""
from __future__ import annotations

import argparse
import sys

from cifarzoo.cli.common import (CONFIG_HELP, add_data_argument, add_labels_argument, add_tracking_arguments,
                                 with_config_file)
from cifarzoo.progress import ConsoleStudyReporter
from cifarzoo.train.config import DEVICES, PRESETS


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "benchmark", help="train several models under one rule and write a comparison report",
        description="Train every model of a study (default: vgg16, vgg19, resnet50, inception, xception) "
                    "under the same data, augmentation, seeds and budget rule, then write results.json, "
                    "results.csv, report.md and a self-contained report.html into --out. Started again, it "
                    "keeps finished runs and resumes interrupted ones.")
    p.add_argument("--models", metavar="LIST",
                   help="comma list of models (see `cifarzoo models`); default: the five of the study")
    p.add_argument("--preset", choices=list(PRESETS), default="standard",
                   help="quick: narrow models on the bundled sample, minutes on a CPU; cpu: full CIFAR-10 at "
                        "CPU-sized widths and epochs; standard: full CIFAR-10 "
                        "on a GPU; full: twice as long; seed: the original study's settings (default standard)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="train seeds 0..N-1 of every model (default 1)")
    add_data_argument(p, default_help="the preset's (quick: the bundled sample; others: full CIFAR-10 from "
                                      "$CIFARZOO_DATA or ~/.cache/cifarzoo)")
    add_labels_argument(p)
    p.add_argument("--out", metavar="DIR", default=None, help="study folder (default study/<preset>)")
    p.add_argument("--epochs", type=int, help="override every model's epochs (the same budget for all)")
    p.add_argument("--width-mult", type=float, metavar="W", help="override every model's channel multiplier")
    p.add_argument("--as-written", action="store_true",
                   help="with --preset seed: replay the original study, training its own networks as written "
                        "(as-written-vgg16, -vgg19, -resnet, -xception: bugs, Keras' loss and its /225 vs /255 "
                        "normalization included) beside the correct ones; the report puts the study's printed "
                        "figures, the replay and the correct networks side by side")
    p.add_argument("--allow-stall", action="store_true",
                   help="do not stop a run whose loss stays at ln(C) with chance accuracy (the stall guard); "
                        "with --as-written, the failing networks train on and show their frozen loss")
    p.add_argument("--device", choices=DEVICES, help="default auto")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch's CPU threads per run (default: $OMP_NUM_THREADS if set, which Ray sets to "
                        "--cpus-per-run, else the physical cores)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: the runs on this machine, --jobs at a time (default); ray: every run a Ray "
                        "task, on a local Ray instance or the cluster at --address (needs cifarzoo[ray])")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="with --executor local: runs trained at once, each in a process of its own with an equal "
                        "share of the physical cores (default: quick and cpu presets on a CPU, one per core with "
                        "one thread each; else 1, in this process)")
    p.add_argument("--address", metavar="auto|HOST:PORT",
                   help="with --executor ray: the Ray cluster to use (auto: the one `ray start` runs here or "
                        "RAY_ADDRESS); default: a local Ray instance for this study")
    p.add_argument("--cpus-per-run", type=float, metavar="N",
                   help="with --executor ray: CPUs each run asks for, and its torch threads (default 1)")
    p.add_argument("--gpus-per-run", type=float, metavar="N",
                   help="with --executor ray: GPUs each run asks for (default 1 where the cluster has GPUs, "
                        "else 0; 0.5 puts two runs on a GPU)")
    p.add_argument("--force", action="store_true", help="train every run again, replacing finished ones")
    p.add_argument("--report-only", action="store_true", help="only (re)build the report from the runs in --out")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    add_tracking_arguments(p)
    p.add_argument("--tune-budget", metavar="DURATION",
                   help="tune each model for this long (e.g. 20m) on the validation split with `cifarzoo tune` "
                        "before training it with the best settings found (needs cifarzoo[tune]); the report says "
                        "so. Tunings live in --out/tune/<model> and are kept across invocations")
    p.add_argument("--tune-trials", type=int, default=8, metavar="N",
                   help="with --tune-budget: trials per model at most (default 8)")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.set_defaults(_benchmark_parser=p)
    return p


def _print_table(results_path) -> None:
    import json

    rows = json.loads(open(results_path).read())["models"]
    print(f"{'model':<20} {'status':<11} {'test acc':>16} {'flip TTA':>16} {'train time':>11}")
    for r in rows:
        def pct(m, s):
            if m is None:
                return "-"
            return f"{100 * m:.2f}" + (f" ± {100 * s:.2f}" if s is not None else "") + "%"

        t = r["train_seconds_mean"]
        print(f"{r['model']:<20} {r['status']:<11} {pct(r['test_acc_mean'], r['test_acc_std']):>16} "
              f"{pct(r['test_acc_tta_mean'], r['test_acc_tta_std']):>16} {'-' if t is None else f'{t:.0f}s':>11}")


def _executor(args):
    from cifarzoo.errors import CifarzooError
    from cifarzoo.study.executors import LocalExecutor, RayExecutor

    if args.executor == "ray":
        if args.jobs is not None:
            raise CifarzooError("--jobs: only with --executor local (with ray, --cpus-per-run sizes each run)")
        cpus = 1 if args.cpus_per_run is None else args.cpus_per_run
        return RayExecutor(args.address, cpus_per_run=cpus, gpus_per_run=args.gpus_per_run)
    ray_only = [f for f, v in (("--address", args.address), ("--cpus-per-run", args.cpus_per_run),
                               ("--gpus-per-run", args.gpus_per_run)) if v is not None]
    if ray_only:
        raise CifarzooError(f"{', '.join(ray_only)}: only with --executor ray")
    return None if args.jobs is None else LocalExecutor(args.jobs)


def _tuned(plan, args):
    """``plan`` with each model's settings tuned for ``--tune-budget`` (a tuning already done is kept,
    an interrupted one continues)."""
    from cifarzoo.study.plan import TUNE_DIR, with_tuning
    from cifarzoo.tuning import tune

    executor = dict(executor=args.executor, address=args.address, cpus_per_trial=args.cpus_per_run or 1,
                    gpus_per_trial=args.gpus_per_run or 0)
    for model in plan.models:
        folder = plan.out_dir / TUNE_DIR / model
        if (folder / "best.json").exists():
            continue
        if not args.quiet:
            print(f"tuning {model} for {args.tune_budget} on the validation split ({folder})", file=sys.stderr)
        resume = (folder / "tune.json").exists()
        tune(None if resume else model, out=folder, resume=resume, final=False, **executor,
             **({} if resume else dict(preset=plan.preset, data=plan.data, trials=args.tune_trials,
                                       budget=args.tune_budget, **plan.overrides)))
    return with_tuning(plan)


def run(args) -> int:
    from cifarzoo.cli.common import load_dataset
    from cifarzoo.errors import CifarzooError
    from cifarzoo.study import load_plan, plan_study, run_plan, write_report

    args = with_config_file(args, args._benchmark_parser)
    out = args.out or f"study/{args.preset}"
    if args.report_only:
        plan = load_plan(out)
        dataset = None
        try:
            dataset = load_dataset(plan.data, "benchmark", plan.labels)
        except CifarzooError as exc:
            print(f"cifarzoo benchmark: warning: {exc}; the report leaves out the example images", file=sys.stderr)
        paths = write_report(out, dataset=dataset, plan=plan)
        print(f"report: {paths['report.html']} (also report.md, results.json, results.csv)")
        _print_table(paths["results.json"])
        return 0

    executor = _executor(args)
    from cifarzoo.tracking import tracking_spec

    tracking = tracking_spec(args.log, args.mlflow_uri)  # None without --log; a missing extra is said here
    plan = plan_study(args.models, preset=args.preset, seeds=args.seeds, data=args.data, out_dir=out,
                      epochs=args.epochs, device=args.device, labels=args.labels,
                      threads=args.threads, width_mult=args.width_mult, as_written=args.as_written,
                      allow_stall=True if args.allow_stall else None)
    if args.tune_budget is not None:
        plan = _tuned(plan, args)
    dataset = load_dataset(plan.data, "benchmark", plan.labels)
    reporter = ConsoleStudyReporter(quiet=args.quiet)
    try:
        result = run_plan(plan, force=args.force, reporter=reporter, dataset=dataset, executor=executor,
                          tracking=tracking)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue the study in {out} "
              "(finished runs are kept, the interrupted one resumes)", file=sys.stderr)
        return 130
    _print_table(result.report["results.json"])
    failed = result.failed
    if failed:
        print(f"{len(failed)} run{'s' if len(failed) != 1 else ''} failed: "
              + ", ".join(f"{o.spec.name} ({o.summary.get('kind')})" for o in failed)
              + f"; see {result.report['report.html']}", file=sys.stderr)
    return 0
