"""`cifarzoo train MODEL [options]`: one model, one run folder."""
from __future__ import annotations

import argparse
import sys

from cifarzoo.cli.common import (DATA_DEFAULT_HELP, add_config_options, add_data_argument, add_labels_argument,
                                 add_tracking_arguments, config_overrides)
from cifarzoo.progress import ConsoleReporter
from cifarzoo.train.config import PRESETS


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train one model and write a run folder",
        description="Train one model. Unset options come from the model's recipe (see cifarzoo/train/config.py).")
    p.add_argument("model", nargs="?", help="model name (see `cifarzoo models`); omit with --resume")
    groups = add_config_options(p)  # the settings, each in its --help group
    add_data_argument(groups["Dataset"], default_help=f"{DATA_DEFAULT_HELP}; with --resume, the run's own (a run "
                                                      "trained from arrays in memory needs the same data again)")
    add_labels_argument(groups["Dataset"], default_help="fine; with --resume, the run's own")
    p.add_argument("--preset", choices=list(PRESETS), help="start from a study preset's settings for this model")
    groups["Run folder"].add_argument("--out", help="run folder (default runs/<model>-<time>); one that already "
                                                    "holds a run is refused unless --force")
    groups["Run folder"].add_argument("--force", action="store_true", help="overwrite the run already in --out")
    groups["Run folder"].add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR with its "
                                                                      "saved settings (no other training option "
                                                                      "may be given)")
    p.add_argument("--config", metavar="FILE",
                   help="settings file, JSON or TOML (*.toml): training settings by name (lr, batch_size, ...: a "
                        "run's config.json 'config', or tune's best.json) and optionally model and preset; "
                        "options given here win over the file")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    add_tracking_arguments(p)
    p.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="data-parallel training on N local processes (one per GPU; gloo on CPU): runs this "
                        "command under `torchrun --standalone --nproc-per-node N`; --batch-size is the global batch")
    p.set_defaults(_train_parser=p)
    return p


def config_from_args(args) -> "TrainConfig":  # noqa: F821
    from cifarzoo.train import make_config

    if args.config is not None:
        from cifarzoo.config_file import config_with_file, train_settings

        return config_with_file(args.model, args.preset, train_settings(args.config), config_overrides(args),
                                where=args.config)
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

    check_arguments(args)
    if args.resume:
        from cifarzoo.train.checkpoint import load_checkpoint
        from cifarzoo.train.config import TrainConfig

        config = TrainConfig.from_dict(load_checkpoint(args.resume, resume=True)["config"])
    else:
        config = config_from_args(args)
        from cifarzoo.train.rundir import RunDir

        if args.out and not args.force and RunDir(args.out).holds_run():  # said once, before N ranks start
            raise CifarzooError(f"{args.out} already holds a run; continue it with --resume {args.out}, "
                                "pass --force to overwrite it, or choose another --out")
    device_type = launch.check_nproc(args.nproc_per_node, config.device)
    if args.nproc_per_node == 1:
        with distributed.process_group():
            return _run(args)
    batch_size = config.batch_size if config.batch_size is not None else _auto_batch_size(config)
    distributed.check_world(batch_size, args.nproc_per_node, sync_bn=config.sync_bn, device_type=device_type)
    argv = ["train", *launch.unparse_args(args._train_parser, args, drop=("nproc_per_node",))]
    return launch.launch(argv, args.nproc_per_node)


