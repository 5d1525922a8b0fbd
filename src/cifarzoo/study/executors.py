"""Who trains a study's runs: this process, one after the other, or Ray tasks on a cluster.

:func:`cifarzoo.study.runner.execute` decides which runs need training (resume and
skip rules, compatibility) and writes the report; an executor only trains the runs it
is handed and returns one :class:`~cifarzoo.study.training.RunOutcome` each, calling the
study's reporter as it goes. Either way a failed run is recorded in its
``summary.json`` (see ``train_one``) and the others go on.

- :class:`LocalExecutor` (the default): the runs on this machine, one at a time in this
  process, or several at a time in worker processes of their own (``jobs``), with a
  progress line per epoch either way.
- :class:`RayExecutor`: every run is a Ray task asking for one GPU (or
  ``cpus_per_run`` CPUs on a CPU cluster), on a local Ray instance or on an existing
  cluster (``address``). A machine with several GPUs is simply a local instance with
  several GPUs. Every task gets the same dataset, put once into Ray's object store.

  Where the run folder is written depends on whether the worker sees the study folder:
  a worker on the same machine or on a shared filesystem (it finds the driver's
  ``study.json`` at the same path, the same file) trains in ``DIR/runs/<run>/``
  itself, checkpoints included, so an interrupted run resumes from its last epoch. Any
  other worker trains in a temporary folder of its own and returns the whole run folder
  (config, metrics, summary, curves, evaluation files and the final checkpoint);
  the driver writes it into ``DIR/runs/<run>/``, ``summary.json`` last. A resumed run's
  files travel to such a worker the same way. A task that dies (worker killed, node
  lost) is recorded as a failed run with Ray's reason.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable, Sequence

from cifarzoo.device import physical_cores
from cifarzoo.errors import CifarzooError
from cifarzoo.io import atomic_write_bytes, json_text
from cifarzoo.study.plan import STUDY_FILE, RunSpec
from cifarzoo.study.schedule import alone_threads, seconds_left, start_order
from cifarzoo.study.training import RunOutcome, RunProgress, StudyReporter, estimate_seconds_left, train_one
from cifarzoo.train.rundir import CONFIG_FILE, SUMMARY_FILE, RunDir

# (plan position from 1, run, "trained" | "resumed")
Job = tuple[int, RunSpec, str]
# Ray makes a loopback-only instance when this is 0 (its default on macOS and Windows):
# every process binds to and advertises 127.0.0.1. Read when ray is imported.
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass
class _Tally:
    """The runs an executor has ended, kept in one place by every executor: the outcomes, the
    ``(wall seconds, cost)`` of the runs trained from scratch that price the study's time left, and
    the reporter told of each end."""

    reporter: StudyReporter
    total: int
    costs: dict[str, float]
    finished: list[tuple[float, float]] = field(default_factory=list)
    outcomes: list[RunOutcome] = field(default_factory=list)

    def end(self, index: int, outcome: RunOutcome, eta: Callable[[], float | None]) -> None:
        """Record ``outcome`` (run ``index`` of the plan), then report it with ``eta()`` seconds left."""
        if outcome.status == "finished" and outcome.action == "trained":  # a resumed run's time covers only its rest
            self.finished.append((outcome.wall_seconds, self.costs[outcome.spec.name]))
        self.outcomes.append(outcome)
        self.reporter.on_run_end(index, self.total, outcome, eta())

    def seconds_left(self, upcoming: Sequence[float], slots: int = 1) -> float | None:
        """The ``upcoming`` runs' time left at the pace of the finished ones, ``slots`` of them at a time."""
        eta = estimate_seconds_left(self.finished, upcoming)
        return None if eta is None else eta / max(1, min(slots, len(upcoming)))


