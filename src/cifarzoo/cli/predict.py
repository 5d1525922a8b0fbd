"""`cifarzoo predict RUN_OR_CHECKPOINT_OR_ONNX IMAGE... [--top-k 3] [--json]`."""
from __future__ import annotations

import argparse
from cifarzoo.io import json_text
import sys

from cifarzoo.train.config import DEVICES


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify image files with a trained model",
                       description="Classify any image Pillow reads (converted to RGB, resized to 32x32) with a "
                                   "run folder, checkpoint.pt or exported .onnx file. Exit status 1 if any image "
                                   "could not be read.")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint.pt, or model.onnx")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--json", action="store_true")
    return p


def run(args) -> int:
    from cifarzoo.predict import predict_files
    from cifarzoo.progress import printable

    results = predict_files(args.model, args.images, top_k=args.top_k, device=args.device)
    if args.json:
        print(json_text([r.to_dict() for r in results]))
    else:
        for r in results:
            if r.ok:
                print(f"{printable(r.path)}: " + ", ".join(f"{printable(c)} {100 * p:.1f}%" for c, p in r.top))
    for r in results:
        if not r.ok:
            print(f"cifarzoo predict: error: {r.error}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1
