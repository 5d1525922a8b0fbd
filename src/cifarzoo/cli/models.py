"""``cifarzoo models [NAME]``: the zoo at a glance, or one network layer by layer."""
from __future__ import annotations

import argparse
from cifarzoo.io import json_text


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        help="list the models (parameters, MACs, paper) or show one layer by layer",
        description="Without NAME: one row per model with its parameters (at 10 classes), the "
                    "multiply-accumulates of one 32x32 image and the paper it follows. With NAME: "
                    "that network layer by layer, with each output shape and parameter count.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="a model name or alias (e.g. resnet18, googlenet)")
    parser.add_argument("--width-mult", type=float, default=1.0, metavar="W",
                        help="channel multiplier, every width rounded to a multiple of 8 (default 1.0 = paper width)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--all", action="store_true",
                        help="also list the original study's networks as written, bugs included (as-written-*)")
    parser.add_argument("--depth", type=int, default=3, metavar="N",
                        help="with NAME: nesting depth of the layer table (default 3 shows the blocks)")
    return parser


def _format_table(rows: list[dict], width_mult: float) -> str:
    names = [r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "") for r in rows]
    params = [f"{r['params']:,}" for r in rows]
    macs = [f"{r['macs'] / 1e6:,.1f}M" for r in rows]
    cols = [("model", names), ("parameters", params), ("MACs/image", macs)]
    widths = [max(len(h), *(len(v) for v in vals)) for h, vals in cols]
    header = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((h, _), w) in enumerate(zip(cols, widths)))
    lines = [f"{len(rows)} models at width {width_mult:g}, 10 classes, one 3x32x32 image:",
             header + "  paper", "-" * (len(header) + 7)]
    for i, r in enumerate(rows):
        cells = [names[i].ljust(widths[0]), params[i].rjust(widths[1]), macs[i].rjust(widths[2])]
        lines.append("  ".join(cells) + "  " + r["paper"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from cifarzoo.errors import CifarzooError
    from cifarzoo.models import create, get_entry
    from cifarzoo.models.summary import count_macs, count_parameters, layer_summary, model_table

    if not 0 < args.width_mult <= 8:
        raise CifarzooError(f"--width-mult must be in (0, 8], got {args.width_mult}")
    if args.name is None:
        rows = model_table(width_mult=args.width_mult, as_written=args.all)
        if args.json:
            print(json_text({"width_mult": args.width_mult, "num_classes": 10,
                             "input_size": [1, 3, 32, 32], "models": rows}))
        else:
            print(_format_table(rows, args.width_mult))
        return 0

    entry = get_entry(args.name)  # unknown names raise, listing the known ones
    if args.json:
        model = create(entry.name, width_mult=args.width_mult)
        print(json_text({"name": entry.name, "aliases": list(entry.aliases), "paper": entry.paper,
                         "width_mult": args.width_mult, "params": count_parameters(model),
                         "macs": count_macs(model)}))
        return 0
    print(f"{entry.name} (width {args.width_mult:g}): {entry.paper}")
    print(layer_summary(entry.name, args.width_mult, depth=args.depth))
    return 0