class LocalExecutor:
    """The runs on this machine: one after the other in this process (``jobs=1``), or ``jobs``
    at a time, each in a process of its own (:mod:`cifarzoo.study.worker`) with an equal share
    of the physical cores as its torch threads (a run's own ``threads`` setting wins).

    On a CPU, narrow models use two threads poorly (batch 32 at the quick preset's widths:
    one thread trains resnet50 as fast as two), so two one-thread runs side by side train
    nearly twice as many images per second as one run on two cores. Runs start in the order
    whose schedule ends soonest by their :func:`~cifarzoo.study.training.run_cost`
    (:func:`~cifarzoo.study.schedule.start_order`: the workers finish together as nearly as the
    costs allow), and once no run waits the runs still training share all the cores
    (:func:`~cifarzoo.study.schedule.alone_threads`: the last run trains on both of two cores).
    """

    name = "local"

    def __init__(self, jobs: int = 1):
        most = 1024  # processes side by side, each training a run: far above any machine's cores
        if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= most:
            raise CifarzooError(f"--jobs must be an integer in [1, {most}], got {jobs!r}")
        self.jobs = jobs

    def run(self, jobs: Sequence[Job], *, total: int, dataset, reporter: StudyReporter,
            costs: dict[str, float]) -> list[RunOutcome]:
        if min(self.jobs, len(jobs)) > 1 and os.name == "posix":
            return _Workers(jobs, min(self.jobs, len(jobs)), total, dataset, reporter, costs).run()
        tally = _Tally(reporter, total, costs)
        for pos, (index, spec, action) in enumerate(jobs):
            upcoming = [costs[s.name] for _, s, _ in jobs[pos + 1:]]
            cost = costs[spec.name]
            reporter.on_run_start(index, total, spec, action, estimate_seconds_left(
                tally.finished, upcoming, (0, spec.config.epochs, 0.0, cost)))
            progress = RunProgress(reporter, index, total, spec, tally.finished, upcoming, cost)
            t0 = time.perf_counter()
            status, summary = train_one(spec, dataset, action=action, reporter=progress)
            outcome = RunOutcome(spec, status, action, summary, time.perf_counter() - t0)
            tally.end(index, outcome, partial(tally.seconds_left, upcoming))
        return tally.outcomes


