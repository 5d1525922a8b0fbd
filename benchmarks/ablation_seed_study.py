#!/usr/bin/env python
"""Each bug's share in the original study's failure: its VGG16 and ResNet as written, one fix at a time, all fixes.

    python benchmarks/ablation_seed_study.py                               # the RESULTS.md table (CPU, ~20 min)
    python benchmarks/ablation_seed_study.py --models resnet --seeds 1 --epochs 1 --subset 320   # a smoke run

Every variant trains through ``cifarzoo.train.fit`` under the seed preset's settings (Adam
lr 1e-3, batch 32, constant lr, no augmentation, no label smoothing or weight decay) on
the bundled sample, with the same short budget (``--subset`` training images, ``--epochs``)
and ``allow_stall`` (the failing variants run the whole budget too), in fp32 as Keras
trained, BN's running averages at PyTorch's default momentum (BN_MOMENTUM). "as written" is the network of
``models/as_written.py`` with the study's
/225-train, /255-test normalization; each other row changes one thing; "all fixes" changes
them all. Reported: final-epoch test accuracy on the sample's 1,000 test images per seed,
their mean and sample std, and the last epoch's mean training loss (in the variant's own
loss: Keras' probability loss where the outputs are not logits).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import cifarzoo  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP, as the CLI does

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, write_json  # noqa: E402

# (label, builder kwargs, TrainConfig overrides) per variant; the first is the network as written.
AS_WRITTEN = ("as written", {}, {})
SAME_NORMALIZATION = ("same normalization for train and test (/255)", {}, {"normalize": "unit"})
VARIANTS = {
    "vgg16": ("as_written_vgg16", [
        AS_WRITTEN,
        ("ReLU'd 10-unit layer removed", {"relu_head": False}, {}),
        ("batch normalization added", {"batch_norm": True}, {}),
        SAME_NORMALIZATION,
        ("softmax/loss pairing made right (logits, cross-entropy)", {"softmax": False}, {}),
        ("all fixes", {"relu_head": False, "batch_norm": True, "softmax": False}, {"normalize": "unit"}),
    ]),
    "resnet": ("as_written_resnet", [
        AS_WRITTEN,
        ("one BN per convolution (not one shared)", {"shared_bn": False}, {}),
        SAME_NORMALIZATION,
        ("softmax/loss pairing made right (logits, cross-entropy)", {"softmax": None}, {}),
        ("shortcut added", {"add_shortcut": True}, {}),
        ("ImageNet strides replaced (32 -> 16 -> 8 -> 4)", {"imagenet_strides": False}, {}),
        ("all fixes", {"shared_bn": False, "softmax": None, "add_shortcut": True, "imagenet_strides": False},
         {"normalize": "unit"}),
    ]),
}
# BN's running averages at PyTorch's default 0.1 per batch in every variant, not Keras' 0.01: with
# Keras' they reach 99% of the data's statistics only after ~460 steps, so a budget of a few hundred
# steps would be judged on running averages that lag (over the study's 78,000 steps it cannot matter).
BN_MOMENTUM = 0.1
WIDTHS = {"vgg16": 0.25, "resnet": 0.125}  # ~21M and ~17M multiply-adds per image (fixed strides)


def train_variant(model: str, kwargs: dict, overrides: dict, *, width: float, seed: int, subset: int,
                  epochs: int, threads: int | None, dataset, out: Path) -> dict:
    """One fit of one variant: its test accuracy and last-epoch training loss."""
    from cifarzoo.train import fit, make_config

    config = make_config(model, preset="seed", width_mult=width, seed=seed, subset=subset, epochs=epochs,
                         data="sample", device="cpu", precision="fp32", threads=threads, allow_stall=True,
                         eval_every=0, checkpoint_every=0, **{"normalize": "study", **overrides})
    config = config.replace(model_kwargs={"bn_momentum": BN_MOMENTUM, **kwargs})
    result = fit(config, dataset=dataset, out_dir=out)
    return {"seed": seed, "test_acc": result.summary["test_acc"], "train_loss": result.metrics[-1]["train_loss"],
            "train_seconds": result.summary["train_seconds"]}


def run(names: list[str], *, seeds: int, subset: int, epochs: int, threads: int | None,
        variants: set[int] | None = None) -> dict:
    from cifarzoo.data import load

    dataset = load("sample")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model, chosen = VARIANTS[name]
            rows = []
            for index, (label, kwargs, overrides) in enumerate(chosen):
                if variants is not None and index not in variants:
                    continue
                runs = [train_variant(model, kwargs, overrides, width=WIDTHS[name], seed=s, subset=subset,
                                      epochs=epochs, threads=threads, dataset=dataset,
                                      out=Path(tmp) / f"{name}-{index}-s{s}") for s in range(seeds)]
                accs = [r["test_acc"] for r in runs]
                rows.append({"variant": label, "kwargs": kwargs, "overrides": overrides, "runs": runs,
                             "test_acc_mean": statistics.fmean(accs),
                             "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                             "train_loss_mean": statistics.fmean(r["train_loss"] for r in runs)})
                print(f"{name:<7} {label:<58} " + " ".join(f"{100 * a:5.1f}" for a in accs)
                      + f"  loss {rows[-1]['train_loss_mean']:.4f}", file=sys.stderr, flush=True)
            results[name] = {"model": model, "width_mult": WIDTHS[name], "rows": rows}
    return results


def markdown(results: dict, seeds: int) -> str:
    lines = []
    for name, r in results.items():
        lines += [f"**{name}** (`{r['model']}`, width {r['width_mult']:g})", "",
                  "| variant | test acc per seed | mean ± std | last-epoch train loss (mean) |",
                  "|---|---|---|---|"]
        for row in r["rows"]:
            per = ", ".join(f"{100 * x['test_acc']:.1f}" for x in row["runs"])
            std = f" ± {100 * row['test_acc_std']:.1f}" if row["test_acc_std"] is not None else ""
            lines.append(f"| {row['variant']} | {per} | {100 * row['test_acc_mean']:.1f}{std}% | "
                         f"{row['train_loss_mean']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vgg16,resnet", help="comma list of vgg16, resnet (default both)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every variant (default 3)")
    p.add_argument("--subset", type=int, default=2000, help="training images of the sample, class-balanced "
                                                             "(default 2000)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of every variant (default 4)")
    p.add_argument("--threads", type=int, help="torch's CPU threads (default: the physical cores)")
    p.add_argument("--variants", help="comma list of variant numbers to train (0: as written, in the order of "
                                      "VARIANTS; default all)")
    p.add_argument("--json", type=Path, help="write the results and the machine here")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names or args.seeds < 1:
        p.error(f"--models: choose from {', '.join(VARIANTS)}; --seeds >= 1")
    import torch

    variants = None if args.variants is None else {int(v) for v in args.variants.split(",") if v.strip()}
    results = run(names, seeds=args.seeds, subset=args.subset, epochs=args.epochs, threads=args.threads,
                  variants=variants)
    table = markdown(results, args.seeds)
    print(table)
    if args.json:
        write_json(args.json, {**header(torch.device("cpu")), "subset": args.subset, "epochs": args.epochs,
                               "seeds": args.seeds, "results": results, "markdown": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
