"""Honest timing and no wasted wall time: the untimed warm-up, evaluation and checkpoint cadence,
one final pass for the plain and TTA results, and the study report reusing it."""
from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch

from cifarzoo.data import Dataset
from cifarzoo.errors import CifarzooError
from cifarzoo.inference import predict_logits, predict_tta_logits
from cifarzoo.train import Reporter, TrainConfig, fit, make_config
from cifarzoo.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def tiny(sample_subset) -> Dataset:
    """320 training and 100 test images of the bundled sample (class-balanced)."""
    return sample_subset(32, 10)


def config(**kw) -> TrainConfig:
    base = dict(model="resnet18", width_mult=0.125, epochs=2, batch_size=32, lr=0.05, device="cpu",
                precision="fp32", compile="off", seed=3, data="sample", warmup_epochs=0.5, allow_stall=True)
    return TrainConfig(**{**base, **kw})


def assert_same_run(a, b):
    """Same final weights (every saved state) and the same per-epoch figures, bit for bit."""
    ca, cb = load_checkpoint(a.run_dir), load_checkpoint(b.run_dir)
    for key in ("state_dict", "train_state_dict", "ema_state_dict"):
        assert (key in ca) == (key in cb)
        if key in ca:
            for k in ca[key]:
                assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    for ra, rb in zip(a.metrics, b.metrics, strict=True):
        for k in ("train_loss", "train_acc", "eval_loss", "eval_acc", "lr"):
            assert ra[k] == rb[k] or (np.isnan(ra[k]) and np.isnan(rb[k])), (ra["epoch"], k)
    assert a.summary["test_acc"] == b.summary["test_acc"]


# --------------------------------------------------------------------------- warm-up
@pytest.mark.parametrize("recipe", [
    # VGG's dropout draws from the torch RNG; EMA and lookahead keep state of their own.
    dict(model="vgg16", ema=True, lookahead=True, label_smoothing=0.1),
    # airbench's Muon: momentum on 2-D stand-ins, the whitening-bias freeze counts steps.
    dict(model="fastnet", optimizer="muon", whiten_init=True, whiten_bias_epochs=1, bn_bias_decay=4e-5,
         bias_lr_scale=8.0, augment="crop,altflip", crop_pad=2),
], ids=["vgg16-ema-lookahead-dropout", "fastnet-muon"])
def test_warm_up_leaves_the_run_bit_for_bit_unchanged(tiny, tmp_path, recipe):
    if recipe.get("optimizer") == "muon" and not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    c = config(**recipe)
    plain = fit(c.replace(warmup="off"), dataset=tiny, out_dir=tmp_path / "plain")
    warmed = fit(c.replace(warmup="on"), dataset=tiny, out_dir=tmp_path / "warmed")
    assert plain.summary["warmup_seconds"] is None and warmed.summary["warmup_seconds"] > 0
    assert warmed.summary["compile_seconds"] is None  # not compiled: nothing of it was compilation
    assert_same_run(plain, warmed)


def test_warm_up_defaults_off_in_eager_cpu_runs_and_is_validated():
    from cifarzoo.train.loop import wants_warm_up

    cpu = torch.device("cpu")
    assert not wants_warm_up(config(), cpu, compiled=False)  # nothing to amortize on CPU eager
    assert wants_warm_up(config(), cpu, compiled=True)
    assert wants_warm_up(config(), torch.device("cuda"), compiled=False)  # cuDNN search, lazy loading
    assert not wants_warm_up(config(warmup="off"), cpu, compiled=True)
    with pytest.raises(CifarzooError, match="--warmup"):
        config(warmup="sometimes")


class DynamoCounts(Reporter):
    """Dynamo's compilation counters when training starts (after the warm-up) and when it ends."""

    @staticmethod
    def counts() -> tuple[int, int, int]:
        from torch._dynamo.utils import counters

        return counters["frames"]["total"], counters["stats"]["unique_graphs"], counters["aot_autograd"]["total"]

    def on_start(self, info):
        self.start = self.counts()

    def on_end(self, summary):
        self.end = self.counts()


