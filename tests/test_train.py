"""The trainer: run folder, exact resume, fail-fast guards, no test-set selection."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from cifarzoo.data import Dataset
from cifarzoo.errors import CifarzooError, TrainingError
from cifarzoo.train import Reporter, TrainConfig, fit, make_config
from cifarzoo.train.checkpoint import load_checkpoint
from cifarzoo.train.loop import split_dataset
from cifarzoo.train.optim import lr_factor, param_groups


@pytest.fixture(scope="module")
def tiny(sample_subset) -> Dataset:
    """640 training and 200 test images of the real bundled sample (class-balanced)."""
    return sample_subset(64, 20)


def tiny_config(**kw) -> TrainConfig:
    base = dict(model="resnet18", width_mult=0.125, epochs=2, batch_size=64, lr=0.05, device="cpu",
                precision="fp32", compile="off", seed=1, data="sample", warmup_epochs=0.5,
                allow_stall=True)
    base.update(kw)
    return TrainConfig(**base)


def test_run_folder_has_every_record(tiny, tmp_path):
    result = fit(tiny_config(), dataset=tiny, out_dir=tmp_path / "run")
    run = result.run_dir
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "summary.json", "curves.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["model"] == "resnet18"
    assert config["data"]["mean"] == pytest.approx(list(tiny.mean))
    assert {"python", "torch", "cifarzoo"} <= set(config["versions"])
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc",
                            "epoch_seconds", "images_per_second"}
    summary = json.loads((run / "summary.json").read_text())
    for key in ("test_acc", "test_loss", "test_acc_tta", "test_loss_tta", "train_seconds", "images_per_second",
                "peak_memory_bytes", "parameters", "macs"):
        assert isinstance(summary[key], (int, float)) and math.isfinite(summary[key]), key
    assert summary["macs"] > 0 and summary["parameters"] > 0
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_is_weights_only_and_self_describing(tiny, tmp_path):
    run = fit(tiny_config(epochs=1), dataset=tiny, out_dir=tmp_path / "run").run_dir
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    assert raw["model"]["name"] == "resnet18"
    assert raw["model"]["kwargs"]["width_mult"] == 0.125
    assert raw["classes"] == list(tiny.classes)
    assert raw["normalization"]["mean"] == pytest.approx(list(tiny.mean))
    assert raw["config"]["seed"] == 1 and raw["finished"] is True
    for key in ("optimizer", "scheduler", "rng", "metrics", "state_dict"):
        assert key in raw


def test_final_checkpoint_is_last_epoch_not_best(tiny, tmp_path):
    result = fit(tiny_config(epochs=3), dataset=tiny, out_dir=tmp_path / "run")
    ckpt = load_checkpoint(result.run_dir)
    assert ckpt["epoch"] == 3
    # The summary's test accuracy is that of the final weights, re-measured here.
    from cifarzoo.evaluate import evaluate

    r = evaluate(result.run_dir, dataset=tiny, device="cpu", save=False)
    assert r.accuracy == pytest.approx(result.summary["test_acc"])


@pytest.mark.parametrize("stop_step", [15, 10])  # mid-epoch 2, and exactly the end of epoch 1 (10 steps/epoch)
def test_resume_is_bit_for_bit(tiny, tmp_path, stop_step, stop_at):
    config = tiny_config(epochs=2, augment="crop,flip,cutout")
    straight = fit(config, dataset=tiny, out_dir=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        fit(config, dataset=tiny, out_dir=tmp_path / "broken", reporter=stop_at(stop_step))
    interrupted = load_checkpoint(tmp_path / "broken")
    assert interrupted["finished"] is False
    resumed = fit(resume=tmp_path / "broken", dataset=tiny)
    a = load_checkpoint(straight.run_dir)["state_dict"]
    b = load_checkpoint(resumed.run_dir)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for ra, rb in zip(straight.metrics, resumed.metrics):
        assert ra["train_loss"] == rb["train_loss"] and ra["eval_acc"] == rb["eval_acc"]


def test_one_training_step_is_public_and_is_what_fit_runs(tiny):
    """make_step builds the recipe's optimizer groups, schedule and lookahead; a step returns device tensors."""
    from cifarzoo.train import build_model, make_step

    config = tiny_config(model="fastnet", whiten_init=True, lookahead=True, bias_lr_scale=4.0)
    model = build_model(config, 10, torch.device("cpu"))
    assert not model.whiten.weight.requires_grad  # the frozen whitening stem
    step = make_step(model, config, torch.device("cpu"), total_steps=20, steps_per_epoch=10)
    assert len(step.optimizer.param_groups) == 3 and step.lookahead is not None
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    first = step(x, y)[0].item()
    for _ in range(8):
        loss, logits = step(x, y)
    assert logits.shape == (16, 10) and not loss.requires_grad
    assert step.global_step == 9 and loss.item() < first
    state = step.state_dict()
    assert {"state_dict", "optimizer", "scheduler", "scaler", "lookahead"} <= set(state)


