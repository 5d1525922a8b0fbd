"""``cifarzoo data info|show``: look at a dataset source before training on it."""
from __future__ import annotations

import argparse
from cifarzoo.io import json_text
from pathlib import Path

import numpy as np

from cifarzoo.cli.common import add_data_argument, add_labels_argument, load_dataset


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data",
        help="inspect a dataset: sizes, classes, statistics, example images",
        description="Inspect the dataset that --data selects (the same flag train and evaluate take).",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    info = actions.add_parser(
        "info", help="source, split sizes, per-class counts, per-channel mean/std",
        description="Print the source, split sizes, per-class counts and the per-channel mean/std "
                    "of the training images (in [0, 255] units; the normalization every command uses).")
    add_data_argument(info)
    add_labels_argument(info)
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    show = actions.add_parser(
        "show", help="draw a grid of example images, one row per class",
        description="Draw a grid of example images, one row per class, labelled with the class name.")
    add_data_argument(show)
    add_labels_argument(show)
    show.add_argument("--out", required=True, type=Path, metavar="FILE",
                      help="image to write (.png; .pdf and .svg also work)")
    show.add_argument("--per-class", type=int, default=10, metavar="N", help="images per class (default 10)")
    show.add_argument("--split", choices=("train", "test"), default="train", help="which split (default train)")
    show.add_argument("--classes", type=int, default=20, metavar="N",
                      help="at most N rows; with more classes (CIFAR-100), a random N of them (default 20)")
    show.add_argument("--seed", type=int, default=0, help="which images (and classes) are picked (default 0)")
    return parser


def summarize(dataset) -> dict:
    """Everything ``data info`` reports, as plain JSON-able values."""
    def counts(labels):
        return dict(zip(dataset.classes, np.bincount(labels, minlength=dataset.num_classes).tolist()))

    return {
        "source": dataset.source,
        "image_shape": list(dataset.train_images.shape[1:]),
        "classes": list(dataset.classes),
        "labelling": dataset.labelling,  # CIFAR-100: "fine" or "coarse"; None for one set of labels
        "train_size": int(len(dataset.train_labels)),
        "test_size": int(len(dataset.test_labels)),
        "train_counts": counts(dataset.train_labels),
        "test_counts": counts(dataset.test_labels),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
    }


def _format_info(s: dict) -> str:
    from cifarzoo.progress import printable

    width = max(len("class"), *(len(printable(c)) for c in s["classes"]))
    lines = [
        f"source   {printable(s['source'])}",
        f"images   {s['train_size']:,} train, {s['test_size']:,} test, "
        f"{'x'.join(map(str, s['image_shape']))} uint8, {len(s['classes'])} classes"
        + (f" ({s['labelling']} labels)" if s["labelling"] else ""),
        "",
        f"  {'class':<{width}}  {'train':>7}  {'test':>7}",
    ]
    for c in s["classes"]:
        lines.append(f"  {printable(c):<{width}}  {s['train_counts'][c]:>7,}  {s['test_counts'][c]:>7,}")
    lines += [
        "",
        "per-channel statistics of the training images, [0, 255] units:",
        "         R        G        B",
        "mean " + " ".join(f"{v:8.3f}" for v in s["mean"]),
        "std  " + " ".join(f"{v:8.3f}" for v in s["std"]),
    ]
    return "\n".join(lines)


def run(args) -> int:
    dataset = load_dataset(args.data, "data", args.labels)
    if args.data_command == "info":
        summary = summarize(dataset)
        print(json_text(summary) if args.json else _format_info(summary))
        return 0
    from cifarzoo.data.show import draw_class_grid

    path = draw_class_grid(dataset, args.out, per_class=args.per_class, seed=args.seed, split=args.split,
                           max_classes=args.classes)
    print(f"wrote {path}")
    return 0