def test_nothing_recompiles_after_the_warm_up(tiny, tmp_path, monkeypatch):
    """--compile on: the warm-up compiles the forward and backward graphs; the timed steps
    (across epochs, with evaluations of the same module in between) reuse them.

    Recompilation is decided by dynamo's guards, not by the backend: the test compiles with
    the aot_eager backend, which keeps it fast (inductor would spend a minute in a C++ compiler).
    """
    import torch._dynamo

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    before = DynamoCounts.counts()
    rep = DynamoCounts()
    result = fit(config(model="fastnet", compile="on", epochs=2, eval_every=1), dataset=tiny,
                 out_dir=tmp_path / "run", reporter=rep)
    assert rep.start[0] > before[0] and rep.start[2] > before[2]  # the warm-up compiled
    assert rep.end == rep.start  # and nothing compiled after it
    assert result.summary["compiled"] and result.summary["compile_seconds"] is not None
    assert result.summary["warmup_seconds"] >= result.summary["compile_seconds"] >= 0
    torch._dynamo.reset()


# --------------------------------------------------------------------------- cadence
class CrashAt(Reporter):
    def __init__(self, step: int):
        self.step = step

    def on_step(self, epoch, step, steps, global_step):
        if global_step == self.step:
            raise RuntimeError("simulated crash")


def test_eval_every_leaves_empty_eval_cells_and_curves_use_evaluated_epochs(tiny, tmp_path):
    from cifarzoo.api import Run

    result = fit(config(epochs=4, eval_every=3), dataset=tiny, out_dir=tmp_path / "run")
    evaluated = [r["epoch"] for r in result.metrics if not np.isnan(r["eval_acc"])]
    assert evaluated == [3, 4]  # every 3rd epoch and always the last
    with open(result.run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["eval_acc"] == "" for r in rows] == [True, True, False, False]
    assert result.metrics[-1]["eval_acc"] == result.summary["test_acc"]  # the final pass, reused
    fig = Run(result.run_dir).plot()
    eval_line = fig.axes[1].lines[1]  # train, then eval
    assert list(eval_line.get_xdata()) == [3, 4]


def test_checkpoint_every_then_resume_after_a_crash_continues_from_the_last_checkpoint(tiny, tmp_path):
    c = config(epochs=4, checkpoint_every=2, batch_size=64)  # 5 steps per epoch
    straight = fit(c, dataset=tiny, out_dir=tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated"):
        fit(c, dataset=tiny, out_dir=tmp_path / "crashed", reporter=CrashAt(18))  # in epoch 4
    assert load_checkpoint(tmp_path / "crashed")["epoch"] == 2  # epoch 3 left no checkpoint
    resumed = fit(resume=tmp_path / "crashed", dataset=tiny)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3, 4]  # epoch 3 redone, not repeated
    with open(resumed.run_dir / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    assert_same_run(straight, resumed)


class NoCheckpointMidRun(Reporter):
    def __init__(self, path):
        self.path, self.seen = path, []

    def on_epoch_end(self, row):
        self.seen.append(self.path.exists())


def test_checkpoint_every_zero_writes_only_the_final_one_but_ctrl_c_still_saves(tiny, tmp_path):
    c = config(epochs=2, checkpoint_every=0)
    rep = NoCheckpointMidRun(tmp_path / "run" / "checkpoint.pt")
    straight = fit(c, dataset=tiny, out_dir=tmp_path / "run", reporter=rep)
    assert rep.seen == [False, False] and load_checkpoint(straight.run_dir)["finished"]

    class CtrlC(Reporter):
        def on_step(self, epoch, step, steps, global_step):
            if global_step == 14:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(c, dataset=tiny, out_dir=tmp_path / "stopped", reporter=CtrlC())
    assert load_checkpoint(tmp_path / "stopped")["partial"]["step"] == 4
    assert_same_run(straight, fit(resume=tmp_path / "stopped", dataset=tiny))


# --------------------------------------------------------------------------- the final pass
def test_one_pass_per_view_gives_every_tta_level(tiny):
    from cifarzoo import models

    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=10, width_mult=0.125)
    images = tiny.test_images[:40]
    got = predict_tta_logits(model, images, tiny.mean, tiny.std, levels=(0, 1, 2), batch_size=16)
    for level in (0, 1, 2):
        want = predict_logits(model, images, tiny.mean, tiny.std, tta=level, batch_size=16)
        torch.testing.assert_close(got[level], want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got[1], got[2])


