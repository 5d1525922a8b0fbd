"""`cifarzoo doctor MODEL`: pre-flight checks before a long training."""
from __future__ import annotations

import argparse

from cifarzoo.cli.common import add_data_argument, add_labels_argument
from cifarzoo.train.config import NORMALIZATIONS


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("doctor", help="check data, model and learning rate before a long training",
                       description="Checks that train and test share one normalization, labels are balanced, "
                                   "the model outputs logits, has no ReLU'd narrow layer before its output, "
                                   "no 3x3 convolution on a 1x1 feature map and no residual block that ignores "
                                   "its shortcut, can overfit one batch, and runs a short learning-rate range "
                                   "test. Exit status 1 if a check fails.")
    p.add_argument("model")
    add_data_argument(p)
    add_labels_argument(p)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overfit-steps", type=int, default=300)
    p.add_argument("--normalize", choices=NORMALIZATIONS,
                   help="how train and test images become inputs (default: the model's recipe: mean-std; the "
                        "original study's networks as written: study, train /225 and test /255)")
    return p


def run(args) -> int:
    from cifarzoo.cli.common import load_dataset
    from cifarzoo.doctor import run_doctor

    ds = load_dataset(args.data, "doctor", args.labels)
    report = run_doctor(args.model, ds, width_mult=args.width_mult, seed=args.seed,
                        overfit_steps=args.overfit_steps, normalize=args.normalize)
    print(f"cifarzoo doctor: {report.model} (width {args.width_mult}) on {ds.source}")
    for c in report.checks:
        print(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.finding}")
    print("all checks passed" if report.ok else "some checks failed: fix these before a long training")
    return 0 if report.ok else 1
