"""`cifarzoo evaluate RUN_OR_CHECKPOINT [--data] [--tta]`."""
from __future__ import annotations

import argparse
import json

from cifarzoo.cli.common import add_data_argument
from cifarzoo.train.config import DEVICES


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a trained model",
                       description="Evaluate a run folder or checkpoint on the test split. Writes confusion.json "
                                   "and confusion.png into the run folder (or --out DIR).")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    add_data_argument(p, default_help="the data source the run was trained on")
    p.add_argument("--tta", action="store_true", help="average each image with its horizontal mirror")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", metavar="DIR", help="folder for confusion.json and confusion.png (default: the run "
                                                "folder, e.g. when that is read-only)")
    return p


def run(args) -> int:
    from cifarzoo.evaluate import evaluate, format_confusion

    r = evaluate(args.run, data=args.data, tta=args.tta, device=args.device, out_dir=args.out)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    print(f"{r.checkpoint} on {r.data_source} ({len(r.labels):,} test images{', flip TTA' if r.tta else ''})")
    print(f"test accuracy {100 * r.accuracy:.2f}%   test loss {r.loss:.4f}\n")
    print("per-class accuracy:")
    for name, a in zip(r.classes, r.per_class_accuracy):
        print(f"  {name:<12} {100 * a:6.2f}%")
    print("\nconfusion matrix (rows true, columns predicted):")
    print(format_confusion(r.confusion, r.classes))
    return 0