def test_resume_of_finished_run_is_an_error(tiny, tmp_path):
    fit(tiny_config(epochs=1), dataset=tiny, out_dir=tmp_path / "run")
    with pytest.raises(CifarzooError, match="already finished"):
        fit(resume=tmp_path / "run", dataset=tiny)


def unlearnable(ds: Dataset) -> Dataset:
    """``ds`` with every training image replaced by the first one: the network sees one image with
    balanced labels, so on any CPU it predicts one distribution for all (loss >= ln 10, accuracy at
    the predicted class's share of the labels)."""
    same = np.broadcast_to(ds.train_images[:1], ds.train_images.shape).copy()
    return Dataset(same, ds.train_labels, ds.test_images, ds.test_labels, ds.classes, "one image", ds.mean, ds.std)


def test_stall_stops_within_first_epoch(tiny, tmp_path):
    # The seed study's failure, provoked with a run that cannot learn whatever the CPU's rounding.
    # batch 16: 40 steps per epoch, more than the 30-step minimum for a verdict.
    config = tiny_config(optimizer="adam", lr=1e-3, schedule="constant", warmup_epochs=0, epochs=5,
                         batch_size=16, allow_stall=False, augment="none")
    seen = []

    class Count(Reporter):
        def on_step(self, epoch, step, steps, global_step):
            seen.append(global_step)

    with pytest.raises(TrainingError) as info:
        fit(config, dataset=unlearnable(tiny), out_dir=tmp_path / "run", reporter=Count())
    assert info.value.kind == "stall"
    assert max(seen) <= 40  # one epoch
    msg = str(info.value)
    assert "not learning" in msg and "learning rate too high" in msg and "--allow-stall" in msg


def test_a_loss_that_explodes_later_is_stopped_as_diverged(tiny, tmp_path, monkeypatch):
    import cifarzoo.train.step as step_mod

    real_loss, explode = step_mod.model_loss, [False]

    def loss_that_explodes(out, y, c):  # finite but 10^5 times larger from epoch 2 on
        loss, logits = real_loss(out, y, c)
        return (loss * 1e5, logits) if explode[0] else (loss, logits)

    class AfterEpoch1(Reporter):
        def on_epoch_end(self, row):
            explode[0] = True

    monkeypatch.setattr(step_mod, "model_loss", loss_that_explodes)
    with pytest.raises(TrainingError, match=r"diverged: .* at step 20 \(epoch 2\)") as info:
        fit(tiny_config(epochs=3, lr=1e-4), dataset=tiny, out_dir=tmp_path / "run", reporter=AfterEpoch1())
    assert info.value.kind == "diverged" and "learning rate" in info.value.diagnosis
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1


