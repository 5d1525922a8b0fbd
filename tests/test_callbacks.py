"""Callbacks: they read a run without changing it, may stop it (then it ends as a finished one does,
status "stopped"), and a run with early stopping or best-epoch weights resumes exactly; selection is
refused on the test set; a callback's error keeps a resumable checkpoint."""
from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

import cifarzoo as cz
from cifarzoo.cli import main
from cifarzoo.errors import CifarzooError
from cifarzoo.train import Callback, EarlyStopping, Reporter, StopTraining, TrainConfig, fit
from cifarzoo.train.checkpoint import load_checkpoint
from cifarzoo.train.rundir import FINISHED, RESUMABLE, RunDir

TIMES = ("epoch_seconds", "elapsed_seconds", "images_per_second")


@pytest.fixture(scope="module")
def data(sample_subset):
    """200 training and 50 test images of the bundled sample."""
    return sample_subset(20, 5)


def config(**kw) -> TrainConfig:  # 6 steps per epoch with val_split=40 (160 / 25), else 8
    base = dict(model="resnet18", width_mult=0.0625, epochs=3, batch_size=25, lr=0.05, device="cpu",
                precision="fp32", compile="off", seed=2, data="sample", warmup_epochs=0.5, allow_stall=True,
                threads=1, eval_batch_size=200)
    return TrainConfig(**{**base, **kw})


class Reading(Callback):
    """Records everything it is shown."""

    def __init__(self):
        self.info, self.rows, self.steps, self.summary = None, [], 0, None

    def on_start(self, info):
        self.info = info

    def on_step(self, epoch, step, steps, global_step):
        self.steps += 1

    def on_epoch_end(self, row):
        self.rows.append(row)

    def on_end(self, summary):
        self.summary = summary


class StopAfter(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, row):
        if row["epoch"] == self.epoch:
            raise StopTraining(f"enough after epoch {self.epoch}")


class FailAt(Callback):
    def __init__(self, step: int | None = None, epoch: int | None = None):
        self.step, self.epoch = step, epoch

    def on_step(self, epoch, step, steps, global_step):
        if global_step == self.step:
            raise ValueError("a bug in a callback")

    def on_epoch_end(self, row):
        if row["epoch"] == self.epoch:
            raise ValueError("a bug in a callback")


