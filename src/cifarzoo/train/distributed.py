"""The little the trainer needs from ``torch.distributed``, set up from ``torchrun``'s environment.

Data-parallel training is PyTorch's own: ``torchrun`` (``torch.distributed.run``)
starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`process_group` turns those into a process
group (NCCL when CUDA is there, gloo for CPU tensors) and ``fit`` wraps the model in
``DistributedDataParallel``. Nothing here talks to another process except through
``torch.distributed`` collectives.

Failure: if one rank raises, its process exits non-zero and torchrun's elastic agent
stops the others. Collectives that decide whether to stop (non-finite loss, stall)
are all-reduced so that every rank raises together rather than some waiting in the
next collective. The process group has a finite timeout (:data:`TIMEOUT`), so a rank
that is stuck without exiting ends the job with an error, not a hang.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from cifarzoo.errors import CifarzooError

# Environment torchrun sets for every worker; all four are needed for env:// init.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# How long a collective may wait for the other ranks. Between two collectives the ranks
# do the same work (train steps, evaluation), except rank 0 writing a checkpoint; 10
# minutes covers a slow disk and the first torch.compile, and bounds a stuck job.
# CIFARZOO_DIST_TIMEOUT (seconds) overrides it.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun / ``torch.distributed.run`` (its env vars are set)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def current() -> DistInfo:
    """Rank and world size of an initialized process group, else a single process.

    Raises if torchrun started several processes but nobody initialized the process
    group: each would otherwise train the whole run alone and write the same folder.
    """
    if _initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CifarzooError(
            f"started by torchrun with WORLD_SIZE={os.environ['WORLD_SIZE']} but no process group is "
            "initialized; wrap the call in cifarzoo.train.distributed.process_group() (the CLI does)")
    return DistInfo()


def backend() -> str:
    """NCCL for CUDA tensors where there is CUDA, gloo for CPU tensors (always available).

    A device-to-backend map, so that one group serves a --device cpu run on a GPU
    machine and CPU-side collectives (broadcast_object) in a GPU run alike.
    """
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def timeout() -> timedelta:
    value = os.environ.get("CIFARZOO_DIST_TIMEOUT")
    if not value:
        return TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise CifarzooError(f"CIFARZOO_DIST_TIMEOUT={value!r}: expected a number of seconds") from None
    if seconds <= 0:
        raise CifarzooError(f"CIFARZOO_DIST_TIMEOUT={value!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def init_from_env() -> bool:
    """Initialize the default process group from torchrun's environment.

    Returns True if this call initialized it (the caller then destroys it), False when
    not launched by torchrun or already initialized. Sets the CUDA device to
    ``LOCAL_RANK`` first, as NCCL needs one GPU per process.
    """
    if not launched_by_torchrun() or _initialized():
        return False
    if not dist.is_available():
        raise CifarzooError("this torch build has no torch.distributed; cannot run under torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise CifarzooError(
                f"local rank {local_rank} has no GPU of its own: {n} visible; use --nproc-per-node {n} "
                "or fewer (one process per GPU)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend(), init_method="env://", timeout=timeout())
    return True


def shutdown() -> None:
    if _initialized():
        dist.destroy_process_group()


def record_failure(exc: BaseException) -> None:
    """Write ``exc`` to torchrun's per-rank error file, so its failure summary names the cause."""
    if not isinstance(exc, Exception) or "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(exc)
    except Exception:  # pragma: no cover - reporting must never hide the original error
        pass


@contextmanager
def process_group() -> Iterator[DistInfo]:
    """Run the body in torchrun's process group (initialized here if not yet); single process otherwise.

    On success the group is destroyed at the end. On an exception it is not (a clean
    destroy could wait for ranks that are gone); the exception is recorded for
    torchrun's summary, a :class:`CifarzooError` gets the rank in its message, and it
    propagates, so this process exits non-zero and torchrun stops the others.
    """
    owned = init_from_env()
    info = current()
    try:
        yield info
    except BaseException as exc:
        if info.enabled and isinstance(exc, CifarzooError) and exc.args and isinstance(exc.args[0], str):
            exc.args = (f"rank {info.rank} of {info.world_size}: {exc.args[0]}", *exc.args[1:])
        record_failure(exc)
        raise
    if owned:
        shutdown()


def check_world(batch_size: int, world_size: int, *, sync_bn: bool = False, device_type: str = "cpu") -> None:
    """Raise, before any collective, for settings a data-parallel run of ``world_size`` cannot use."""
    if world_size <= 1:
        return
    if batch_size % world_size:
        lo = batch_size - batch_size % world_size
        raise CifarzooError(
            f"--batch-size {batch_size} is the global batch and must be divisible by the {world_size} "
            f"processes (each takes batch/{world_size}); use --batch-size {lo or world_size} or "
            f"{lo + world_size}")
    if sync_bn and device_type != "cuda":
        raise CifarzooError(
            f"--sync-bn needs CUDA: torch {torch.__version__.split('+')[0]}'s SyncBatchNorm has no CPU kernels "
            "(aten::batch_norm_stats is CUDA-only; the module refuses CPU input), so it cannot run with "
            f"gloo on CPU. Train without --sync-bn (each process normalizes over its batch/{world_size} images)")


# --------------------------------------------------------------------------- collectives
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place and returned); identity in a single process."""
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# Steps between two agreements on a pending Ctrl-C (and at every epoch's last step).
STOP_EVERY = 8


def agree_to_stop(pending: bool, step: int, steps: int) -> bool:
    """Whether this run stops after 0-based ``step`` of an epoch of ``steps``: the same answer on every rank.

    A Ctrl-C reaches the ranks of a torchrun job between different steps. A rank that stopped
    alone would run the interrupted save's collectives (a finite-loss check, a barrier) while
    the others are inside the next step's gradient all-reduce: mismatched collectives, a hang
    until :data:`TIMEOUT`. So every :data:`STOP_EVERY` steps and at the epoch's last step the
    ranks all-reduce (max) their pending flags, and all stop after the same step, at most
    STOP_EVERY - 1 steps late. The flag is a CPU tensor (gloo): no device sync. In a single
    process: whenever one is pending.
    """
    if not (_initialized() and dist.get_world_size() > 1):
        return pending
    if (step + 1) % STOP_EVERY and step + 1 != steps:
        return False
    flag = torch.tensor([1 if pending else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def barrier() -> None:
    if _initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects); ``obj`` itself in a single process."""
    if not (_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) into every rank's ``module``.

    DDP keeps parameters identical; without SyncBatchNorm each rank's running
    statistics follow its own last batch, so they are made rank 0's before evaluation
    and checkpointing, and every rank holds the same model.
    """
    if not (_initialized() and dist.get_world_size() > 1):
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=src)
