"""Experiment tracking (cifarzoo.tracking): what TensorBoard and MLflow hold after a run, read back
with the tools' own readers (TensorBoard's EventAccumulator, mlflow.MlflowClient), never by parsing
their files; a study as one MLflow parent run with a child per run, against a real `mlflow server`;
the optional extras refused in one line when missing."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cifarzoo.cli import main
from cifarzoo.errors import CifarzooError
from cifarzoo.train.rundir import read_metrics

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--data", "sample", "--subset", "200", "--width-mult", "0.125", "--epochs", "2", "--batch-size", "50",
        "--device", "cpu", "--precision", "fp32", "--compile", "off"]


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its tables made, copied where a test needs a fresh one: MLflow
    makes them in seconds, once here rather than once per test."""
    MlflowClient = pytest.importorskip("mlflow").MlflowClient  # noqa: N806 (the class)

    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, empty_db):
    """Work in tmp_path with MLflow's defaults (no tracking URI or experiment from the environment)."""
    shutil.copy(empty_db, tmp_path / "mlflow.db")  # where MLflow 3 puts its store by default
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)
    import mlflow

    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # a set_tracking_uri
    return tmp_path


# --------------------------------------------------------------------------- names and extras
def test_unknown_logger_names_and_a_lone_mlflow_uri_are_one_line(tmp_path, capsys):
    assert main(["train", "resnet18", "--log", "tensorboard,wandb", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown logger 'wandb'" in err and "tensorboard, mlflow" in err
    assert main(["train", "resnet18", "--log", "tensorboard", "--mlflow-uri", "http://127.0.0.1:1"]) == 2
    assert "--mlflow-uri: only with --log mlflow" in capsys.readouterr().err
    assert main(["benchmark", "--log", "mlfow", "--out", str(tmp_path / "s")]) == 2
    assert "unknown logger 'mlfow'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_a_missing_extra_is_named(monkeypatch, capsys, tmp_path):
    import cifarzoo as cz

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(CifarzooError, match=r"pip install 'cifarzoo\[tensorboard\]'"):
        cz.TensorBoardLogger()
    assert main(["train", "resnet18", "--log", "tensorboard", "--out", str(tmp_path / "r")]) == 2
    assert "pip install 'cifarzoo[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cifarzoo_and_its_cli_work_without_tensorboard_and_mlflow(tmp_path):
    """In a fresh interpreter where neither package can be imported: `import cifarzoo`, the CLI's
    parser, and --log mlflow refused with the extra's name."""
    code = ("import sys\n"
            "for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard'): sys.modules[m] = None\n"
            "import cifarzoo, cifarzoo.tracking\n"
            "from cifarzoo.cli import main\n"
            f"sys.exit(main(['benchmark', '--log', 'mlflow', '--out', {str(tmp_path / 's')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(SRC)})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("cifarzoo benchmark: error: logging to mlflow needs the mlflow package: "
                                "pip install 'cifarzoo[mlflow]'")


# --------------------------------------------------------------------------- a run, through the CLI
def test_train_logs_to_tensorboard_and_mlflow(in_tmp, capsys):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    assert main(["train", "resnet18", *TINY, "--out", "run", "--quiet", "--log", "tensorboard,mlflow"]) == 0
    rows = read_metrics(in_tmp / "run" / "metrics.csv")  # 6 significant digits; TensorBoard keeps float32
    summary = json.loads((in_tmp / "run" / "summary.json").read_text())

    events = EventAccumulator(str(in_tmp / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.value for e in events.Scalars("test/acc")] == pytest.approx([r["eval_acc"] for r in rows], rel=1e-5)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([r["lr"] for r in rows], rel=1e-5)
    assert events.Scalars("final/test_acc")[-1].value == pytest.approx(summary["test_acc"], rel=1e-6)
    assert set(events.Tags()["images"]) == {"curves", "confusion"}
    assert events.Images("confusion")[0].width > 100
    start = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model"].string_value == "resnet18"
    assert start.session_start_info.hparams["epochs"].number_value == 2

    client = MlflowClient()  # MLflow's own default, as the run used it: ./mlflow.db
    assert client.tracking_uri == f"sqlite:///{in_tmp / 'mlflow.db'}"
    exp = client.get_experiment_by_name("cifarzoo")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["model"] == "resnet18" and run.data.params["width_mult"] == "0.125"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([r["train_loss"] for r in rows], rel=1e-5)
    assert run.data.metrics["final/test_acc"] == pytest.approx(summary["test_acc"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.csv", "summary.json", "checkpoint.pt", "curves.png", "tensorboard"} <= names
    assert ".lock" not in names


def test_a_resumed_run_continues_its_mlflow_run(in_tmp, sample_subset, stop_at):
    from mlflow import MlflowClient

    from cifarzoo.tracking import MLflowLogger
    from cifarzoo.train import TrainConfig, fit

    data = sample_subset(20, 10)  # 200 training images: 4 steps of 50 per epoch
    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=2, batch_size=50, device="cpu",
                         precision="fp32", compile="off", data="sample", allow_stall=True)
    first = MLflowLogger(artifacts=False)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the second epoch
        fit(config, dataset=data, out_dir=in_tmp / "run", callbacks=[first], reporter=stop_at(6))
    first.close()  # what the process's exit does: KILLED
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("cifarzoo").experiment_id])
    assert run.info.status == "KILLED"
    fit(resume=in_tmp / "run", dataset=data, callbacks=[MLflowLogger(artifacts=False)])
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]


# --------------------------------------------------------------------------- a study, on a tracking server
@pytest.fixture(scope="module", autouse=True)
def server_process(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with its SQLite backend, started with this module so that it
    makes its tables while the other tests run; its whole process group is ended at the end."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
             "--artifacts-destination", str(folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    yield proc, f"http://127.0.0.1:{port}", folder / "server.log"
    for sig in (signal.SIGTERM, signal.SIGKILL):  # the server's own worker processes too
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=3)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


@pytest.fixture
def mlflow_server(server_process):
    """The server's URL once it answers; the test is skipped if it does not start within a minute."""
    proc, url, log = server_process
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).read()
            return url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"mlflow server did not start: {log.read_text()[-300:]}")
            time.sleep(0.2)


