"""Who trains a study's runs: this process, one after the other, or Ray tasks on a cluster.

:func:`cifarzoo.study.runner.execute` decides which runs need training (resume and
skip rules, compatibility) and writes the report; an executor only trains the runs it
is handed and returns one :class:`~cifarzoo.study.training.RunOutcome` each, calling the
study's reporter as it goes. Either way a failed run is recorded in its
``summary.json`` (see ``train_one``) and the others go on.

- :class:`LocalExecutor` (the default): the runs one at a time in this process, with a
  progress line per epoch.
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
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from cifarzoo.errors import CifarzooError
from cifarzoo.io import atomic_write_bytes
from cifarzoo.study.plan import STUDY_FILE, RunSpec
from cifarzoo.study.training import RunOutcome, RunProgress, StudyReporter, estimate_seconds_left, train_one
from cifarzoo.train.rundir import CONFIG_FILE, SUMMARY_FILE, RunDir

# (plan position from 1, run, "trained" | "resumed")
Job = tuple[int, RunSpec, str]
# Ray makes a loopback-only instance when this is 0 (its default on macOS and Windows):
# every process binds to and advertises 127.0.0.1. Read when ray is imported.
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class LocalExecutor:
    """The runs one after the other in this process (no Ray needed)."""

    name = "local"

    def run(self, jobs: Sequence[Job], *, total: int, dataset, reporter: StudyReporter,
            costs: dict[str, float]) -> list[RunOutcome]:
        finished: list[tuple[float, float]] = []  # (wall seconds, cost) of the runs trained now
        outcomes = []
        for pos, (index, spec, action) in enumerate(jobs):
            upcoming = [costs[s.name] for _, s, _ in jobs[pos + 1:]]
            cost = costs[spec.name]
            reporter.on_run_start(index, total, spec, action,
                                  estimate_seconds_left(finished, upcoming, (0, spec.config.epochs, 0.0, cost)))
            progress = RunProgress(reporter, index, total, spec, finished, upcoming, cost)
            t0 = time.perf_counter()
            status, summary = train_one(spec, dataset, action=action, reporter=progress)
            wall = time.perf_counter() - t0
            if status == "finished" and action == "trained":  # a resumed run's wall time covers only its rest
                finished.append((wall, cost))
            outcome = RunOutcome(spec, status, action, summary, wall)
            outcomes.append(outcome)
            reporter.on_run_end(index, total, outcome, estimate_seconds_left(finished, upcoming))
        return outcomes


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
        if not cpus_per_run > 0:
            raise CifarzooError(f"--cpus-per-run must be positive, got {cpus_per_run!r}")
        if gpus_per_run is not None and gpus_per_run < 0:
            raise CifarzooError(f"--gpus-per-run must be 0 or more, got {gpus_per_run!r}")
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
        finished: list[tuple[float, float]] = []
        outcomes = []
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
                if outcome.status == "finished" and action == "trained":
                    finished.append((outcome.wall_seconds, costs[spec.name]))
                outcomes.append(outcome)
                left = [costs[p[1].name] for p in pending.values()]
                eta = estimate_seconds_left(finished, left)
                reporter.on_run_end(index, total, outcome,
                                    None if eta is None else eta / max(1, min(slots, len(left))))
        except KeyboardInterrupt:
            # The tasks get a KeyboardInterrupt too: fit saves a resumable checkpoint
            # (in place where the study folder is shared). Give them a moment to do so.
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=60)
            raise
        return outcomes

    def _collect(self, ray, ref, spec: RunSpec, action: str, seconds: float) -> RunOutcome:
        """The outcome of a finished task; its files written into the study if they came back."""
        try:
            r = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the task died or was cancelled: train_one never raises
            text = str(exc).strip()
            first = next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__)
            run = RunDir(spec.run_dir)
            summary = run.failure_summary(model=spec.model, seed=spec.seed, epochs=spec.config.epochs,
                                          data=spec.config.data, kind="killed",
                                          reason=f"{type(exc).__name__}: {first}", diagnosis=text[-4000:])
            run.write_summary(summary)
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
            data = json.dumps(info, indent=2).encode()
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