def default_jobs(plan) -> int:
    """How many runs a study trains at once on this machine unless told: where its preset asks
    for one run per core (PRESETS' ``one_run_per_core``: quick, cpu) and the runs train on the
    CPU, the physical cores over each run's threads (one unless set); else one."""
    import torch

    from cifarzoo.train.config import PRESETS

    if not PRESETS[plan.preset].get("one_run_per_core") or not plan.runs:
        return 1
    configs = [s.config for s in plan.runs]
    if any(c.device == "cuda" or (c.device == "auto" and torch.cuda.is_available()) for c in configs):
        return 1
    return max(1, physical_cores() // max(c.threads or 1 for c in configs))


@dataclass
class _Running:
    index: int
    spec: RunSpec
    action: str
    proc: subprocess.Popen
    conn: Connection
    t0: float
    threads: int
    epochs_done: int = 0
    last_epoch_at: float = 0.0  # perf_counter() when its latest epoch ended
    last_epoch_seconds: float = 0.0  # wall seconds of that epoch (its evaluation included)


class _Workers:
    """LocalExecutor's runs ``slots`` at a time in worker processes (see cifarzoo.study.worker)."""

    def __init__(self, jobs, slots, total, dataset, reporter, costs):
        self.waiting = [jobs[i] for i in start_order([costs[spec.name] for _, spec, _ in jobs], slots)]
        self.slots, self.total, self.dataset, self.reporter, self.costs = slots, total, dataset, reporter, costs
        self.threads = max(1, physical_cores() // slots)
        self.running: dict[Connection, _Running] = {}
        self.tally = _Tally(reporter, total, costs)

    def run(self) -> list[RunOutcome]:
        try:
            while self.waiting or self.running:
                while self.waiting and len(self.running) < self.slots:
                    self._start(*self.waiting.pop(0))
                for conn in wait(list(self.running), timeout=1.0):
                    self._receive(self.running[conn])
        except BaseException:  # Ctrl-C (or a worker's error): every worker saves a checkpoint and stops
            self._stop_all()
            raise
        return self.tally.outcomes

    def _start(self, index: int, spec: RunSpec, action: str) -> None:
        threads = spec.config.threads or self.threads
        mine, theirs = Pipe()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.Popen([sys.executable, "-m", "cifarzoo.study.worker", str(theirs.fileno())],
                                pass_fds=[theirs.fileno()], env=env, start_new_session=True)
        theirs.close()
        self.running[mine] = _Running(index, spec, action, proc, mine, time.perf_counter(), threads)
        self.reporter.on_run_start(index, self.total, spec, action, self._eta())
        try:
            mine.send((spec, action, self.dataset))
        except OSError:  # the worker died at once: _receive finds its connection closed
            pass

    def _receive(self, r: _Running) -> None:
        try:
            kind, payload = r.conn.recv()
        except (EOFError, OSError):  # the worker died without a word (killed, out of memory, crashed)
            kind, payload = "died", None
        if kind == "epoch":
            now = time.perf_counter()
            r.epochs_done += 1
            r.last_epoch_seconds, r.last_epoch_at = now - (r.last_epoch_at or r.t0), now
            self.reporter.on_epoch_end(r.index, self.total, r.spec, payload, self._eta())
            return
        self._end(r, kind, payload)

    def _end(self, r: _Running, kind: str, payload) -> None:
        del self.running[r.conn]
        r.conn.close()
        code = r.proc.wait()
        if kind == "interrupted":
            raise KeyboardInterrupt
        if kind == "error":
            raise CifarzooError(f"{r.spec.name}: {payload}")
        wall = time.perf_counter() - r.t0
        if kind == "done":
            status, summary, _ = payload
        else:
            status, summary = "failed", _record_killed(
                r.spec, f"its worker process ended with exit status {code} before the run finished", "")
        self._share_cores()
        self.tally.end(r.index, RunOutcome(r.spec, status, r.action, summary, wall), self._eta)

    def _share_cores(self) -> None:
        """No idle core: once no run waits, the runs still training (without threads of their own)
        get an equal share of all the cores; the worker takes it up at its next step."""
        threads = alone_threads(physical_cores(), len(self.running), len(self.waiting))
        for r in self.running.values():
            if threads and r.spec.config.threads is None and threads > r.threads:
                try:
                    r.conn.send(("threads", threads))
                    r.threads = threads
                except OSError:  # the worker has just died: _receive records it
                    pass

    def _eta(self) -> float | None:
        """Seconds left (:func:`~cifarzoo.study.schedule.seconds_left`): each running run's rest at
        its latest epoch's pace, the waiting runs priced by the pace measured so far, laid out on the
        workers in start order. None while nothing has been measured."""
        now = time.perf_counter()
        running = [(r.epochs_done, r.spec.config.epochs, r.last_epoch_seconds,
                    now - r.last_epoch_at if r.epochs_done else 0.0, now - r.t0, self.costs[r.spec.name])
                   for r in self.running.values()]
        return seconds_left(self.tally.finished, running, [self.costs[s.name] for _, s, _ in self.waiting], self.slots)

    def _stop_all(self) -> None:
        """One Ctrl-C to every worker; wait while they save their checkpoints (a minute at most)."""
        for r in self.running.values():
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        for r in self.running.values():
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            r.conn.close()
        self.running.clear()


def _record_killed(spec: RunSpec, reason: str, diagnosis: str) -> dict:
    """Record a run whose worker died before it could: its summary.json says so (``kind: killed``)."""
    run = RunDir(spec.run_dir)
    summary = run.failure_summary(model=spec.model, seed=spec.seed, epochs=spec.config.epochs,
                                  data=spec.config.data, kind="killed", reason=reason, diagnosis=diagnosis)
    run.write_summary(summary)
    return summary


class RayExecutor:
    """Every run a Ray task; see the module doc for where run folders are written.

    ``address``: None starts a local Ray instance for the study (loopback only, all of
    this machine's CPUs and GPUs, or ``num_cpus``) and stops it at the end; ``"auto"``
    joins the cluster Ray finds (``RAY_ADDRESS``, or one started with ``ray start`` on
    this machine); ``"HOST:PORT"`` joins that cluster's head. If this process is already
    connected to Ray (``ray.init`` called), that connection is used as it is.
    ``gpus_per_run``: GPUs per task (default 1 where the cluster has GPUs and runs do
    not ask for ``device="cpu"``, else 0; 0.5 puts two runs on one GPU).
    ``cpus_per_run``: CPUs per task, and the run's torch threads (default 1).
    ``shared_fs``: None detects it per task; False always sends run folders back.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, cpus_per_run: float = 1, gpus_per_run: float | None = None,
                 num_cpus: int | None = None, shared_fs: bool | None = None):
        if not 0 < cpus_per_run <= 1024:  # one run's threads (Ray's largest machines have a few hundred CPUs)
            raise CifarzooError(f"--cpus-per-run must be in (0, 1024], got {cpus_per_run!r}")
        if gpus_per_run is not None and not 0 <= gpus_per_run <= 64:
            raise CifarzooError(f"--gpus-per-run must be in [0, 64], got {gpus_per_run!r}")
        if address is not None and address != "auto" and not _host_port(address):
            raise CifarzooError(f"--address {address!r}: expected auto or HOST:PORT of a Ray head (e.g. 10.0.0.5:6379)")
        self.address, self.cpus_per_run, self.gpus_per_run = address, cpus_per_run, gpus_per_run
        self.num_cpus, self.shared_fs = num_cpus, shared_fs

    def run(self, jobs: Sequence[Job], *, total: int, dataset, reporter: StudyReporter,
            costs: dict[str, float]) -> list[RunOutcome]:
        if not jobs:
            return []
        ray = _import_ray(loopback=self.address is None or _is_loopback(self.address))
        started = self._connect(ray)
        try:
            return self._run(ray, jobs, total=total, dataset=dataset, reporter=reporter, costs=costs)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Connect to Ray unless this process already is; True if this call did (and so disconnects)."""
        if ray.is_initialized():
            return False
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        try:
            if self.address is None:  # "local": never RAY_ADDRESS or a cluster that happens to run here
                ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count(), _node_ip_address="127.0.0.1",
                         **kw)
            else:
                if _is_loopback(self.address):
                    kw["_node_ip_address"] = "127.0.0.1"
                ray.init(address=self.address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = "a local Ray instance" if self.address is None else f"the Ray cluster at --address {self.address}"
            raise CifarzooError(f"cannot start or reach {where}: {str(exc).splitlines()[0]} (is `ray start "
                                "--head` running there, and the same Ray version installed here?)") from None
        return True

    def _resources(self, ray, jobs: Sequence[Job]) -> tuple[dict, int]:
        """Each task's Ray resources, and how many tasks the cluster runs at once."""
        have = ray.cluster_resources()
        gpus = self.gpus_per_run
        if gpus is None:
            wants_cpu = all(s.config.device == "cpu" for _, s, _ in jobs)
            gpus = 1 if have.get("GPU", 0) >= 1 and not wants_cpu else 0
        if gpus > have.get("GPU", 0):
            raise CifarzooError(f"--gpus-per-run {gpus:g}: the Ray cluster has {have.get('GPU', 0):g} GPUs")
        if self.cpus_per_run > have.get("CPU", 0):
            raise CifarzooError(f"--cpus-per-run {self.cpus_per_run:g}: the Ray cluster has {have.get('CPU', 0):g} "
                                "CPUs in all")
        slots = int(have["GPU"] // gpus) if gpus else int(have.get("CPU", 0) // self.cpus_per_run)
        return {"num_cpus": self.cpus_per_run, "num_gpus": gpus}, max(1, slots)

    def _run(self, ray, jobs, *, total, dataset, reporter, costs) -> list[RunOutcome]:
        resources, slots = self._resources(ray, jobs)
        task = ray.remote(_train_task).options(max_retries=0, **resources)
        data_ref = ray.put(dataset)
        study_file = jobs[0][1].run_dir.parent.parent / STUDY_FILE
        token = None if self.shared_fs is False else _file_token(study_file)
        pending = {}
        tally = _Tally(reporter, total, costs)
        try:
            for index, spec, action in jobs:
                files = _read_files(spec.run_dir) if action == "resumed" else {}
                ref = task.remote(spec, action, data_ref, str(study_file), token, files, self.cpus_per_run)
                pending[ref] = (index, spec, action, time.perf_counter())
                reporter.on_run_start(index, total, spec, "queued", None)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                index, spec, action, t0 = pending.pop(done[0])
                outcome = self._collect(ray, done[0], spec, action, time.perf_counter() - t0)
                left = [costs[p[1].name] for p in pending.values()]
                tally.end(index, outcome, partial(tally.seconds_left, left, slots))
        except KeyboardInterrupt:
            # The tasks get a KeyboardInterrupt too: fit saves a resumable checkpoint
            # (in place where the study folder is shared). Give them a moment to do so.
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=60)
            raise
        return tally.outcomes

    def _collect(self, ray, ref, spec: RunSpec, action: str, seconds: float) -> RunOutcome:
        """The outcome of a finished task; its files written into the study if they came back."""
        try:
            r = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the task died or was cancelled: train_one never raises
            text = str(exc).strip()
            first = next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__)
            summary = _record_killed(spec, f"{type(exc).__name__}: {first}", text[-4000:])
            return RunOutcome(spec, "failed", action, summary, seconds)
        if r["files"] is not None:
            _write_files(spec.run_dir, r["files"])
        return RunOutcome(spec, r["status"], action, r["summary"], r["seconds"], where=r["where"])


# --------------------------------------------------------------------------- the task (runs on a worker)
def _train_task(spec: RunSpec, action: str, dataset, study_file: str, token, files: dict, threads: float) -> dict:
    """Train one run on a Ray worker; the run folder's files come back unless it was trained in place."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    t0 = time.perf_counter()
    in_place = token is not None and _file_token(Path(study_file)) == token
    tmp = None
    if not in_place:
        tmp = Path(tempfile.mkdtemp(prefix="cifarzoo-run-"))
        spec = replace(spec, run_dir=tmp / spec.run_dir.name)
        for name, data in files.items():
            atomic_write_bytes(spec.run_dir / name, data)
    try:
        status, summary = train_one(spec, dataset, action=action)
        back = None if in_place else _read_files(spec.run_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"status": status, "summary": summary, "files": back, "where": _where(),
            "seconds": time.perf_counter() - t0}


def _where() -> str:
    """This machine, as a progress line names it: host name and the address its node uses."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host} ({ray.util.get_node_ip_address()})"
    except ImportError:
        pass
    return host


# --------------------------------------------------------------------------- run folders as bytes
def _file_token(path: Path):
    """Identifies one file: the same on every machine that sees it through a shared filesystem."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder, by path relative to it (temp files of an interrupted write left out)."""
    if not run_dir.is_dir():
        return {}
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not p.name.endswith(".tmp")}


