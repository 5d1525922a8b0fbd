"""`cifarzoo evaluate RUN_OR_CHECKPOINT [--data] [--tta]`."""
from __future__ import annotations

import argparse
from cifarzoo.io import json_text

from cifarzoo.cli.common import add_data_argument, add_labels_argument
from cifarzoo.train.config import DEVICES


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a trained model",
                       description="Evaluate a run folder or checkpoint on the test split. Writes confusion.json "
                                   "and confusion.png into the run folder (or --out DIR).")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    add_data_argument(p, default_help="the data source the run was trained on")
    add_labels_argument(p, default_help="the labels the run was trained on")
    p.add_argument("--tta", action="store_true", help="average each image with its horizontal mirror")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", metavar="DIR", help="folder for confusion.json and confusion.png (default: the run "
                                                "folder, e.g. when that is read-only)")
    return p


def run(args) -> int:
    from cifarzoo.evaluate import (evaluate, format_confusion, format_per_class, format_top_confusions,
                                   many_classes, top_confusions)

    r = evaluate(args.run, data=args.data, labels=args.labels, tta=args.tta, device=args.device, out_dir=args.out)
    if args.json:
        print(json_text(r.to_dict()))
        return 0
    print(f"{r.checkpoint} on {r.data_source} ({len(r.labels):,} test images{', flip TTA' if r.tta else ''})")
    print(f"test accuracy {100 * r.accuracy:.2f}%   test loss {r.loss:.4f}\n")
    if many_classes(r.classes):
        print(f"per-class accuracy, worst first ({len(r.classes)} classes):")
        print(format_per_class(r.classes, r.per_class_accuracy))
        top = top_confusions(r.confusion, r.classes)
        print(f"\ntop {len(top)} confusions (true -> predicted, count, share of the true class; "
              "the whole matrix: --json or confusion.json):")
        print(format_top_confusions(top))
        return 0
    print("per-class accuracy:")
    print(format_per_class(r.classes, r.per_class_accuracy))
    print("\nconfusion matrix (rows true, columns predicted):")
    print(format_confusion(r.confusion, r.classes))
    return 0
