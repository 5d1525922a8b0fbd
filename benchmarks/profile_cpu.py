#!/usr/bin/env python
"""Where a model's CPU training step spends its time: torch.profiler over a few of fit's own steps.

    OMP_NUM_THREADS=1 python benchmarks/profile_cpu.py --models inception,resnet50 --threads 1
    OMP_NUM_THREADS=1 python benchmarks/profile_cpu.py --models resnet50 --compile   # also time torch.compile

The step is the trainer's (``build_model`` + ``make_step``, as benchmarks/throughput.py times
it) with the preset's settings (default ``cpu``: bf16 autocast where the CPU has native bf16,
channels_last, the preset's width; ``--batch-size`` overrides the batch). After ``--warmup``
untimed steps, ``--steps`` steps run under the profiler; the table lists the operators with
the most self CPU time and their share of the profiled total, grouped into families (the
convolutions forward and backward, batch norm, element-wise, concatenation and copies, the
optimizer) so the question "many small convolutions, concat copies or BN?" has one answer
per model. ``--compile`` also times the same number of steps eager and compiled (after a
warm-up that includes the compilation, reported on its own).
"""
from __future__ import annotations

import argparse
import sys
import time

import cifarzoo  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP, as the CLI does
import torch

# Operator name fragments -> family, first match wins (names as torch.profiler reports them).
FAMILIES = (
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("mkldnn_convolution", "_convolution", "conv2d", "convolution")),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("copies, casts, concatenation", ("cat", "copy_", "clone", "contiguous", "to_copy", "_to_copy", "empty_like")),
    ("pooling", ("pool",)),
    ("optimizer", ("_foreach", "sgd", "lerp", "addcmul", "add_")),
    ("element-wise (ReLU, add, mul, cast)", ("relu", "threshold", "add", "mul", "div", "sub", "where", "fill_")),
    ("matmul / linear", ("addmm", "mm", "linear")),
)


def family(name: str) -> str:
    n = name.lower()
    for fam, parts in FAMILIES:
        if any(p in n for p in parts):
            return fam
    return "other"


def build(model: str, args, compile_: bool):
    from cifarzoo.device import resolve_precision
    from cifarzoo.train import build_model, make_step
    from cifarzoo.train.config import make_config

    over = {"device": "cpu", "batch_size": args.batch_size, "width_mult": args.width_mult, "precision": args.precision,
            "channels_last": args.channels_last}
    c = make_config(model, preset=args.preset, **{k: v for k, v in over.items() if v is not None})
    c = c.replace(batch_size=c.batch_size or 512)
    device = torch.device("cpu")
    torch.manual_seed(0)
    net = build_model(c, 10, device)
    precision = resolve_precision(c.precision, device)
    step = make_step(net, c, device, total_steps=1000, steps_per_epoch=100, precision=precision, compile=compile_)
    fmt = torch.channels_last if c.channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(1)
    x = torch.randn(c.batch_size, 3, 32, 32, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (c.batch_size,), generator=g)
    step.train()
    return c, precision, (lambda: step(x, y))


def profile(model: str, args) -> None:
    c, precision, run = build(model, args, False)
    for _ in range(args.warmup):
        run()
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            run()
    wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n## {model}, width {c.width_mult:g}, batch {c.batch_size}, {precision}, channels_last "
          f"{c.channels_last}, {torch.get_num_threads()} thread(s): {args.steps} steps in {wall:.2f} s under "
          f"the profiler ({args.steps * c.batch_size / wall:.0f} img/s)", flush=True)
    fams: dict[str, float] = {}
    for e in events:
        fams[family(e.key)] = fams.get(family(e.key), 0.0) + e.self_cpu_time_total
    print("\n| family | share of self CPU time |\n|---|---|")
    for fam, t in sorted(fams.items(), key=lambda kv: -kv[1]):
        print(f"| {fam} | {100 * t / total:.1f}% |")
    print("\n| operator | calls per step | self CPU ms per step | share |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"| {e.key} | {e.count / args.steps:.0f} | {e.self_cpu_time_total / 1e3 / args.steps:.1f} | "
              f"{100 * e.self_cpu_time_total / total:.1f}% |")


def time_compile(model: str, args) -> None:
    """Eager against torch.compile'd steps, the same number each, after their warm-ups (each line
    printed as soon as it is measured, so a run stopped by a time cap keeps what it got)."""
    rates = {}
    for comp in (False, True):
        c, _, run = build(model, args, comp)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            run()
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run()
        rates[comp] = args.steps * c.batch_size / (time.perf_counter() - t0)
        print(f"{model} {'compiled' if comp else 'eager'}: {args.warmup} warm-up steps "
              f"{'(compilation included) ' if comp else ''}{warm:.1f} s, then {rates[comp]:.0f} img/s", flush=True)
    print(f"{model}: compiled / eager {rates[True] / rates[False]:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="inception,resnet50", help="comma list (default inception,resnet50)")
    p.add_argument("--preset", default="cpu", help="preset whose settings the step uses (default cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's, else 512)")
    p.add_argument("--width-mult", type=float, default=None, help="instead of the preset's width")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="instead of the preset's (auto: bf16 where the CPU has native bf16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="instead of the preset's memory format")
    p.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--top", type=int, default=15, help="operators listed (default 15)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as in training)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile against eager")
    args = p.parse_args(argv)
    from cifarzoo.device import resolve_threads

    torch.set_num_threads(resolve_threads(args.threads)[0])
    for m in [m.strip() for m in args.models.split(",") if m.strip()]:
        profile(m, args)
        if args.compile:
            time_compile(m, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
