#!/usr/bin/env python
"""Images per second of each model's training step and inference: plain eager fp32 vs the project's path.

    python benchmarks/throughput.py --device cuda                       # six models + fastnet, full width
    python benchmarks/throughput.py --device cpu --models fastnet,resnet18 --variants all
    python benchmarks/throughput.py --device cpu --json out.json --markdown out.md

The training step is the one ``cifarzoo.train.fit`` runs, built by the trainer's own
``build_model`` and ``make_step``: zero_grad, forward under autocast, the recipe's loss
(label smoothing, Inception's auxiliary heads), backward, the recipe's optimizer step,
the schedule step and the EMA or lookahead update when the recipe has one (fastnet:
lookahead, frozen whitening filters); the loss is stored into a device tensor as fit
does (no host sync). Its input is a fixed batch already on the device, so the data
loader is not timed.

Variants. ``fp32`` is a plain eager fp32 step (on CUDA with PyTorch's defaults, which
let cuDNN use TF32 for convolutions; the JSON records the flags). ``project`` is what
``fit`` uses for that model on that device, resolved from the preset (``standard`` on
CUDA, ``quick`` on CPU) with ``fit``'s own helpers: its precision, channels_last and
``compile="auto"`` decision. Any other variant is written as a ``+``-joined list of
``fp32``/``bf16``/``fp16``, ``cl`` (channels_last) and ``compile``, e.g. ``bf16+cl+compile``.
Inference is timed as ``predict_logits`` runs it: eval mode, inference_mode, the
variant's precision and layout; compiled only in a variant that names ``compile``
explicitly (fit evaluates the uncompiled module, so ``project`` inference is eager).

Fairness under noise: every variant is warmed up first (the first compiled call's
time is reported as compile time), then ``--repeats`` rounds run each variant's
``--steps`` steps in turn, so a burst of load from another process hits all of them
alike; the median round is reported, with every round kept in the JSON.

``--baseline-from EARLIER.json`` takes each model's ``fp32`` record from an earlier
run of this script (same model, width, batch and device) instead of measuring it
again: the GPU script's compiled stage reuses the eager stage's baseline. Those
records say ``reused_from``; their rounds were not interleaved with this run's.

One model's failure (out of memory, a compiler error, any exception) is recorded as
that model's ``status: "failed"`` with its ``reason``, and the next model is measured;
the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cifarzoo  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP, as the CLI does
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_output_options, attempt, comma_list, finish, fmt, markdown_head, save, start_result,
)
from cifarzoo.train.config import DEVICES  # noqa: E402

DEFAULT_MODELS = "vgg16,vgg19,resnet18,resnet50,inception,xception,fastnet"
TRAIN_IMAGES = {"sample": 5000, None: 50000}  # training-set size of a preset's data, for compile="auto"
ALL_CPU_VARIANTS = "fp32,project,cl,bf16,bf16+cl,compile,cl+compile,bf16+cl+compile"


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool
    compile_inference: bool  # fit evaluates the uncompiled module; only explicit variants compile inference


def parse_variant(name: str, project: Variant) -> Variant:
    if name == "project":
        return project
    if name in ("fp32", "eager-fp32"):
        return Variant("fp32", "fp32", False, False, False)
    parts = name.split("+")
    precision, cl, comp = "fp32", False, False
    for p in parts:
        if p in ("fp32", "bf16", "fp16"):
            precision = p
        elif p == "cl":
            cl = True
        elif p == "compile":
            comp = True
        else:
            raise SystemExit(f"throughput.py: unknown variant part {p!r} in {name!r}; "
                             "use fp32|bf16|fp16, cl, compile joined by '+', or 'project'")
    return Variant(name, precision, cl, comp, comp)


def project_variant(config, device: torch.device) -> Variant:
    """The precision / layout / compile that fit() picks for ``config`` on ``device``."""
    from cifarzoo.device import resolve_compile, resolve_precision

    steps = TRAIN_IMAGES.get(config.data, 50000) // config.batch_size * config.epochs
    precision = resolve_precision(config.precision, device)
    comp = resolve_compile(config.compile, device, steps)
    return Variant("project", precision, bool(config.channels_last), comp, False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One model under one variant: its own copy of the model, the trainer's step and a fixed batch."""

    def __init__(self, config, variant: Variant, device: torch.device, infer_batch: int, total_steps: int):
        from cifarzoo.train import build_model, make_step

        torch.manual_seed(0)
        c = config.replace(channels_last=variant.channels_last)
        self.config, self.variant, self.device = c, variant, device
        # The trainer's own model and step: whitened stem frozen (fastnet), optimizer with its
        # parameter groups, lr schedule, fp16 scaler, EMA, lookahead. The whitening filters
        # are not fitted to data here (that costs time once per run, not per step).
        model = build_model(c, 10, device)
        self.model = model
        self.parameters = sum(p.numel() for p in model.parameters())
        # The schedule spans every step this benchmark takes (warm-up + rounds), so
        # lookahead and the lr stay within their trained range.
        self.step = make_step(model, c, device, total_steps=total_steps, steps_per_epoch=max(1, total_steps // 10),
                              precision=variant.precision, compile=variant.compile)
        self.infer_model = torch.compile(model) if variant.compile_inference else model
        fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(c.batch_size, 3, 32, 32, generator=g).to(device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (c.batch_size,), generator=g).to(device)
        self.xi = torch.randn(infer_batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=fmt)
        self.losses = torch.zeros(4096, device=device)
        self.i = 0

    def train_steps(self, n: int) -> None:
        self.step.train()
        for _ in range(n):
            loss, _ = self.step(self.x, self.y)
            self.losses[self.i % len(self.losses)] = loss  # stored on the device, as fit does
            self.i += 1

    def infer_steps(self, n: int) -> None:
        from cifarzoo.device import autocast_context

        self.infer_model.eval()
        with torch.inference_mode(), autocast_context(self.device, self.variant.precision):
            for _ in range(n):
                self.infer_model(self.xi)

    def timed(self, fn, n: int) -> float:
        """Wall seconds of ``fn(n)``; also keeps this process's CPU seconds in ``self.cpu_seconds``."""
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn(n)
        _sync(self.device)
        self.cpu_seconds = time.process_time() - c0
        return time.perf_counter() - t0


def _warmed_up(config, v: Variant, device, args) -> tuple[Bench, dict]:
    """A Bench of ``v``, warmed up, and its record. The first call of a compiled module compiles it
    (forward and backward): its time minus one steady step is reported as compile time."""
    b = Bench(config, v, device, args.inference_batch_size, 1 + max(1, args.warmup) + args.repeats * args.steps)
    r = {"precision": v.precision, "channels_last": v.channels_last, "compile": v.compile,
         "compile_inference": v.compile_inference, "train_rounds": [], "infer_rounds": []}
    first = b.timed(b.train_steps, 1)
    steady = b.timed(b.train_steps, max(1, args.warmup))
    r["first_train_step_seconds"] = first
    if v.compile:
        r["compile_seconds_train"] = max(0.0, first - steady / max(1, args.warmup))
    if not args.no_inference:
        first = b.timed(b.infer_steps, 1)
        steady = b.timed(b.infer_steps, max(1, args.warmup))
        if v.compile_inference:
            r["compile_seconds_inference"] = max(0.0, first - steady / max(1, args.warmup))
    return b, r


def bench_model(config, variants: list[Variant], device, args, baseline: dict | None = None) -> dict:
    """Every variant of one model; ``baseline``: an earlier run's fp32 record of it, used as this run's."""
    rec: dict = {"model": config.model, "width_mult": config.width_mult, "batch_size": config.batch_size,
                 "inference_batch_size": args.inference_batch_size, "variants": {}}
    if baseline is not None:
        rec["variants"]["fp32"] = baseline
        variants = [v for v in variants if v.name != "fp32"]
    benches = {}
    for v in variants:
        benches[v.name], rec["variants"][v.name] = _warmed_up(config, v, device, args)
        rec["parameters"] = benches[v.name].parameters
    for _ in range(args.repeats):  # interleaved rounds: load bursts hit every variant alike
        for v in variants:
            b, r = benches[v.name], rec["variants"][v.name]
            n = args.steps * config.batch_size
            r["train_rounds"].append(n / b.timed(b.train_steps, args.steps))
            if device.type == "cpu":
                r.setdefault("train_cpu_rounds", []).append(n / max(b.cpu_seconds, 1e-9))
            if not args.no_inference:
                n = args.steps * args.inference_batch_size
                r["infer_rounds"].append(n / b.timed(b.infer_steps, args.steps))
                if device.type == "cpu":
                    r.setdefault("infer_cpu_rounds", []).append(n / max(b.cpu_seconds, 1e-9))
    for name in benches:
        r = rec["variants"][name]
        r["train_images_per_second"] = statistics.median(r["train_rounds"])
        r["infer_images_per_second"] = statistics.median(r["infer_rounds"]) if r["infer_rounds"] else None
        if device.type == "cpu":
            # Images per CPU-second of this process: on a shared machine, less sensitive to
            # other processes than wall time (exact with --threads 1).
            r["train_images_per_cpu_second"] = statistics.median(r["train_cpu_rounds"])
            if r.get("infer_cpu_rounds"):
                r["infer_images_per_cpu_second"] = statistics.median(r["infer_cpu_rounds"])
    base = rec["variants"].get("fp32")
    if base:
        for r in rec["variants"].values():
            for key in ("train", "infer"):
                for unit in ("second", "cpu_second"):
                    a, b0 = r.get(f"{key}_images_per_{unit}"), base.get(f"{key}_images_per_{unit}")
                    if a and b0:
                        r[f"{key}_ratio" + ("_cpu" if unit == "cpu_second" else "")] = a / b0
    del benches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def markdown(result: dict) -> str:
    m = result["machine"]
    cpu = m["device"] == "cpu"
    num = lambda v, f=",.0f": fmt(v, f)  # noqa: E731
    bf16 = f", native bf16: {m.get('cpu_bf16') or 'none'}" if cpu else ""
    lines = [*markdown_head("Throughput", result, device_note=bf16),
             "| model | width | batch | variant | precision | channels_last | compile | train img/s | ×fp32 "
             + ("| train img/CPU-s | ×fp32 " if cpu else "") + "| infer img/s | ×fp32 | compile s |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if cpu else "") + "---|---|---|"]
    for rec in result["models"]:
        if rec["status"] != "finished":
            lines.append(f"| {rec['model']} | | | failed: {rec['reason']} |" + " |" * (8 + 2 * cpu))
            continue
        for name, r in rec["variants"].items():
            lines.append(
                f"| {rec['model']} | {rec['width_mult']:g} | {rec['batch_size']} "
                f"| {name}{' (earlier run)' if r.get('reused_from') else ''} | {r['precision']} "
                f"| {'yes' if r['channels_last'] else 'no'} | {'yes' if r['compile'] else 'no'} "
                f"| {num(r['train_images_per_second'])} | {num(r.get('train_ratio'), '.2f')} "
                + (f"| {num(r.get('train_images_per_cpu_second'))} | {num(r.get('train_ratio_cpu'), '.2f')} "
                   if cpu else "")
                + f"| {num(r['infer_images_per_second'])} | {num(r.get('infer_ratio'), '.2f')} "
                f"| {num(r.get('compile_seconds_train'), '.1f')} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list (default {DEFAULT_MODELS})")
    p.add_argument("--width-mult", type=float, default=None,
                   help="channel multiplier (default: the preset's: 1.0 on CUDA, the quick preset's on CPU)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch (default: the preset's: each recipe's on CUDA, quick's 128 on CPU)")
    p.add_argument("--inference-batch-size", type=int, default=None,
                   help="inference batch (default 1024 on CUDA, 256 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 20 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (default 5 CUDA, 2 CPU)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per variant (default 3)")
    p.add_argument("--variants", default="fp32,project",
                   help="comma list: fp32, project, or '+'-joined fp32|bf16|fp16, cl, compile; "
                        f"'all' = {ALL_CPU_VARIANTS} (default fp32,project)")
    p.add_argument("--preset", default=None, help="preset the project path comes from (default standard on "
                                                  "CUDA, quick on CPU)")
    p.add_argument("--no-inference", action="store_true", help="time the training step only")
    p.add_argument("--baseline-from", metavar="JSON",
                   help="take each model's fp32 record from this earlier JSON of this script (same model, width, "
                        "batch, device kind) instead of measuring it again; models it lacks are measured")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on CPU (default as in training: $OMP_NUM_THREADS, else the physical cores)")
    add_output_options(p, "model")
    return p.parse_args(argv)


def model_config(name: str, preset: str, device: torch.device, args):
    """The config the preset gives ``name`` on ``device``, with --width-mult / --batch-size on top."""
    from cifarzoo.train.config import make_config
    from cifarzoo.train.loop import auto_batch_size

    over = {"device": device.type}
    if args.width_mult is not None:
        over["width_mult"] = args.width_mult
    if args.batch_size is not None:
        over["batch_size"] = args.batch_size
    config = make_config(name, preset=preset, **over)
    if config.batch_size is None:  # fit's own choice for the preset's training set
        config = config.replace(batch_size=auto_batch_size(TRAIN_IMAGES.get(config.data, 50000)))
    return config


def earlier_baselines(path: str | None, device: torch.device) -> dict:
    """(model, width, batch) -> the fp32 record of an earlier run's JSON on the same kind of device."""
    if not path or not Path(path).is_file():
        return {}
    earlier = json.loads(Path(path).read_text())
    if earlier.get("machine", {}).get("device") != device.type:
        return {}
    return {(m["model"], m["width_mult"], m["batch_size"]): {**m["variants"]["fp32"], "reused_from": str(path)}
            for m in earlier.get("models", []) if "fp32" in m.get("variants", {})}


def measure(name: str, preset: str, names: list[str], device: torch.device, args, baselines: dict) -> dict:
    config = model_config(name, preset, device, args)
    project = project_variant(config, device)
    variants = list({v.name: v for v in (parse_variant(n, project) for n in names)}.values())
    t0 = time.perf_counter()
    rec = bench_model(config, variants, device, args,
                      baselines.get((config.model, config.width_mult, config.batch_size)))
    rec["seconds"] = time.perf_counter() - t0
    rec["status"] = "finished"
    return rec


def main(argv=None) -> int:
    args = parse_args(argv)
    from cifarzoo.device import resolve_device

    device = resolve_device(args.device)
    if device.type == "cpu":  # as fit does: --threads, else $OMP_NUM_THREADS, else the physical cores
        from cifarzoo.device import resolve_threads

        torch.set_num_threads(resolve_threads(args.threads)[0])
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    preset = args.preset or ("standard" if gpu else "quick")
    args.steps = args.steps or (20 if gpu else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    args.inference_batch_size = args.inference_batch_size or (1024 if gpu else 256)
    names = comma_list(ALL_CPU_VARIANTS if args.variants == "all" else args.variants)
    if "fp32" not in names:
        names.insert(0, "fp32")  # the baseline every ratio is against
    baselines = earlier_baselines(args.baseline_from, device)

    result = {**start_result("throughput", device, argv), "preset": preset, "steps": args.steps,
              "warmup": args.warmup, "repeats": args.repeats, "models": []}
    for name in comma_list(args.models):
        rec = {"model": name, **attempt(measure, device, name, preset, names, device, args, baselines)}
        if rec["status"] != "finished":
            print(f"{name:<10} failed: {rec['reason']}", flush=True)
        else:
            pr = rec["variants"].get("project", {})
            print(f"{rec['model']:<10} width {rec['width_mult']:<5g} batch {rec['batch_size']:<5} "
                  + "  ".join(f"{k}: {v['train_images_per_second']:,.0f} img/s" for k, v in rec["variants"].items())
                  + (f"  project/fp32 train x{pr['train_ratio']:.2f}" if "train_ratio" in pr else ""), flush=True)
        result["models"].append(rec)
        save(args, result, markdown)
    return finish(result, "models", markdown)


if __name__ == "__main__":
    sys.exit(main())
