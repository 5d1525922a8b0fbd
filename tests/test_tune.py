"""`cifarzoo tune` / cz.tune: Ray Tune search on the validation split, locally and on a Ray head."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import make_fake_cifar, write_batches

from cifarzoo.cli import main
from cifarzoo.train.config import make_config

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

TINY = ["--width-mult", "0.0625", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
        "--eval-batch-size", "64"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """200 training images (20 per class: 180 to train, 20 to validate) and 20 test images, official layout."""
    folder = tmp_path_factory.mktemp("tune-data") / "cifar-10-batches-py"
    return write_batches(folder, make_fake_cifar(train_per_class=20, test_per_class=2))


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A `ray start --head` on 127.0.0.1 for this module's tests: its HOST:PORT. Stopped at the end: the
    process group it was started in (`--block` keeps `ray start` beside the head's processes)."""
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        ray_cli = shutil.which("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: stopped as one below
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                os.killpg(head.pid, signal.SIGKILL)
                pytest.fail("ray start --head did not come up")
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    os.killpg(head.pid, signal.SIGTERM)  # the head's processes, all started by this fixture
    try:
        head.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def _rows(folder: Path) -> list[dict]:
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tune_local_writes_trials_best_report_and_a_final_run(tmp_path, data_dir, capsys):
    out = tmp_path / "t"
    rc = main(["tune", "resnet18", "--preset", "quick", "--data", str(data_dir), *TINY, "--trials", "8",
               "--budget", "10m", "--out", str(out), "--quiet"])  # cap per trial 2.5 min: none hits it
    assert rc == 0, capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == 8 and {r["trial"] for r in rows} == {str(i) for i in range(1, 9)}
    assert all(r["status"] in ("finished", "stopped by ASHA") for r in rows)
    assert all(r["seed"] == "0" and r["val_acc_1"] for r in rows)
    assert {"lr", "weight_decay", "label_smoothing", "warmup_epochs"} <= set(rows[0])
    start = make_config("resnet18", preset="quick")  # the first trial trains the starting settings
    first = next(r for r in rows if r["trial"] == "1")
    assert [float(first[n]) for n in ("lr", "weight_decay", "label_smoothing")] == pytest.approx(
        [start.lr, start.weight_decay, start.label_smoothing])
    request = json.loads((out / "tune.json").read_text())
    assert (request["val_images"], request["train_images"]) == (20, 180)
    # best.json is a settings file that `train --config` takes, on the full training set
    best = json.loads((out / "best.json").read_text())
    assert best["val_split"] == 0 and best["width_mult"] == 0.0625 and best["data"] == str(data_dir)
    from cifarzoo.config_file import config_with_file, train_settings

    assert config_with_file(None, None, train_settings(out / "best.json"), {}).to_dict() == best
    final = json.loads((out / "final.json").read_text())
    assert final["train_images"] == 200 and 0 <= final["test_acc"] <= 1
    assert json.loads((out / "final" / "config.json").read_text())["config"] == best
    report = (out / "report.html").read_text()
    assert report.count("<img") == 3 and "Importance" in report and "test set" in report
    # Each trial's record is Ray's (every epoch's whole metrics row); its run folder was scratch, gone
    for progress in (out / "search").glob("*/progress.csv"):
        with open(progress, newline="") as f:
            epochs = list(csv.DictReader(f))
        assert epochs and {"val_acc", "train_acc", "eval_loss", "lr", "images_per_second"} <= set(epochs[0])
        assert not (progress.parent / "run").exists()
    assert len(list((out / "search").glob("*/progress.csv"))) == 8
    assert not list(Path(tempfile.gettempdir()).glob("cifarzoo-trial-*"))


def test_the_search_starts_from_the_starting_settings_where_the_priors_hold_them():
    from cifarzoo.tuning.space import default_space, start_point

    base = make_config("resnet50", preset="quick")
    space = default_space(base, 32, 4500, ("lr", "weight_decay", "batch_size", "epochs"))
    assert start_point(space, base, 32) == {"lr": base.lr, "weight_decay": base.weight_decay, "batch_size": 32,
                                           "epochs": base.epochs}
    narrowed = dict(space, lr={"log_uniform": [1.0, 2.0]})  # a --space without the starting lr: no start
    assert start_point(narrowed, base, 32) is None
    fixed = dict(space, lr={"uniform": [0.3, 0.3]})  # a range of one value is a constant to Ray, not a dimension
    assert "lr" not in start_point(fixed, base, 32)
    assert start_point(dict(space, batch_size={"choice": [32]}), base, 32)["batch_size"] == 32  # a dimension
    assert start_point(dict(space, batch_size={"choice": [50000]}), base, 32) is None


def test_asha_compares_trials_only_after_the_longest_warm_up():
    from cifarzoo.tuning.search import grace_epochs
    from cifarzoo.tuning.space import default_space

    warmup_end = default_space(make_config("vgg16", preset="quick"), 128, 4500, ("warmup_epochs",))
    assert warmup_end["warmup_epochs"]["uniform"][1] <= grace_epochs(26) == 8  # 26 epochs: 7.8 of warm-up at most
    assert grace_epochs(9) == 3 and grace_epochs(2) == 1 and grace_epochs(1) == 1


class Untouchable:
    """Test arrays that fail the test on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"the test set was touched ({name})")

    def __len__(self):
        raise AssertionError("the test set was touched (len)")

    def __getitem__(self, key):
        raise AssertionError("the test set was touched ([])")


def test_search_on_a_ray_head_never_touches_the_test_set(tmp_path, ray_head, fake_files):
    import cifarzoo as cz
    from cifarzoo.data import build_dataset

    f = fake_files.make(train_per_class=12, test_per_class=1)
    ds = build_dataset(f.train_images, f.train_labels, f.test_images, f.test_labels, f.classes, "fake")
    ds = replace(ds, test_images=Untouchable(), test_labels=Untouchable())
    out = tmp_path / "t"
    result = cz.tune("resnet18", data=ds, out=out, trials=2, budget="2m", executor="ray", address=ray_head,
                     final=False, width_mult=0.0625, epochs=2, batch_size=16, device="cpu", search="lr,batch_size")
    assert len(result.trials) == 2 and result.best is not None and result.final is None
    assert "data" not in result.best  # arrays in memory: best.json cannot name them
    assert all(t.status in ("finished", "stopped by ASHA") for t in result.trials)
    for t in result.trials:  # the lr drawn is per starting batch (16), scaled with the batch trained with
        assert t.settings["lr"] == pytest.approx(t.sampled["lr"] * t.settings["batch_size"] / 16)


def test_cli_on_a_ray_head_records_failures_and_resumes(tmp_path, ray_head, data_dir, capsys):
    (tmp_path / "space.toml").write_text("[batch_size]\nchoice = [50000]\n")  # more than the training images
    out = tmp_path / "t"
    args = ["tune", "resnet18", "--data", str(data_dir), *TINY, "--trials", "2", "--budget", "2m",
            "--executor", "ray", "--address", ray_head, "--space", str(tmp_path / "space.toml"), "--out", str(out),
            "--quiet"]
    assert main(args) == 1  # no trial trained: said, not a crash
    rows = _rows(out)
    assert [r["status"][:7] for r in rows] == ["failed:", "failed:"] and "exceeds" in rows[0]["status"]
    assert main(["tune", "--resume", str(out), "--epochs", "3"]) == 2
    assert "drop the other settings" in capsys.readouterr().err
    # restored (on the head it ran on, saved in tune.json): the same two failed trials, none added
    assert main(["tune", "--resume", str(out), "--quiet"]) == 1
    assert len(_rows(out)) == 2


@pytest.mark.parametrize("args, message", [
    (["--budget", "soon"], "--budget 'soon': expected a duration"),
    (["--search", "lr,momentum"], "--search 'lr,momentum'"),
    (["--trials", "0"], "--trials 0"),
    (["--address", "127.0.0.1:1"], "--address: only with --executor ray"),
])
def test_tune_refuses_bad_requests_in_one_line(tmp_path, data_dir, capsys, args, message):
    assert main(["tune", "resnet18", "--data", str(data_dir), "--out", str(tmp_path / "t"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_benchmark_tune_budget_tunes_each_model_and_the_report_says_so(tmp_path, ray_head, data_dir):
    from cifarzoo.study import plan_study
    from cifarzoo.study.plan import NOT_TUNED

    assert plan_study(["resnet18"], preset="quick").tuning == NOT_TUNED  # untuned: said in every report
    out = tmp_path / "study"
    rc = main(["benchmark", "--models", "resnet18", "--preset", "quick", "--data", str(data_dir), "--epochs", "1",
               "--width-mult", "0.0625", "--device", "cpu", "--tune-budget", "1m", "--tune-trials", "1",
               "--executor", "ray", "--address", ray_head, "--out", str(out), "--quiet"])
    assert rc == 0
    best = json.loads((out / "tune" / "resnet18" / "best.json").read_text())
    trained = json.loads((out / "runs" / "resnet18-s0" / "config.json").read_text())["config"]
    assert trained["lr"] == best["lr"] and trained["weight_decay"] == best["weight_decay"]
    report = (out / "report.md").read_text()
    assert "each model tuned for 1m" in report and "on 20 validation images" in report
    assert NOT_TUNED not in report


def test_an_interrupted_search_writes_its_trials_but_no_best_json(tmp_path, data_dir, monkeypatch):
    """Ctrl-C during a search: trials.csv and the report keep what was done, but no best.json, whose
    presence tells `benchmark --tune-budget` that a model's tuning is done (it would skip the rest)."""
    from types import SimpleNamespace

    from cifarzoo.study import executors
    from cifarzoo.tuning import run as tune_run
    from cifarzoo.tuning.results import Trial

    class Grid(list):  # Ray Tune's ResultGrid as Tuning.run reads it: one of two trials still running
        num_terminated, num_errors = 1, 0

    done = Trial(1, "a", {"lr": 0.1}, {"lr": 0.1}, [0.5, 0.6], 3.0, "finished", 0)
    running = Trial(2, "b", {"lr": 0.2}, {"lr": 0.2}, [0.4], 1.0, "stopped by ASHA", 0)
    monkeypatch.setattr(executors, "connect_ray", lambda address=None: (SimpleNamespace(), False))
    monkeypatch.setattr(tune_run, "_slots", lambda ray, cpus, gpus: 2)
    monkeypatch.setattr(tune_run, "run_search", lambda trainable, **kw: Grid([None, None]))
    monkeypatch.setattr(tune_run.res, "trials_of", lambda grid, **kw: [done, running])
    monkeypatch.setattr(tune_run.Tuning, "_trainable", lambda self, base, tuning: None)
    from cifarzoo.tuning import tune

    out = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt):
        tune("resnet18", out=out, data=data_dir, trials=2, budget="1m", final=False, search="lr", epochs=2)
    assert len(_rows(out)) == 2 and (out / "report.html").exists()
    assert not (out / "best.json").exists()


def test_the_search_sentence_says_how_many_trials_ran_side_by_side():
    from cifarzoo.tuning.results import describe

    request = dict(trials=6, budget="64m", budget_seconds=3840.0, cpus=1.0, gpus=0.0, slots=2, trial_cap_seconds=1280,
                   val_images=5000, train_images=45000, space={"lr": {"log_uniform": [0.01, 0.25]}})
    said = describe(request)
    assert "6 trials within 64m (3840 s) on 1 CPU per trial, 2 trials side by side, each trial capped at 1280 s" in said
    assert "5,000 validation images held out of 50,000" in said
    assert "on 1 CPU and 0.25 GPUs, each trial capped" in describe({**request, "gpus": 0.25, "slots": 1})