def check_arguments(args) -> None:
    """MODEL or --resume DIR; a resumed run keeps its saved settings, so no setting may come with it.

    ``--data`` is the exception: a run trained from arrays in memory takes the same data again
    from a file (checked by ``data.arrays.resume_dataset``, which refuses it for any other run)."""
    from cifarzoo.errors import CifarzooError
    from cifarzoo.tracking import parse_log

    parse_log(args.log, args.mlflow_uri)  # an unknown name is said before anything starts
    if args.resume and args.model:
        raise CifarzooError("give either MODEL or --resume DIR, not both (a resumed run keeps its settings)")
    if not (args.resume or args.model or args.config):
        raise CifarzooError("missing MODEL (see `cifarzoo models`), --config FILE, or --resume DIR")
    if args.resume:
        arrays = _trained_from_arrays(args.resume)
        given = [name for name, value in config_overrides(args).items()
                 if value is not None and not (name == "data" and arrays)]
        given += [name for name in ("preset", "out", "config") if getattr(args, name) is not None]
        given += ["force"] if args.force else []
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise CifarzooError(f"--resume continues {args.resume} with the settings it was started with; drop "
                                f"{flags} (to train with other settings, start a new run)")


def _trained_from_arrays(run_or_checkpoint: str) -> bool:
    from cifarzoo.data.arrays import ARRAYS_SPEC
    from cifarzoo.train.rundir import RunDir

    return (RunDir.of(run_or_checkpoint).saved_config() or {}).get("data") == ARRAYS_SPEC


def _auto_batch_size(config) -> int:
    """The batch size the trainer will choose for ``config``'s data (see loop.auto_batch_size)."""
    from cifarzoo import data
    from cifarzoo.train.loop import auto_batch_size, split_dataset

    return auto_batch_size(len(split_dataset(data.load(config.data), config).train_y))


def _interrupted(out_dir, is_main: bool, data: str | None = None) -> int:
    """Say what Ctrl-C left in ``out_dir``, with the command that continues it."""
    import shlex

    from cifarzoo.train.rundir import FINISHED, RESUMABLE, RunDir

    if is_main:
        state = RunDir(out_dir).state()
        if state == RESUMABLE:
            # --data goes with --resume only for a run trained from arrays (see check_arguments).
            again = f" --data {shlex.quote(data)}" if data is not None and _trained_from_arrays(out_dir) else ""
            print(f"interrupted; a resumable checkpoint is in {out_dir}: cifarzoo train --resume "
                  f"{shlex.quote(str(out_dir))}{again}", file=sys.stderr)
        elif state == FINISHED:
            print(f"interrupted once the run had finished; its record in {out_dir} is complete", file=sys.stderr)
        else:
            print(f"interrupted before the first checkpoint was saved; nothing to resume in {out_dir}",
                  file=sys.stderr)
    return 130


def _run(args) -> int:
    from cifarzoo.train import fit
    from cifarzoo.train.distributed import current

    is_main = current().is_main
    check_arguments(args)
    from cifarzoo.tracking import make_loggers

    loggers = make_loggers(args.log, args.mlflow_uri) if is_main else []  # a missing extra is said here
    callbacks = [*loggers, ConsoleReporter(quiet=args.quiet or not is_main)]  # the display last
    if args.resume:
        out_dir = args.resume
        dataset = None
        if args.data is not None:  # a run trained from arrays in memory: the same data, from a file
            from cifarzoo.data.arrays import resume_dataset
            from cifarzoo.train.rundir import RunDir

            folder = RunDir.of(args.resume)
            dataset = resume_dataset(folder.path, folder.read_info() or {}, args.data, labels=args.labels)
        try:
            result = fit(resume=args.resume, dataset=dataset, callbacks=callbacks)
        except KeyboardInterrupt:
            return _interrupted(out_dir, is_main, args.data)
    else:
        config = config_from_args(args)
        from cifarzoo.train.rundir import run_folder

        out_dir = run_folder(config.model, args.out)  # here, to say where an interrupted run is
        try:
            result = fit(config, out_dir=out_dir, callbacks=callbacks, force=args.force)
        except KeyboardInterrupt:
            return _interrupted(out_dir, is_main, args.data)
    if args.quiet and is_main:
        s = result.summary
        print(f"{result.run_dir}: test accuracy {100 * s['test_acc']:.2f}% (flip TTA {100 * s['test_acc_tta']:.2f}%)")
    return 0
