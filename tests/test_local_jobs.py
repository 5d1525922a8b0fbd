"""A study's runs side by side on this machine: ``LocalExecutor(jobs)`` and ``--jobs``.

Each run trains in a worker process of its own (``python -m cifarzoo.study.worker``) with its
share of the cores. Tiny runs: width 0.125, 100-300 training / 100 test images of the sample.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import cifarzoo.study.executors as executors
import cifarzoo.train
from cifarzoo.cli import main
from cifarzoo.study import StudyReporter, plan_study, run_study
from cifarzoo.study.executors import LocalExecutor, default_jobs
from cifarzoo.train.rundir import run_state

TINY = dict(data="sample", width_mult=0.125, epochs=2, batch_size=50, device="cpu", precision="fp32",
            compile="off", channels_last=False)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def small(sample_subset):
    return sample_subset(30, 10)


@pytest.fixture(autouse=True)
def workers_import_this_tree(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))


class Events(StudyReporter):
    def __init__(self):
        self.started, self.epochs, self.ended = [], [], []

    def on_run_start(self, index, total, spec, action, eta_seconds):
        self.started.append(spec.name)

    def on_epoch_end(self, index, total, spec, row, eta_seconds):
        self.epochs.append((spec.name, row["epoch"]))

    def on_run_end(self, index, total, outcome, eta_seconds):
        self.ended.append((outcome.spec.name, outcome.status))


def _worker_pids() -> list[int]:
    """Pids of the study workers this test process started."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit():
                continue
            args = (d / "cmdline").read_bytes().split(b"\0")
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if b"cifarzoo.study.worker" in args and int(stat[1]) == os.getpid():
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def test_runs_train_side_by_side_in_workers_as_they_would_here(tmp_path, small, monkeypatch):
    """Two runs in two workers: the same weights as the same runs trained in this process,
    every epoch reported, each run on its share of the cores (threads from OMP_NUM_THREADS)."""
    events = Events()
    with monkeypatch.context() as mp:  # a fit patched here cannot reach the workers' fresh interpreters
        mp.setattr(cifarzoo.train, "fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("in-process")))
        # the same bits as one thread here: the last run keeps its thread when the other ends
        mp.setattr(executors, "alone_threads", lambda *a: None)
        side = run_study(["vgg16", "resnet18"], preset="quick", out_dir=tmp_path / "side", dataset=small,
                         reporter=events, executor=LocalExecutor(2), report=False, **TINY)
    assert sorted((o.spec.name, o.status) for o in side.outcomes) == [("resnet18-s0", "finished"),
                                                                    ("vgg16-s0", "finished")]
    assert sorted(events.started) == ["resnet18-s0", "vgg16-s0"] and sorted(events.ended) == sorted(
        (o.spec.name, o.status) for o in side.outcomes)
    assert sorted(events.epochs) == [("resnet18-s0", 1), ("resnet18-s0", 2), ("vgg16-s0", 1), ("vgg16-s0", 2)]
    threads = max(1, executors.physical_cores() // 2)
    for name in ("vgg16-s0", "resnet18-s0"):
        info = json.loads((tmp_path / "side" / "runs" / name / "config.json").read_text())
        assert (info["threads"], info["threads_reason"]) == (threads, f"{threads}: OMP_NUM_THREADS")

    here = run_study(["vgg16", "resnet18"], preset="quick", out_dir=tmp_path / "here", dataset=small,
                     executor=LocalExecutor(1), threads=threads, report=False, **TINY)
    for o in here.outcomes:
        a = torch.load(tmp_path / "side" / "runs" / o.spec.name / "checkpoint.pt", weights_only=True)["state_dict"]
        b = torch.load(o.spec.run_dir / "checkpoint.pt", weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), o.spec.name


def test_a_worker_that_dies_is_a_failed_run_and_the_study_goes_on(tmp_path, small):
    """Workers killed (SIGKILL, as the OOM killer would) are failed runs; the report is written."""
    out = tmp_path / "s"
    killed = []

    def kill_workers_once_training():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and not killed:
            if list(out.glob("runs/*/config.json")):
                for pid in _worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_workers_once_training, daemon=True)
    killer.start()
    result = run_study(["vgg16", "resnet18"], preset="quick", out_dir=out, dataset=small,
                       executor=LocalExecutor(2), **{**TINY, "epochs": 100})
    killer.join()
    assert killed, "no worker was found to kill"
    failed = [o for o in result.outcomes if o.status == "failed"]
    assert failed and all(o.summary["kind"] == "killed" and "exit status -9" in o.summary["reason"] for o in failed)
    for o in failed:
        assert json.loads((o.spec.run_dir / "summary.json").read_text())["kind"] == "killed"
    assert "Failed runs" in (out / "report.html").read_text()


def test_ctrl_c_stops_every_worker_at_a_checkpoint_and_the_study_resumes(tmp_path, sample_subset):
    """SIGINT to the study's process (as Ctrl-C at a terminal or a notebook's interrupt): each
    worker saves a resumable checkpoint once; the next invocation resumes both runs."""
    import pickle

    data = tmp_path / "small.pkl"
    small = sample_subset(10, 10)
    data.write_bytes(pickle.dumps(small))
    out = tmp_path / "s"
    kw = {**TINY, "epochs": 60}
    script = (f"import pickle; from cifarzoo.progress import ConsoleStudyReporter; "
              f"from cifarzoo.study import run_study; from cifarzoo.study.executors import LocalExecutor; "
              f"run_study(['vgg16', 'resnet18'], preset='quick', out_dir={str(out)!r}, "
              f"dataset=pickle.load(open({str(data)!r}, 'rb')), reporter=ConsoleStudyReporter(), "
              f"executor=LocalExecutor(2), **{kw!r})")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    lines, training = [], set()
    for line in p.stdout:
        lines.append(line)
        if " epoch " in line:
            training.add(line.split()[1])
        if training == {"vgg16-s0", "resnet18-s0"}:  # both workers past their first epoch
            p.send_signal(signal.SIGINT)
            break
    rest = p.communicate(timeout=120)[0]
    assert p.returncode != 0 and "KeyboardInterrupt" in rest, "".join(lines) + rest
    runs = sorted((out / "runs").iterdir())
    assert [r.name for r in runs] == ["resnet18-s0", "vgg16-s0"]
    assert {run_state(r) for r in runs} == {"resume"}, "".join(lines) + rest
    kept = {r.name: (r / "metrics.csv").read_text().splitlines()[1:] for r in runs}

    again = run_study(["vgg16", "resnet18"], preset="quick", out_dir=out, dataset=small,
                      executor=LocalExecutor(2), report=False, **kw)
    assert sorted((o.spec.name, o.action, o.status) for o in again.outcomes) == [
        ("resnet18-s0", "resumed", "finished"), ("vgg16-s0", "resumed", "finished")]
    for r in runs:
        rows = (r / "metrics.csv").read_text().splitlines()[1:]
        assert len(rows) == 60 and rows[:len(kept[r.name])] == kept[r.name]


def test_quick_and_cpu_presets_train_one_run_per_core_on_a_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(executors, "physical_cores", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    models = ["vgg16", "resnet50"]
    assert default_jobs(plan_study(models, preset="quick", out_dir=tmp_path)) == 4
    assert default_jobs(plan_study(models, preset="cpu", out_dir=tmp_path)) == 4
    assert default_jobs(plan_study(models, preset="quick", out_dir=tmp_path, threads=2)) == 2
    assert default_jobs(plan_study(models, preset="standard", out_dir=tmp_path)) == 1  # a GPU preset
    assert default_jobs(plan_study(models, preset="quick", out_dir=tmp_path, device="cuda")) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_jobs(plan_study(models, preset="quick", out_dir=tmp_path)) == 1  # auto: the GPU


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs must be an integer in [1, 1024], got 0"),
    (["--jobs", "2", "--executor", "ray"], "--jobs: only with --executor local"),
])
def test_cli_jobs_errors_are_one_line(tmp_path, capsys, argv, message):
    rc = main(["benchmark", "--models", "vgg16", "--preset", "quick", "--out", str(tmp_path / "s"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "s").exists()


def test_a_run_left_alone_is_told_to_take_every_core(monkeypatch):
    """Once no run waits, the study tells each running worker (without threads of its own) its
    share of all the cores; the worker takes it up at its next step, in its training thread."""
    from multiprocessing import Pipe

    from cifarzoo.study.worker import _EpochEvents

    monkeypatch.setattr(executors, "physical_cores", lambda: 2)
    plan = plan_study(["vgg16", "resnet18"], preset="quick", out_dir="x", **TINY)
    study_end, worker_end = Pipe()
    pool = executors._Workers([], 2, 2, None, StudyReporter(), {})
    mine = executors._Running(1, plan.runs[0], "trained", None, study_end, 0.0, threads=1)
    pool.running = {study_end: mine}
    pool._share_cores()
    assert mine.threads == 2 and worker_end.poll(1) and worker_end.recv() == ("threads", 2)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, b = Pipe()
        a.send(("threads", 2))
        _EpochEvents(b).on_step(1, 1, 10, 1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

    # a run with threads of its own keeps them; while a run waits, nothing changes
    own = executors._Running(2, plan_study(["vgg16"], preset="quick", out_dir="x", threads=1, **TINY).runs[0],
                             "trained", None, study_end, 0.0, threads=1)
    pool.running = {study_end: own}
    pool._share_cores()
    pool.running, pool.waiting = {study_end: mine}, [(2, plan.runs[1], "trained")]
    mine.threads = 1
    pool._share_cores()
    assert own.threads == 1 and mine.threads == 1 and not worker_end.poll(0.2)


def test_every_executor_tallies_ended_runs_one_way():
    """Only a run trained from scratch prices the time left (a resumed run's wall time covers only its
    rest); the reporter hears of each end after it is counted, with the time left over the free slots."""
    from types import SimpleNamespace

    from cifarzoo.study.training import RunOutcome

    heard = []

    class Ends(StudyReporter):
        def on_run_end(self, index, total, outcome, eta_seconds):
            heard.append((index, total, outcome.spec.name, eta_seconds))

    tally = executors._Tally(Ends(), 4, {"a": 1.0, "b": 2.0, "c": 1.0})
    spec = {n: SimpleNamespace(name=n) for n in "abc"}
    tally.end(1, RunOutcome(spec["c"], "finished", "resumed", {}, 5.0), lambda: tally.seconds_left([2.0]))
    tally.end(2, RunOutcome(spec["a"], "finished", "trained", {}, 10.0), lambda: tally.seconds_left([2.0, 1.0], 2))
    tally.end(3, RunOutcome(spec["b"], "failed", "trained", {}, 3.0), lambda: tally.seconds_left([]))
    assert tally.finished == [(10.0, 1.0)]
    assert [o.spec.name for o in tally.outcomes] == ["c", "a", "b"]
    assert heard == [(1, 4, "c", None), (2, 4, "a", 15.0), (3, 4, "b", 0.0)]