def test_summary_reports_flip_tta_and_multi_crop_from_the_same_pass(tiny, tmp_path):
    from cifarzoo.inference import loss_and_accuracy
    from cifarzoo.train.checkpoint import load_model

    result = fit(config(epochs=1, tta_level=2), dataset=tiny, out_dir=tmp_path / "run")
    s = result.summary
    assert s["tta_level"] == 2 and 0 <= s["test_acc_tta_level"] <= 1
    model, _ = load_model(result.run_dir)
    for tta, key in ((0, "test_loss"), (1, "test_loss_tta"), (2, "test_loss_tta_level")):
        logits = predict_logits(model, tiny.test_images, tiny.mean, tiny.std, tta=tta)
        assert loss_and_accuracy(logits, tiny.test_labels)[0] == pytest.approx(s[key], rel=1e-5)
    plain = fit(config(epochs=1), dataset=tiny, out_dir=tmp_path / "plain").summary
    assert "test_acc_tta_level" not in plain and "tta_level" not in plain


def test_study_report_reuses_the_runs_final_logits(tiny, tmp_path, monkeypatch):
    """train_one hands fit's final logits to the report's evaluation: no checkpoint reload, no second pass."""
    import cifarzoo.evaluate
    from cifarzoo.io import read_json_object
    from cifarzoo.study.plan import EVAL_FILE, RunSpec
    from cifarzoo.study.training import train_one

    def no_second_evaluation(*a, **k):
        raise AssertionError("evaluate() called: the run's final logits were not reused")

    monkeypatch.setattr(cifarzoo.evaluate, "evaluate", no_second_evaluation)
    spec = RunSpec("resnet18", 3, config(epochs=1), tmp_path / "run")
    status, summary = train_one(spec, tiny, action="trained")
    record = read_json_object(spec.run_dir / EVAL_FILE)
    assert status == "finished" and "error" not in record
    assert record["accuracy"] == summary["test_acc"] and record["test_images"] == len(tiny.test_labels)
    assert (spec.run_dir / "confusion.json").exists()


# --------------------------------------------------------------------------- presets and recipes
# Each study model's time target on one H100 (seconds) and the reference eager bf16 training
# throughput its `standard` epochs were chosen from (img/s; xception's estimated from its
# MACs against ResNet50's): the recipes must fit 90% of the target (train/config.py).
TARGETS = {"vgg16": (45, 77_600), "vgg19": (60, 55_600), "resnet18": (50, 48_600), "resnet50": (120, 13_200),
           "inception": (150, 6_700), "xception": (120, 13_200 * 1.30 / 1.36)}


@pytest.mark.parametrize("model", sorted(TARGETS))
def test_standard_recipes_fit_their_time_budgets_and_average_their_weights(model):
    seconds, throughput = TARGETS[model]
    c = make_config(model, preset="standard")
    assert c.epochs * 50_000 / throughput <= 0.9 * seconds
    assert c.epochs * 50_000 / throughput >= 0.75 * seconds  # and use most of it
    assert c.lookahead or c.ema
    assert c.schedule == "onecycle" and c.label_smoothing > 0 and 0 < c.warmup_epochs < c.epochs / 2


def test_gpu_presets_evaluate_and_checkpoint_rarely_cpu_presets_every_epoch():
    from cifarzoo import models

    for preset in ("standard", "airbench", "full", "seed"):
        c = make_config("resnet18", preset=preset)
        assert (c.eval_every, c.checkpoint_every) == (10, 0), preset
    q = make_config("resnet18", preset="quick")
    assert (q.eval_every, q.checkpoint_every, q.lookahead) == (1, 1, False)
    assert make_config("fastnet", preset="quick").lookahead  # fastnet's own recipe keeps it
    for preset in (None, "quick", "cpu"):  # no dropout in VGG's head (quick: tuned so, vgg19 64% vs 56%)
        vgg = models.create("vgg16", num_classes=10, width_mult=0.125,
                            **make_config("vgg16", preset=preset).model_kwargs)
        assert all(m.p == 0 for m in vgg.modules() if isinstance(m, torch.nn.Dropout)), preset


def test_the_training_split_is_prenormalized_in_half_precision_on_cuda_only():
    from cifarzoo.train.loop import prenormalized_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert prenormalized_dtype(cuda, "bf16") is torch.bfloat16
    assert prenormalized_dtype(cuda, "fp16") is torch.float16
    assert prenormalized_dtype(cuda, "fp32") is None and prenormalized_dtype(cpu, "bf16") is None
