"""Starting processes: ``cifarzoo train --nproc-per-node N`` and independent runs on several GPUs.

Two different things, both built on what Python and PyTorch already provide:

- **One run, several processes** (data parallel). ``cifarzoo train MODEL --nproc-per-node N``
  runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m cifarzoo
  train MODEL ...`` (the same arguments minus ``--nproc-per-node``): PyTorch's elastic
  launcher starts the N ranks, and stops them all when one fails. This is exactly what
  the user would get by typing ``torchrun`` themselves; see :func:`torchrun_command`.

- **Several runs, one per device** (a study's independent runs). :func:`run_parallel`
  keeps one job running per device from a queue: each job is a command or a
  picklable function, run in a process of its own that sees only its own GPU
  through ``CUDA_VISIBLE_DEVICES``, so inside it the GPU is ``cuda:0`` and ``--device
  auto`` picks it.
"""
from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from cifarzoo.errors import CifarzooError

# Environment of a torchrun worker: a job started from inside one must not inherit it.
_DIST_ENV_PREFIXES = ("TORCHELASTIC_",)
_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
             "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


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
    if not (isinstance(nproc_per_node, int) and nproc_per_node >= 1):
        raise CifarzooError(f"--nproc-per-node must be a positive integer, got {nproc_per_node!r}")
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


# --------------------------------------------------------------------------- several runs, one per device
@dataclass
class Job:
    """One independent job for :func:`run_parallel`.

    ``target`` is either a command (a list of strings, run as a subprocess) or a
    picklable function (defined at module level, importable by name) that a fresh
    Python process calls as ``target(*args, **kwargs)``; its return value (picklable)
    comes back in :attr:`JobResult.value`. ``log``: a file that receives the job's
    stdout and stderr (default: inherited). The job's process inherits this one's
    environment and working folder, minus torchrun's variables, plus its device's
    ``CUDA_VISIBLE_DEVICES``.
    """

    target: Sequence[str] | Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    name: str = ""
    log: str | os.PathLike | None = None


@dataclass
class JobResult:
    index: int  # position in the jobs list
    name: str
    device: str  # the slot it ran on: "cuda:1", "cpu", ...
    ok: bool
    exitcode: int | None  # the process's exit status (0 for a function that returned)
    value: Any = None  # a function's return value
    error: str = ""  # "ExceptionType: message", or "exit status N"
    traceback: str = ""  # a function's traceback, from its process
    started: float = 0.0  # time.time() at start and end
    ended: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def visible_gpus() -> list[str]:
    """``["cuda:0", "cuda:1", ...]`` for the GPUs this process sees; [] without CUDA."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def device_env(device: str) -> dict[str, str]:
    """The environment that makes a child process see only ``device``.

    ``cuda:i`` is this process's i-th visible GPU: if ``CUDA_VISIBLE_DEVICES`` is
    "4,5", ``cuda:1`` is physical GPU 5. ``cpu`` hides every GPU.
    """
    d = str(device).strip().lower()
    if d == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}
    if d.startswith("cuda:") and d[5:].isdigit():
        i = int(d[5:])
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip() != "":
            ids = [v.strip() for v in visible.split(",") if v.strip()]
            if i >= len(ids):
                raise CifarzooError(f"device {device}: only {len(ids)} GPUs visible (CUDA_VISIBLE_DEVICES={visible})")
            return {"CUDA_VISIBLE_DEVICES": ids[i]}
        return {"CUDA_VISIBLE_DEVICES": str(i)}
    raise CifarzooError(f"device {device!r}: expected 'cuda:N' or 'cpu'")


def _child_env(device: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _DIST_ENV and not k.startswith(_DIST_ENV_PREFIXES)}
    env.update(device_env(device))
    return env


# The program a function job's process runs: load (fn, args, kwargs), call it, write the
# outcome. Plain Python, importing nothing of cifarzoo (nor torch) itself, so a job pays
# only for what its function imports. The process starts with the job's environment,
# so CUDA_VISIBLE_DEVICES is in place before anything can initialize CUDA; the parent's
# sys.path comes first, so that ``fn`` is importable here as it was there.
_CHILD_PROGRAM = """\
import pickle, sys, traceback
with open(sys.argv[1], "rb") as f:
    path, blob = pickle.load(f)
sys.path[:0] = [p for p in path if p not in sys.path]
try:
    fn, args, kwargs = pickle.loads(blob)
    outcome = ("ok", fn(*args, **kwargs), "")
