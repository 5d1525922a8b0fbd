"""A study through Ray: a local instance, and a cluster started with ``ray start --head``.

Everything stays on the loopback interface: Ray in its single-machine mode
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set before ray is imported) binds and advertises
127.0.0.1 only, the head is started with ``--node-ip-address 127.0.0.1``, and token
authentication is off on both sides (nothing leaves the machine; no token file in
$HOME). Tiny runs (width 0.125, 300 training / 100 test images of the bundled sample, 1-2 epochs).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"
ray = pytest.importorskip("ray", reason="the Ray executor needs the optional extra cifarzoo[ray]")

from cifarzoo.cli import main  # noqa: E402
from cifarzoo.study import StudyReporter, run_study  # noqa: E402
from cifarzoo.study.executors import RayExecutor  # noqa: E402
from cifarzoo.study.plan import EVAL_FILE  # noqa: E402
from cifarzoo.train.rundir import run_state  # noqa: E402

TINY = dict(data="sample", width_mult=0.125, epochs=1, batch_size=50, device="cpu", precision="fp32",
            compile="off", channels_last=False)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def small(sample_subset):
    """300 training and 100 test images of the bundled sample (the study's dataset, put into Ray's store)."""
    return sample_subset(30, 10)


class Events(StudyReporter):
    def __init__(self):
        self.started, self.ended = [], []

    def on_run_start(self, index, total, spec, action, eta_seconds):
        self.started.append((spec.name, action))

    def on_run_end(self, index, total, outcome, eta_seconds):
        self.ended.append((outcome.spec.name, outcome.status, outcome.where))


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch):
    """A RAY_ADDRESS in the environment must not redirect a study that asks for a local instance."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    # Ray's workers import cifarzoo from this tree, as the test process does.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_study_records_a_failure_and_sends_run_folders_back(tmp_path, small):
    """Two runs on a local instance the executor starts; files travel back as from another machine.

    ``hidden`` is a VGG option that ResNet's builder refuses: resnet18 fails (a TypeError
    in the worker), vgg16 trains, and the study goes on to its report.
    """
    out = tmp_path / "s"
    events = Events()
    executor = RayExecutor(num_cpus=2, shared_fs=False)
    result = run_study(["vgg16", "resnet18"], preset="quick", out_dir=out, reporter=events, executor=executor,
                       dataset=small, model_kwargs={"hidden": 16}, **TINY)
    assert not ray.is_initialized()  # the instance it started is stopped again
    assert [(o.spec.name, o.status, o.action) for o in result.outcomes] == [
        ("vgg16-s0", "finished", "trained"), ("resnet18-s0", "failed", "trained")]
    assert sorted(events.started) == [("resnet18-s0", "queued"), ("vgg16-s0", "queued")]
    assert {e[0] for e in events.ended} == {"vgg16-s0", "resnet18-s0"}
    assert all(e[2].endswith("(127.0.0.1)") for e in events.ended)  # where it ran: host (node address)
    run = out / "runs" / "vgg16-s0"
    for f in ("config.json", "metrics.csv", "summary.json", "curves.png", "checkpoint.pt", EVAL_FILE,
              "confusion.json"):
        assert (run / f).is_file(), f
    assert json.loads((run / "config.json").read_text())["run_dir"] == str(run)  # not the worker's temp folder
    assert run_state(run) == "finished"
    failed = json.loads((out / "runs" / "resnet18-s0" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["kind"] == "error" and "hidden" in failed["reason"]
    assert "Failed runs" in (out / "report.html").read_text()
    assert json.loads((out / "results.json").read_text())["models"][0]["test_acc_mean"] is not None


def test_an_interrupted_study_resumes_through_ray(tmp_path, small):
    """Ctrl-C after the first of two epochs (in-process), then the same study through Ray.

    The interrupted run resumes from its checkpoint (its first epoch is kept, not
    trained again), on an instance this test started.
    """
    class StopAfterFirstEpoch(StudyReporter):
        def on_epoch_end(self, index, total, spec, row, eta_seconds):
            if row["epoch"] == 1:
                raise KeyboardInterrupt

    out = tmp_path / "s"
    kw = {**TINY, "epochs": 2, "dataset": small}
    with pytest.raises(KeyboardInterrupt):
        run_study(["vgg16"], preset="quick", out_dir=out, reporter=StopAfterFirstEpoch(), **kw)
    first = out / "runs" / "vgg16-s0"
    assert run_state(first) == "resume"
    epoch1 = (first / "metrics.csv").read_text().splitlines()[1]

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    events = Events()
    result = run_study(["vgg16"], preset="quick", out_dir=out, reporter=events, executor=RayExecutor(), **kw)
    assert ray.is_initialized()  # a connection it did not make is left as it was
    assert [(o.spec.name, o.action, o.status) for o in result.outcomes] == [("vgg16-s0", "resumed", "finished")]
    assert events.ended[0][2].endswith("(127.0.0.1)")
    rows = (first / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and rows[1] == epoch1
    # A third invocation has nothing left to do.
    again = run_study(["vgg16"], preset="quick", out_dir=out, executor=RayExecutor(), **kw)
    assert {o.action for o in again.outcomes} == {"skipped"}


def _own_ray_tasks() -> list[int]:
    """Pids of the Ray workers running ``_train_task`` under a raylet this test process started."""
    def ppid(pid):
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    out = []
    for d in Path("/proc").iterdir():
        try:
            title = (d / "cmdline").read_bytes().split(b"\0")[0]
            if d.name.isdigit() and title.startswith(b"ray::_train_task") and ppid(ppid(int(d.name))) == os.getpid():
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def test_a_killed_task_is_a_failed_run(tmp_path, small):
    """The worker training a run is killed (SIGKILL, as the kernel's OOM killer would):
    the run is recorded as failed with Ray's reason, and kept as such on the next invocation."""
    import threading

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    out = tmp_path / "s"
    kw = {**TINY, "epochs": 200, "dataset": small}  # far longer than it takes to kill it
    killed = []

    def kill_once_training():
        config = out / "runs" / "vgg16-s0" / "config.json"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and not killed:
            pids = _own_ray_tasks() if config.exists() else []
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_once_training, daemon=True)
    killer.start()
    result = run_study(["vgg16"], preset="quick", out_dir=out, executor=RayExecutor(), **kw)
    killer.join()
    assert killed, "no training worker was found to kill"
    o = result.outcomes[0]
    assert (o.status, o.summary["kind"]) == ("failed", "killed")
    assert o.summary["reason"].startswith(("WorkerCrashedError", "ActorDiedError", "NodeDiedError")), o.summary
    saved = json.loads((out / "runs" / "vgg16-s0" / "summary.json").read_text())
    assert saved["status"] == "failed" and saved["kind"] == "killed"
    again = run_study(["vgg16"], preset="quick", out_dir=out, executor=RayExecutor(), **kw)
    assert (again.outcomes[0].action, again.outcomes[0].status) == ("skipped", "failed")


@pytest.fixture
def ray_head(tmp_path):
    """``ray start --head`` on 127.0.0.1 and a free port; its whole process group is killed at the end.

    (Not ``ray stop``: that stops every Ray process of the user on this machine.)
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_bin = Path(sys.executable).with_name("ray")
    log = open(tmp_path / "ray-head.log", "w")
    p = subprocess.Popen([str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                          "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "RAY_ADDRESS": ""})
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log.close()


def _wait_for_head(address: str, timeout: float = 120) -> None:
    host, port = address.split(":")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"ray start --head did not listen on {address} in {timeout}s")


def test_cli_runs_a_study_on_a_ray_cluster(ray_head, tmp_path, capsys, small):
    _wait_for_head(ray_head)
    out = tmp_path / "s"
    argv = ["benchmark", "--models", "vgg16", "--preset", "quick", "--out", str(out), "--epochs", "1",
            "--device", "cpu", "--executor", "ray", "--address", ray_head, "--data", "sample"]
    # The quick preset's own narrow widths, on a 300-image part of the sample.
    import cifarzoo.data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifarzoo.data, "load", lambda spec=None, **kw: small)
        rc = main(argv)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "[1/1] vgg16-s0: queued" in text
    assert "[1/1] vgg16-s0 on " in text and "(127.0.0.1): test accuracy" in text
    assert (out / "runs" / "vgg16-s0" / "checkpoint.pt").is_file() and (out / "report.html").is_file()
    assert not ray.is_initialized()  # the CLI disconnected; the cluster itself goes on


def test_cli_ray_options_need_the_ray_executor(tmp_path, capsys):
    rc = main(["benchmark", "--models", "vgg16", "--preset", "quick", "--out", str(tmp_path / "s"),
               "--address", "127.0.0.1:6379", "--cpus-per-run", "2"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--address, --cpus-per-run: only with --executor ray" in err[0]
    rc = main(["benchmark", "--models", "vgg16", "--preset", "quick", "--out", str(tmp_path / "s"),
               "--executor", "ray", "--address", "head-without-port"])
    assert rc == 2 and "expected auto or HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing started, nothing written
