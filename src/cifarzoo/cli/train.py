"""`cifarzoo train MODEL [options]`: one model, one run folder."""
from __future__ import annotations

import argparse
import sys

from cifarzoo.cli.common import add_config_options, add_data_argument, config_overrides
from cifarzoo.train.config import PRESETS


class ConsoleReporter:
    """A progress bar per epoch (only on a TTY) and one Keras-style line per epoch."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.bar = None
        self.epochs = 0
        self.steps = 1
        self.eval_name = "test"

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def on_start(self, info: dict) -> None:
        c = info["config"]
        self.epochs = c["epochs"]
        self.eval_name = info["data"]["eval_split"]
        d = info["data"]
        self._print(
            f"{c['model']} (width {c['width_mult']}, {info['parameters']:,} parameters) on {info['device_name']}, "
            f"{info['precision']}{', compiled' if info['compiled'] else ''}; data: {d['source']} "
            f"({d['train_images']:,} train / {d['eval_images']:,} {d['eval_split']}); run folder: {info['run_dir']}")

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self.steps = steps
        if self.quiet or not self.stream.isatty():
            return
        from tqdm import tqdm

        self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", leave=False, file=self.stream,
                        dynamic_ncols=True)

    def on_step(self, epoch: int, step: int, steps: int, global_step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def on_epoch_end(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._print(
            f"epoch {row['epoch']:>3}/{self.epochs} - {row['epoch_seconds']:.1f}s "
            f"- {1000 * row['epoch_seconds'] / max(1, self.steps):.0f}ms/step "
            f"- {row['images_per_second']:,.0f} img/s - lr {row['lr']:.2e} "
            f"- loss {row['train_loss']:.4f} - acc {100 * row['train_acc']:.2f}% "
            f"- {self.eval_name}_loss {row['eval_loss']:.4f} - {self.eval_name}_acc {100 * row['eval_acc']:.2f}%"
        )

    def on_end(self, summary: dict) -> None:
        self._print(
            f"test accuracy {100 * summary['test_acc']:.2f}% (flip TTA {100 * summary['test_acc_tta']:.2f}%), "
            f"test loss {summary['test_loss']:.4f}; trained {summary['train_seconds']:.1f}s at "
            f"{summary['images_per_second']:,.0f} img/s")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train one model and write a run folder",
        description="Train one model. Unset options come from the model's recipe (see cifarzoo/train/config.py).")
    p.add_argument("model", nargs="?", help="model name (see `cifarzoo models`); omit with --resume")
    add_data_argument(p)
    p.add_argument("--preset", choices=list(PRESETS), help="start from a study preset's settings for this model")
    add_config_options(p)
    p.add_argument("--out", help="run folder (default runs/<model>-<time>)")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    p.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="data-parallel training on N local processes (one per GPU; gloo on CPU): runs this "
                        "command under `torchrun --standalone --nproc-per-node N`; --batch-size is the global batch")
    p.set_defaults(_train_parser=p)
    return p


def config_from_args(args) -> "TrainConfig":  # noqa: F821
    from cifarzoo.train import make_config

    return make_config(args.model, preset=args.preset, **config_overrides(args))


def run(args) -> int:
    from cifarzoo.train import distributed

    if args.nproc_per_node is not None and not distributed.launched_by_torchrun():
        return _launch(args)
    if args.nproc_per_node is not None:
        from cifarzoo.errors import CifarzooError

        raise CifarzooError("--nproc-per-node: this process was already started by torchrun; drop the option")
    with distributed.process_group():
        return _run(args)


def _launch(args) -> int:
    """Check what can be checked here, then start the same command on N ranks under torchrun."""
    from cifarzoo.errors import CifarzooError
    from cifarzoo.train import distributed
    from cifarzoo.train import launch

    if args.resume and args.model:
        raise CifarzooError("give either MODEL or --resume DIR, not both (a resumed run keeps its settings)")
    if not (args.resume or args.model):
        raise CifarzooError("missing MODEL (see `cifarzoo models`), or --resume DIR")
    if args.resume:
        from cifarzoo.train.checkpoint import load_checkpoint
        from cifarzoo.train.config import TrainConfig

        config = TrainConfig.from_dict(load_checkpoint(args.resume)["config"])
    else:
        config = config_from_args(args)
    device_type = launch.check_nproc(args.nproc_per_node, config.device)
    if args.nproc_per_node == 1:
        with distributed.process_group():
            return _run(args)
    distributed.check_world(config.batch_size, args.nproc_per_node, sync_bn=config.sync_bn, device_type=device_type)
    argv = ["train", *launch.unparse_args(args._train_parser, args, drop=("nproc_per_node",))]
    return launch.launch(argv, args.nproc_per_node)


def _run(args) -> int:
    from cifarzoo.errors import CifarzooError
    from cifarzoo.train import fit
    from cifarzoo.train.distributed import broadcast_object, current

    is_main = current().is_main
    reporter = ConsoleReporter(quiet=args.quiet or not is_main)
    if args.resume:
        if args.model:
            raise CifarzooError("give either MODEL or --resume DIR, not both (a resumed run keeps its settings)")
        out_dir = args.resume
        try:
            result = fit(resume=args.resume, reporter=reporter)
        except KeyboardInterrupt:
            if is_main:
                print(f"interrupted; a resumable checkpoint is in {out_dir}: cifarzoo train --resume {out_dir}",
                      file=sys.stderr)
            return 130
    else:
        if not args.model:
            raise CifarzooError("missing MODEL (see `cifarzoo models`), or --resume DIR")
        config = config_from_args(args)
        from cifarzoo.train.rundir import new_run_dir

        # One folder for all ranks: rank 0 names it (others would see its folder and add "-2").
        out_dir = args.out or broadcast_object(str(new_run_dir(config.model)) if is_main else None)
        try:
            result = fit(config, out_dir=out_dir, reporter=reporter)
        except KeyboardInterrupt:
            if is_main:
                print(f"interrupted; a resumable checkpoint is in {out_dir}: cifarzoo train --resume {out_dir}",
                      file=sys.stderr)
            return 130
    if args.quiet and is_main:
        s = result.summary
        print(f"{result.run_dir}: test accuracy {100 * s['test_acc']:.2f}% (flip TTA {100 * s['test_acc_tta']:.2f}%)")
    return 0