def test_a_study_is_a_parent_run_with_a_child_per_run(tmp_path, mlflow_server, sample_subset, monkeypatch):
    """Two runs trained side by side in worker processes, each logging to the server as a child of
    the study's run."""
    from mlflow import MlflowClient

    from cifarzoo.study import run_study
    from cifarzoo.study.executors import LocalExecutor
    from cifarzoo.tracking import tracking_spec

    monkeypatch.setenv("PYTHONPATH", str(SRC))  # the workers import this tree
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    result = run_study(["resnet18"], preset="quick", seeds=2, out_dir=tmp_path / "study",
                       dataset=sample_subset(20, 10), executor=LocalExecutor(2), report=False,
                       tracking=tracking_spec("mlflow", mlflow_server), width_mult=0.125, epochs=2,
                       batch_size=50, device="cpu", precision="fp32", compile="off")
    assert [o.status for o in result.outcomes] == ["finished", "finished"]

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("cifarzoo")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"study study", "resnet18-s0", "resnet18-s1"}
    parent = runs["study study"]
    assert parent.info.status == "FINISHED" and parent.data.params["models"] == "resnet18"
    for name in ("resnet18-s0", "resnet18-s1"):
        child = runs[name]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.params["seed"] == name[-1]
        rows = read_metrics(tmp_path / "study" / "runs" / name / "metrics.csv")
        history = client.get_metric_history(child.info.run_id, "test/acc")
        assert [m.step for m in history] == [r["epoch"] for r in rows]
        assert [m.value for m in history] == pytest.approx([r["eval_acc"] for r in rows], rel=1e-5)
        assert "summary.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