def test_stall_is_detected_at_chance_with_loss_at_ln10(tiny, tmp_path):
    # Shuffled labels: nothing to learn, loss stays near ln 10 and accuracy at chance.
    rng = np.random.default_rng(0)
    noise = Dataset(tiny.train_images, rng.permutation(tiny.train_labels), tiny.test_images, tiny.test_labels,
                    tiny.classes, "noise", tiny.mean, tiny.std)
    config = tiny_config(optimizer="sgd", lr=1e-5, schedule="constant", warmup_epochs=0, epochs=3,
                         label_smoothing=0.0, allow_stall=False, stall_steps=10)
    with pytest.raises(TrainingError, match="not learning after 10 steps") as info:
        fit(config, dataset=noise, out_dir=tmp_path / "run")
    assert info.value.kind == "stall"
    # --allow-stall trains on.
    fit(config.replace(allow_stall=True, epochs=1), dataset=noise, out_dir=tmp_path / "run2")


def test_nonfinite_loss_names_step_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    import cifarzoo.train.step as step_mod

    poisoned = [False]
    real_loss = step_mod.model_loss

    def loss_that_turns_nan(out, y, c):
        loss, logits = real_loss(out, y, c)
        return (loss * float("nan"), logits) if poisoned[0] else (loss, logits)

    class PoisonAfterEpoch1(Reporter):
        def on_epoch_end(self, row):
            poisoned[0] = row["epoch"] >= 1

    monkeypatch.setattr(step_mod, "model_loss", loss_that_turns_nan)
    with pytest.raises(TrainingError, match=r"step 11 \(epoch 2\)") as info:
        fit(tiny_config(epochs=3), dataset=tiny, out_dir=tmp_path / "run", reporter=PoisonAfterEpoch1())
    assert info.value.kind == "nan"
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_subset_and_val_split_are_class_balanced(tiny):
    c = tiny_config(subset=200, val_split=50)
    tx, ty, vx, vy, name = split_dataset(tiny, c)
    assert name == "val" and len(ty) == 150 and len(vy) == 50
    assert np.bincount(ty, minlength=10).tolist() == [15] * 10
    assert np.bincount(vy, minlength=10).tolist() == [5] * 10
    # Validation images come out of the training set, never the test set.
    train_rows = {tiny.train_images[i].tobytes() for i in range(len(tiny.train_labels))}
    assert all(img.tobytes() in train_rows for img in vx)


def test_weight_decay_skips_bn_and_bias():
    from cifarzoo import models

    m = models.create("resnet18", width_mult=0.125)
    decay, no_decay = param_groups(m, 5e-4)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    c = TrainConfig(schedule=schedule, warmup_epochs=1.0)
    f = [lr_factor(s, 100, 10, c) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[10] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(f[:10], f[1:11]))
    if schedule in ("onecycle", "cosine"):
        assert f[-1] < 0.05
    elif schedule == "step":
        assert f[60] == pytest.approx(0.1) and f[90] == pytest.approx(0.01)
    else:
        assert f[-1] == 1.0