except BaseException as exc:
    outcome = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
try:
    data = pickle.dumps(outcome)
except Exception as exc:
    outcome = ("error", f"cannot send the return value back: {type(exc).__name__}: {exc}", "")
    data = pickle.dumps(outcome)
with open(sys.argv[2], "wb") as f:
    f.write(data)
sys.exit(0 if outcome[0] == "ok" else 1)
"""


def _run_job(index: int, job: Job, device: str) -> JobResult:
    import pickle
    import tempfile

    r = JobResult(index, job.name or f"job {index}", device, False, None, started=time.time())
    env = _child_env(device)
    log = None
    try:
        if job.log is not None:
            Path(job.log).parent.mkdir(parents=True, exist_ok=True)
            log = open(job.log, "ab")
        out = {"stdout": log, "stderr": subprocess.STDOUT} if log else {}
        if callable(job.target):
            with tempfile.TemporaryDirectory(prefix="cifarzoo-job-") as tmp:
                in_path, out_path = Path(tmp, "in.pkl"), Path(tmp, "out.pkl")
                in_path.write_bytes(pickle.dumps((list(sys.path), pickle.dumps((job.target, job.args, job.kwargs)))))
                r.exitcode = subprocess.call([sys.executable, "-c", _CHILD_PROGRAM, str(in_path), str(out_path)],
                                             env=env, **out)
                if out_path.exists():
                    status, payload, r.traceback = pickle.loads(out_path.read_bytes())
                else:  # died without a word: killed, segfault, os._exit
                    status, payload = "error", None
            if status == "ok" and r.exitcode == 0:
                r.ok, r.value = True, payload
            else:
                r.error = payload or f"exit status {r.exitcode}"
        else:
            r.exitcode = subprocess.call([str(a) for a in job.target], env=env, **out)
            r.ok = r.exitcode == 0
            if not r.ok:
                r.error = f"exit status {r.exitcode}"
    except Exception as exc:  # could not start it (unpicklable function, missing program)
        r.error, r.traceback = f"{type(exc).__name__}: {exc}", traceback.format_exc()
    finally:
        if log is not None:
            log.close()
    r.ended = time.time()
    return r


def run_parallel(
    jobs: Sequence[Job | Sequence[str] | Callable[..., Any]],
    devices: Sequence[str] | None = None,
    *,
    on_start: Callable[[int, Job, str], None] | None = None,
    on_done: Callable[[JobResult], None] | None = None,
) -> list[JobResult]:
    """Run independent ``jobs``, one at a time per device, all devices at once; results in job order.

    ``devices``: slots such as ``["cuda:0", "cuda:1"]`` (default: every visible GPU, or
    one ``"cpu"`` slot without CUDA); a device may be listed twice to run two jobs on
    it. Jobs start in list order as slots free up. A job that fails is reported in its
    :class:`JobResult` (``ok=False``, ``error``) and the others go on; nothing is raised
    for it. ``on_start(index, job, device)`` and ``on_done(result)`` are called from
    worker threads (one per slot) as jobs start and finish, for progress display.
    On Ctrl-C no new job starts; the running ones get the terminal's SIGINT too, and
    this waits for them before re-raising.
    """
    slots = list(devices) if devices is not None else (visible_gpus() or ["cpu"])
    if not slots:
        raise CifarzooError("run_parallel: no devices given")
    for d in slots:
        device_env(d)  # validate before starting anything
    todo: queue.Queue[tuple[int, Job]] = queue.Queue()
    for i, j in enumerate(jobs):
        todo.put((i, j if isinstance(j, Job) else Job(j)))
    results: dict[int, JobResult] = {}
    stop = threading.Event()
    lock = threading.Lock()
    callback_errors: list[BaseException] = []

    def worker(device: str) -> None:
        while not stop.is_set():
            try:
                i, job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                if on_start is not None:
                    on_start(i, job, device)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                callback_errors.append(exc)
            r = _run_job(i, job, device)
            with lock:
                results[i] = r
            try:
                if on_done is not None:
                    on_done(r)
            except BaseException as exc:  # noqa: BLE001
                callback_errors.append(exc)

    threads = [threading.Thread(target=worker, args=(d,), name=f"run_parallel-{d}", daemon=True) for d in slots]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        raise
    if callback_errors:
        raise callback_errors[0]
    return [results[i] for i in sorted(results)]
