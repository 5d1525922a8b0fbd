"""Exact resume for every model family: Ctrl-C between two steps or inside one, then --resume,
gives the same weights, the same metrics.csv (every column but times) and the same summary."""
from __future__ import annotations

import pytest
import torch

from cifarzoo.data import Dataset
from cifarzoo.train import Reporter, TrainConfig, fit
from cifarzoo.train.checkpoint import load_checkpoint
from cifarzoo.train.rundir import RunDir

TIMES = ("epoch_seconds", "elapsed_seconds", "images_per_second")
SUMMARY_KEYS = ("test_acc", "test_loss", "test_acc_tta", "test_loss_tta", "final_eval_acc", "epochs")
STEPS_PER_EPOCH = 10  # 320 images, batch 32


@pytest.fixture(scope="module")
def small(sample_subset) -> Dataset:
    """320 training and 100 test images of the bundled sample (class-balanced)."""
    return sample_subset(32, 10)


FAMILIES = {
    "vgg": dict(model="vgg16"),
    "resnet": dict(model="resnet18"),
    "inception": dict(model="inception", model_kwargs={"aux_logits": True}, lr=0.02),
    "xception": dict(model="xception"),
    # fastnet's recipe: whitened frozen stem, lookahead, BN lr scale; with an EMA
    "fastnet-ema": dict(model="fastnet", lr=0.1, momentum=0.85, whiten_init=True, lookahead=True,
                        bias_lr_scale=8.0, ema=True, label_smoothing=0.2),
}


def config_for(family: str) -> TrainConfig:
    base = dict(width_mult=0.125, epochs=2, batch_size=32, lr=0.05, device="cpu", precision="fp32",
                compile="off", seed=3, data="sample", warmup_epochs=0.5, allow_stall=True,
                augment="crop,flip,cutout", eval_batch_size=100)
    return TrainConfig(**{**base, **FAMILIES[family]})


class StopBetweenSteps(Reporter):
    """Ctrl-C between two steps (the progress callback after global step ``at``)."""

    def __init__(self, at: int):
        self.at = at

    def on_step(self, epoch, step, steps, global_step):
        if global_step == self.at:
            raise KeyboardInterrupt


def stop_inside_step(model_holder: list, at: int):
    """Ctrl-C inside training step ``at`` (1-based), after every BatchNorm layer's forward ran."""
    import cifarzoo.train.step as step_mod

    real = step_mod.model_loss
    calls = [0]

    def model_loss(out, y, config):
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt  # the forward pass is done: BN statistics already updated
        return real(out, y, config)

    return model_loss


_straight: dict = {}


def straight_run(family, small, tmp_path_factory):
    if family not in _straight:
        out = tmp_path_factory.mktemp(f"straight-{family}")
        _straight[family] = fit(config_for(family), dataset=small, out_dir=out / "run")
    return _straight[family]


@pytest.mark.parametrize("where", ["between", "inside"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_resume_is_exact_for_every_family(family, where, small, tmp_path, tmp_path_factory, monkeypatch):
    straight = straight_run(family, small, tmp_path_factory)
    stop_at = STEPS_PER_EPOCH + 4  # mid-epoch 2
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        if where == "between":
            fit(config_for(family), dataset=small, out_dir=broken, reporter=StopBetweenSteps(stop_at))
        else:
            import cifarzoo.train.step as step_mod

            monkeypatch.setattr(step_mod, "model_loss", stop_inside_step([], stop_at))
            fit(config_for(family), dataset=small, out_dir=broken)
    monkeypatch.undo()
    saved = load_checkpoint(broken)
    # the state between the last completed step and the next one
    assert saved["partial"]["step"] == (4 if where == "between" else 3)
    resumed = fit(resume=broken, dataset=small)

    a, b = load_checkpoint(straight.run_dir), load_checkpoint(resumed.run_dir)
    for key in ("state_dict", "train_state_dict", "ema_state_dict"):
        assert (key in a) == (key in b)
        if key in a:
            assert a[key].keys() == b[key].keys()
            for k in a[key]:
                assert torch.equal(a[key][k], b[key][k]), (key, k)
    if "lookahead" in a:
        assert all(torch.equal(x, y) for x, y in zip(a["lookahead"], b["lookahead"]))
    rows_a, rows_b = RunDir(straight.run_dir).read_metrics(), RunDir(resumed.run_dir).read_metrics()
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k not in TIMES} == {k: v for k, v in rb.items() if k not in TIMES}
    for key in SUMMARY_KEYS:
        assert straight.summary[key] == resumed.summary[key], key


def test_a_real_ctrl_c_during_a_step_waits_for_the_step_to_complete(small, tmp_path, tmp_path_factory,
                                                                      monkeypatch):
    """SIGINT arriving mid-step is held until the step has completed; the checkpoint includes that step."""
    import os
    import signal

    import cifarzoo.train.step as step_mod

    real, calls = step_mod.model_loss, [0]

    def model_loss(out, y, config):
        calls[0] += 1
        if calls[0] == STEPS_PER_EPOCH + 4:
            os.kill(os.getpid(), signal.SIGINT)  # as the terminal would, between forward and backward
        return real(out, y, config)

    monkeypatch.setattr(step_mod, "model_loss", model_loss)
    with pytest.raises(KeyboardInterrupt):
        fit(config_for("resnet"), dataset=small, out_dir=tmp_path / "broken")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back
    assert load_checkpoint(tmp_path / "broken")["partial"]["step"] == 4  # the interrupted step completed
    resumed = fit(resume=tmp_path / "broken", dataset=small)
    straight = straight_run("resnet", small, tmp_path_factory)
    assert straight.summary["test_loss"] == resumed.summary["test_loss"]
