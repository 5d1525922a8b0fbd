"""Starting the ranks of one run: ``cifarzoo train --nproc-per-node N``.

``cifarzoo train MODEL --nproc-per-node N`` runs ``python -m torch.distributed.run
--standalone --nproc-per-node N -m cifarzoo train MODEL ...`` (the same arguments minus
``--nproc-per-node``): PyTorch's elastic launcher starts the N ranks, and stops them all
when one fails. This is exactly what the user would get by typing ``torchrun``
themselves; see :func:`torchrun_command`. Several machines are torchrun's own business
(``--nnodes``, ``--rdzv-endpoint``; see docs/guide.md), with nothing of cifarzoo in between.

A study's independent runs on several GPUs or machines go through Ray instead
(``cifarzoo.study.executors``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Sequence

from cifarzoo.errors import CifarzooError


# --------------------------------------------------------------------------- one run, N processes
def torchrun_command(argv: Sequence[str], nproc_per_node: int, *, module: str = "cifarzoo") -> list[str]:
    """The ``torch.distributed.run`` command line that runs ``python -m MODULE *argv`` on N local ranks.

    ``--standalone`` gives a local rendezvous on a free port, so several jobs on one
    machine do not collide.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
            "-m", module, *argv]


def check_nproc(nproc_per_node: int, device: str = "auto") -> str:
    """Validate N for a ``--device`` choice; returns the device type the ranks will use ("cuda"/"cpu").

    On GPUs each rank needs one of its own; on CPU (gloo) any N works, though N above
    the core count only slows the run down.
    """
    most = 256  # processes on one machine: above any GPU count, and every CPU rank loads the whole data set
    if not (isinstance(nproc_per_node, int) and not isinstance(nproc_per_node, bool) and 1 <= nproc_per_node <= most):
        raise CifarzooError(f"--nproc-per-node must be a positive integer, at most {most}, got {nproc_per_node!r}")
    import torch

    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return "cpu"
    n = torch.cuda.device_count()
    if n == 0:
        raise CifarzooError("--device cuda: no CUDA GPU is available to this torch build; use --device cpu")
    if nproc_per_node > n:
        raise CifarzooError(
            f"--nproc-per-node {nproc_per_node} needs {nproc_per_node} GPUs (one per process); {n} "
            f"{'is' if n == 1 else 'are'} visible. Use --nproc-per-node {n}, or --device cpu for gloo on CPU")
    return "cuda"


def unparse_args(parser: argparse.ArgumentParser, args: argparse.Namespace, drop: Sequence[str] = ()) -> list[str]:
    """The argument list that ``parser`` parses back into ``args`` (options left at None are omitted).

    Used to hand the workers the user's own command minus ``--nproc-per-node``.
    """
    out: list[str] = []
    positionals: list[str] = []
    for action in parser._actions:
        if action.dest in drop or action.dest == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        value = getattr(args, action.dest, None)
        if value is None:
            continue
        if not action.option_strings:
            positionals.extend(map(str, value) if isinstance(value, list) else [str(value)])
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if value != action.default:
                out.append(flag)
        elif isinstance(action, argparse._StoreAction):
            if value != action.default:
                out.extend([flag, str(value)])
        else:  # append, count, ...: not used by `train`
            raise CifarzooError(f"cannot forward option {flag} to the worker processes")
    return positionals + out


def launch(argv: Sequence[str], nproc_per_node: int, *, module: str = "cifarzoo") -> int:
    """Run ``python -m MODULE *argv`` on ``nproc_per_node`` local ranks under torchrun; its exit status.

    The workers inherit stdout/stderr (only rank 0 of ``cifarzoo train`` prints). A
    rank that fails makes torchrun stop the others and exit non-zero. Ctrl-C reaches
    torchrun and the workers directly from the terminal; this waits for them to save
    and stop.
    """
    proc = subprocess.Popen(torchrun_command(argv, nproc_per_node, module=module))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.terminate()
            proc.wait()
        return 130