class CtrlCAfterEpoch(Reporter):
    """Ctrl-C as the callbacks are told an epoch ended (the old reporter= hook)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


def assert_same(a, b) -> None:
    """The same weights, metrics (times aside) and test figures."""
    ca, cb = load_checkpoint(a.run_dir), load_checkpoint(b.run_dir)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    assert [{k: v for k, v in r.items() if k not in TIMES} for r in a.metrics] == \
           [{k: v for k, v in r.items() if k not in TIMES} for r in b.metrics]
    for key in ("status", "test_acc", "test_loss", "test_acc_tta", "weights_epoch", "epochs_completed", "stop_reason"):
        assert a.summary.get(key) == b.summary.get(key), key


# --------------------------------------------------------------------------- reading never changes a run
def test_callbacks_see_the_run_and_never_change_its_numbers(data, tmp_path):
    plain = fit(config(), dataset=data, out_dir=tmp_path / "plain")
    reading = Reading()
    watched = fit(config(), dataset=data, out_dir=tmp_path / "watched", callbacks=[Callback(), reading])
    assert_same(plain, watched)
    assert reading.info["run_dir"] == str(tmp_path / "watched") and reading.info["data"]["eval_split"] == "test"
    assert reading.info["config"] == config().replace(batch_size=25).to_dict()
    assert reading.steps == 3 * 8 and [r["epoch"] for r in reading.rows] == [1, 2, 3]
    assert all(r["eval_split"] == "test" for r in reading.rows)
    assert reading.summary["status"] == "finished" and reading.summary["run_dir"] == str(tmp_path / "watched")
    assert watched.summary["weights_epoch"] == 3 and watched.summary["stop_reason"] is None


def test_a_custom_callback_is_called_beside_the_progress_display(data, tmp_path, capsys):
    reading = Reading()
    settings = {k: v for k, v in config(epochs=2).to_dict().items() if k not in ("model", "data")}
    cz.fit("resnet18", data=data, out=tmp_path / "run", callbacks=[reading], progress="auto", **settings)
    out = capsys.readouterr().out
    assert "epoch   1/2" in out and "epoch   2/2" in out and "test accuracy" in out
    assert len(reading.rows) == 2 and reading.summary["status"] == "finished"


# --------------------------------------------------------------------------- stopping
def test_stop_training_ends_the_run_with_its_final_evaluation_and_status_stopped(data, tmp_path):
    reading = Reading()
    result = fit(config(epochs=4), dataset=data, out_dir=tmp_path / "run", callbacks=[StopAfter(2), reading])
    s = result.summary
    assert s["status"] == "stopped" and s["stop_reason"] == "enough after epoch 2"
    assert s["epochs_completed"] == 2 and s["epochs"] == 4 and s["weights_epoch"] == 2
    assert 0 <= s["test_acc"] <= 1 and len(result.metrics) == 2
    assert json.loads((result.run_dir / "summary.json").read_text())["stop_reason"] == "enough after epoch 2"
    ckpt = load_checkpoint(result.run_dir)
    assert ckpt["finished"] and ckpt["epoch"] == 2 and ckpt["stop_reason"] == "enough after epoch 2"
    assert RunDir(result.run_dir).state() == FINISHED  # complete: nothing to resume
    assert reading.summary["status"] == "stopped" and len(reading.rows) == 2


def test_early_stopping_counts_evaluated_epochs_and_monitors_loss_or_accuracy():
    stop = EarlyStopping("val_acc", patience=2, min_delta=0.01)
    for epoch, acc in enumerate([0.5, 0.6, 0.605, math.nan], start=1):  # 0.605: not better by > 0.01
        stop.on_epoch_end({"epoch": epoch, "eval_acc": acc, "eval_loss": 1.0})
    assert stop.state_dict() == {"best": 0.6, "best_epoch": 2, "wait": 1}  # NaN: not evaluated, not counted
    with pytest.raises(StopTraining, match=r"val_acc did not improve .* \(best 0.6000 at epoch 2\)"):
        stop.on_epoch_end({"epoch": 5, "eval_acc": 0.59, "eval_loss": 1.0})
    loss = EarlyStopping("val_loss", patience=1)
    loss.on_epoch_end({"epoch": 1, "eval_acc": 0.1, "eval_loss": 2.0})
    loss.on_epoch_end({"epoch": 2, "eval_acc": 0.1, "eval_loss": 1.5})
    with pytest.raises(StopTraining):
        loss.on_epoch_end({"epoch": 3, "eval_acc": 0.9, "eval_loss": 1.5})
    copy = EarlyStopping("val_loss", patience=1)
    copy.load_state_dict(loss.state_dict())
    assert copy.state_dict() == loss.state_dict()


@pytest.mark.parametrize("interrupt", ["mid-epoch", "at an epoch's end"])
def test_early_stopping_and_keep_best_resume_exactly(data, tmp_path, stop_at, interrupt):
    # min_delta 1: no epoch can beat the first by more than 100%, so the run stops after epoch 3 (patience 2).
    c = config(epochs=5, val_split=40, keep_best=True, checkpoint_every=2)
    straight = fit(c, dataset=data, out_dir=tmp_path / "straight", callbacks=[EarlyStopping(patience=2, min_delta=1)])
    s = straight.summary
    assert s["status"] == "stopped" and s["epochs_completed"] == 3 and "val_acc did not improve" in s["stop_reason"]
    accs = [r["eval_acc"] for r in straight.metrics]
    assert s["weights_epoch"] == accs.index(max(accs)) + 1 and s["weights_eval_acc"] == max(accs)
    assert load_checkpoint(straight.run_dir)["best"]["epoch"] == s["weights_epoch"]

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        fit(c, dataset=data, out_dir=out, callbacks=[EarlyStopping(patience=2, min_delta=1)],
            reporter=stop_at(6 + 3) if interrupt == "mid-epoch" else CtrlCAfterEpoch(2))
    saved = load_checkpoint(out)
    state = saved["callbacks"]["0:EarlyStopping"]
    assert state["best_epoch"] == 1 and saved["best"]["epoch"] in (1, 2)
    # At an epoch's end the checkpoint holds the state after that epoch's on_epoch_end (epoch 2 counted).
    assert state["wait"] == (0 if interrupt == "mid-epoch" else 1)
    assert RunDir(out).state() == RESUMABLE
    resumed = fit(resume=out, dataset=data, callbacks=[EarlyStopping(patience=2, min_delta=1)])
    assert_same(straight, resumed)


def test_the_early_stopping_setting_resumes_exactly_on_its_own(data, tmp_path, stop_at):
    c = config(epochs=3, val_split=40, early_stopping=1, keep_best=True)
    straight = fit(c, dataset=data, out_dir=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        fit(c, dataset=data, out_dir=tmp_path / "resumed", reporter=stop_at(6 + 2))
    assert_same(straight, fit(resume=tmp_path / "resumed", dataset=data))


# --------------------------------------------------------------------------- refusals
def test_selection_on_the_test_set_is_refused_in_one_line(data, tmp_path):
    for kw in (dict(early_stopping=2), dict(keep_best=True)):
        with pytest.raises(CifarzooError, match="give --val-split .*never used for selection") as info:
            config(**kw)
        assert "\n" not in str(info.value)
    with pytest.raises(CifarzooError, match="evaluation split, which is the test set here; give val_split"):
        fit(config(), dataset=data, out_dir=tmp_path / "run", callbacks=[EarlyStopping()])
    assert not (tmp_path / "run").exists()  # refused before anything is written
    with pytest.raises(CifarzooError, match="monitor='acc'"):
        EarlyStopping("acc")
    with pytest.raises(CifarzooError, match="not a callback"):
        fit(config(), dataset=data, out_dir=tmp_path / "run", callbacks=[print])


def test_cli_early_stopping_and_keep_best(tmp_path, capsys):
    args = ["train", "resnet18", "--data", "sample", "--subset", "200", "--width-mult", "0.0625", "--epochs", "2",
            "--batch-size", "25", "--device", "cpu", "--precision", "fp32", "--threads", "1", "--allow-stall"]
    assert main([*args, "--early-stopping", "1", "--keep-best", "--out", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--val-split" in err and "\n" not in err
    assert main([*args, "--val-split", "40", "--early-stopping", "1", "--keep-best",
                 "--out", str(tmp_path / "run")]) == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["config"]["early_stopping"] == 1 and info["config"]["keep_best"] is True
    assert s["weights_epoch"] in (1, 2) and s["status"] in ("finished", "stopped")


# --------------------------------------------------------------------------- a callback's error
@pytest.mark.parametrize("where", ["on_step", "on_epoch_end"])
def test_a_callback_error_propagates_after_a_resumable_checkpoint(data, tmp_path, where):
    c = config(checkpoint_every=0)
    straight = fit(c, dataset=data, out_dir=tmp_path / "straight")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="a bug in a callback"):
        fit(c, dataset=data, out_dir=out, callbacks=[FailAt(step=11) if where == "on_step" else FailAt(epoch=2)])
    ckpt = load_checkpoint(out)
    assert (ckpt["epoch"], ckpt["partial"] and ckpt["partial"]["step"]) == ((1, 3) if where == "on_step" else (2, None))
    assert RunDir(out).state() == RESUMABLE and len(RunDir(out).read_metrics()) == ckpt["epoch"]
    assert_same(straight, fit(resume=out, dataset=data))


# --------------------------------------------------------------------------- studies
class MarkRun(Callback):
    """Leaves a file in each run's folder, naming how many runs this copy has seen."""

    def __init__(self):
        self.runs = 0

    def on_start(self, info):
        self.runs += 1
        Path(info["run_dir"], "marked.txt").write_text(str(self.runs))