def test_config_rejects_bad_values():
    with pytest.raises(CifarzooError, match="--optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(CifarzooError, match="--augment"):
        TrainConfig(augment="crop,rotate")
    with pytest.raises(CifarzooError, match="unknown model"):
        make_config("alexnet")


def test_presets_apply_in_order():
    c = make_config("vgg16", preset="seed", epochs=3)
    assert (c.optimizer, c.lr, c.batch_size, c.augmentations, c.epochs) == ("adam", 1e-3, 32, (), 3)
    q = make_config("resnet50", preset="quick")
    assert q.data == "sample" and q.width_mult < 1


def test_cli_train_then_evaluate_and_predict(tiny, tmp_path, capsys, monkeypatch):
    from cifarzoo.cli import main

    out = tmp_path / "run"
    rc = main(["train", "resnet18", "--data", "sample", "--subset", "500", "--width-mult", "0.125", "--epochs", "1",
               "--batch-size", "100", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "epoch   1/1" in text and "img/s" in text and "test_acc" in text
    assert main(["evaluate", str(out)]) == 0
    assert "per-class accuracy" in capsys.readouterr().out
    assert (out / "confusion.json").exists() and (out / "confusion.png").exists()
    assert main(["train", "nosuchnet", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_gpu_data_and_optimizer_paths_train_on_cpu_as_the_default_paths_do(tiny, tmp_path, monkeypatch):
    """fit with what it does on a GPU in bf16 — the training split kept normalized in bf16 on the device
    (DeviceLoader(prenormalize=True)) and the fused SGD kernel — forced on the CPU, against the
    same run on the CPU's own paths (uint8 split normalized per batch, foreach SGD)."""
    import cifarzoo.train.loop as loop
    import cifarzoo.train.optim as optim
    from cifarzoo.data.loader import DeviceLoader

    import cifarzoo.train.step as step_mod

    config = tiny_config(epochs=1, precision="bf16", augment="crop,flip", width_mult=0.0625, subset=320)
    plain = fit(config, dataset=tiny, out_dir=tmp_path / "plain")
    seen = {}
    real_init, real_make = DeviceLoader.__init__, step_mod.make_optimizer

    def loader_init(self, *a, **k):
        real_init(self, *a, **k)
        if k.get("train"):
            seen["images"] = self.images.dtype

    def make_optimizer(*a, **k):
        opt = real_make(*a, **k)
        seen["fused"] = opt.defaults.get("fused")
        return opt

    monkeypatch.setattr(loop, "prenormalized_dtype", lambda device, precision: torch.bfloat16)
    monkeypatch.setattr(optim, "fused_update", lambda device: True)
    monkeypatch.setattr(DeviceLoader, "__init__", loader_init)
    monkeypatch.setattr(step_mod, "make_optimizer", make_optimizer)
    forced = fit(config, dataset=tiny, out_dir=tmp_path / "forced")
    assert seen == {"images": torch.bfloat16, "fused": True}  # the GPU's lines ran
    # Same input values (normalized in fp32, rounded once to bf16 either way), same update rule:
    # equal within bf16 rounding of the optimizer's arithmetic over 5 steps.
    a, b = plain.metrics[0], forced.metrics[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
    assert abs(b["eval_acc"] - a["eval_acc"]) <= 0.1
    wa = load_checkpoint(plain.run_dir)["state_dict"]
    wb = load_checkpoint(forced.run_dir)["state_dict"]
    for k in wa:
        if wa[k].is_floating_point():
            assert torch.allclose(wa[k], wb[k], rtol=0.1, atol=2e-2), k


def test_ema_matches_torchs_averaged_model_without_reading_its_counter_on_the_host(monkeypatch):
    """--ema: the same averages as AveragedModel(get_ema_multi_avg_fn(0.999), use_buffers=True), and
    no per-step host read of the step counter (on CUDA each read is a blocking sync)."""
    from cifarzoo.models import create
    from cifarzoo.train.optim import DeviceEMA

    torch.manual_seed(0)
    model = create("resnet18", num_classes=10, width_mult=0.125)
    ours = DeviceEMA(model, decay=0.999)
    ref = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.999),
                                              use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ours.update_parameters(model)  # the first update copies; it may read the counter once
    ref.update_parameters(model)

    def no_host_read(self, *a):
        raise AssertionError("host read of a tensor during an EMA update")

    for _ in range(3):
        model.train()
        model(torch.randn(8, 3, 32, 32)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        with monkeypatch.context() as m:
            for name in ("__bool__", "item", "__int__"):
                m.setattr(torch.Tensor, name, no_host_read)
            ours.update_parameters(model)
        ref.update_parameters(model)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    # Loaded from a checkpoint, it continues averaging (not copying again).
    again = DeviceEMA(model, decay=0.999)
    again.load_state_dict(ours.state_dict())
    again.update_parameters(model)
    ref.update_parameters(model)
    assert torch.equal(again.state_dict()["n_averaged"], ref.state_dict()["n_averaged"])
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ref.state_dict().items())