def _write_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write a run folder that came back from a worker, each file atomically, ``summary.json`` last.

    ``summary.json`` is what marks a run done, so an interruption here leaves a run that
    is trained again, never one that looks finished with files missing. ``config.json``
    states the worker's temporary folder as ``run_dir``; it is set to this one.
    """
    for name in sorted(files, key=lambda n: n == SUMMARY_FILE):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CifarzooError(f"a Ray worker sent back {name!r}, a path outside its run folder")
        data = files[name]
        if name == CONFIG_FILE:
            info = json.loads(data)
            info["run_dir"] = str(run_dir)
            data = json_text(info).encode()
        atomic_write_bytes(run_dir / name, data)


# --------------------------------------------------------------------------- Ray itself
def _import_ray(*, loopback: bool):
    """Import Ray; for a study on this machine only, in its loopback mode (see RAY_LOOPBACK_ENV)."""
    import sys

    if loopback and "ray" not in sys.modules:
        os.environ.setdefault(RAY_LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError:
        raise CifarzooError("--executor ray needs Ray: pip install 'cifarzoo[ray]' (or pip install ray)") from None
    return ray


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def connect_ray(address: str | None = None, *, num_cpus: int | None = None):
    """``(ray, connected_here)``: Ray imported and connected as a study connects (see RayExecutor: None starts
    a local instance on 127.0.0.1 only); ``connected_here`` says whether the caller should ``ray.shutdown()``."""
    ray = _import_ray(loopback=address is None or _is_loopback(address))
    return ray, RayExecutor(address, num_cpus=num_cpus)._connect(ray)