class Unpicklable(Callback):
    def __init__(self):
        self.f = lambda: None


def test_benchmark_gives_each_run_its_own_copy_of_the_callbacks(data, tmp_path):
    tiny = dict(width_mult=0.0625, epochs=1, batch_size=25, device="cpu", precision="fp32", compile="off",
                threads=1, progress="none", jobs=1)
    study = cz.benchmark(["resnet18"], seeds=2, data=data, out=tmp_path / "s", callbacks=[MarkRun()], **tiny)
    marks = sorted(p.read_text() for p in study.out_dir.glob("runs/*/marked.txt"))
    assert marks == ["1", "1"]  # two runs, each with a fresh copy
    with pytest.raises(CifarzooError, match="cannot be pickled") as info:
        cz.benchmark(["resnet18"], data=data, out=tmp_path / "t", callbacks=[Unpicklable()], **tiny)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- structure
def test_run_state_reads_the_checkpoint_flag_without_loading_the_weights(data, tmp_path, monkeypatch, stop_at):
    with pytest.raises(KeyboardInterrupt):
        fit(config(), dataset=data, out_dir=tmp_path / "run", reporter=stop_at(10))
    monkeypatch.setattr(torch, "load", None)  # any full load would fail
    assert RunDir(tmp_path / "run").state() == RESUMABLE
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert RunDir(tmp_path / "other").state() == "foreign"


def test_the_run_folder_does_not_import_the_checkpoint_module():
    src = Path(__file__).resolve().parent.parent / "src" / "cifarzoo" / "train" / "rundir.py"
    imported = {n.module for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.ImportFrom)}
    assert "cifarzoo.train.checkpoint" not in imported  # checkpoint.py imports rundir.py: one way only
