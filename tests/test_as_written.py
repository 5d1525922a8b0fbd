"""The original study's networks as written: hidden from the zoo, Keras' loss, their stall and its causes.

Small widths and a few hundred sample images: the replay's first epoch, not its 50.
"""
from __future__ import annotations

import math

import pytest
import torch

from cifarzoo import models
from cifarzoo.errors import CifarzooError, TrainingError
from cifarzoo.models.as_written import keras_probability_loss
from cifarzoo.models.checks import structure_problems
from cifarzoo.train import make_config

AS_WRITTEN = ["as_written_resnet", "as_written_vgg16", "as_written_vgg19", "as_written_xception"]
CORRECT = models.list_models()


def test_as_written_networks_are_registered_but_not_in_the_zoo():
    assert not set(AS_WRITTEN) & set(CORRECT)
    assert set(models.list_models(as_written=True)) == set(CORRECT) | set(AS_WRITTEN)
    assert models.resolve("as-written-vgg16") == "as_written_vgg16"
    for name in AS_WRITTEN:
        assert models.get_entry(name).as_written and not models.get_entry(name.replace("as_written_", "")
                                                                           .replace("resnet", "resnet50")).as_written


def test_models_all_lists_them(capsys):
    from cifarzoo.cli import main

    assert main(["models", "--all", "--width-mult", "0.125"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in AS_WRITTEN)


def test_keras_loss_of_the_frozen_resnet_is_the_printed_3_8090():
    # Nine outputs above 1 - 1e-7 and one below 1e-7, for every image: what the study's ResNet froze at.
    out = torch.tensor([[3.0] * 9 + [-2.0]]).repeat(10, 1).requires_grad_()
    y = torch.arange(10)
    loss = keras_probability_loss(out, y)
    assert round(loss.item(), 4) == 3.8090 == round(math.log(9) + math.log(1e7) / 10, 4)
    loss.backward()
    assert not out.grad.any()  # clipped: no gradient moves it again
    # Ten outputs above 1: each class a tenth after renormalization, ln 10 (the VGGs' printed 2.3026).
    assert keras_probability_loss(torch.full((4, 10), 5.0), torch.arange(4)).item() == pytest.approx(math.log(10))
    # Inside the range it is plain cross-entropy on the log of a probability vector.
    p = torch.softmax(torch.randn(6, 10), 1)
    y = torch.randint(0, 10, (6,))
    assert keras_probability_loss(p, y).item() == pytest.approx(-p.log()[range(6), y].mean().item(), rel=1e-5)


def test_study_normalization_divides_train_by_225_and_test_by_255(bundled_sample):
    sample = bundled_sample
    from cifarzoo.data.loader import input_normalization
    from cifarzoo.doctor import check_normalization

    eval_ds, mean, std = input_normalization(sample, "study")
    assert (mean, std) == ((0.0,) * 3, (225.0,) * 3)
    assert eval_ds.mean == (0.0,) * 3 and eval_ds.std == (255.0,) * 3
    check = check_normalization(sample, "study")
    assert not check.ok and "normalized differently" in check.finding and "1.133x" in check.finding
    assert check_normalization(sample, "unit").ok and check_normalization(sample).ok
    with pytest.raises(CifarzooError, match="--normalize"):
        make_config("vgg16", normalize="/225")


def test_structure_checks_name_each_as_written_networks_causes():
    torch.manual_seed(0)
    found = {n: " | ".join(structure_problems(models.create(n, width_mult=0.125), 10)) for n in AS_WRITTEN}
    for vgg in ("as_written_vgg16", "as_written_vgg19"):
        assert "ends in a softmax" in found[vgg] and "ReLU'd 10-unit layer" in found[vgg]
    assert "unbounded scores" in found["as_written_resnet"]
    assert "1x1 feature map" in found["as_written_resnet"] and "1x1 feature map" in found["as_written_xception"]
    assert "8 of 8 residual blocks ignore their shortcut" in found["as_written_resnet"]
    # Each fix removes its finding.
    fixed = models.create("as_written_resnet", width_mult=0.125, add_shortcut=True, imagenet_strides=False,
                          softmax=None)
    assert structure_problems(fixed, 10) == []
    assert structure_problems(models.create("as_written_vgg16", width_mult=0.125, relu_head=False,
                                            softmax=False), 10) == []


@pytest.mark.parametrize("name", CORRECT)
def test_no_structure_finding_on_the_correct_models(name):
    torch.manual_seed(0)
    model = models.create(name, width_mult=0.125)
    assert structure_problems(model, 10) == []
    assert model.training  # the checks leave the mode as they found it


def test_doctor_names_the_as_written_resnets_causes(sample_subset):
    sample = sample_subset(20, 10)
    from cifarzoo.doctor import run_doctor

    report = run_doctor("as-written-resnet", sample, width_mult=0.125, overfit_steps=3, lr_steps=3)
    failed = {c.name: c.finding for c in report.checks if not c.ok}
    assert set(failed) >= {"normalization", "initial outputs", "feature map size", "residual shortcuts"}
    assert "train and test are normalized differently" in failed["normalization"]
    assert "ignore their shortcut" in failed["residual shortcuts"]


def _replay_config(model: str):
    # The seed preset (the study's settings) at a quarter width, one epoch of 2,000 sample images (62 steps).
    return make_config(model, preset="seed", width_mult=0.25, epochs=1, data="sample", device="cpu",
                       eval_every=0, checkpoint_every=0, threads=1)


def test_as_written_vgg16_stalls_in_its_first_epoch_and_the_correct_one_learns(sample_subset, tmp_path):
    from cifarzoo.train import fit

    sample = sample_subset(200, 50)

    config = _replay_config("as-written-vgg16")
    assert (config.optimizer, config.lr, config.batch_size, config.normalize) == ("adam", 1e-3, 32, "study")
    with pytest.raises(TrainingError) as info:
        fit(config, dataset=sample, out_dir=tmp_path / "as-written")
    assert info.value.kind == "stall" and "not learning after 62 steps" in str(info.value)
    assert "ReLU'd 10-unit layer" in info.value.diagnosis and "ends in a softmax" in info.value.diagnosis

    result = fit(_replay_config("vgg16"), dataset=sample, out_dir=tmp_path / "correct")
    assert result.summary["status"] == "finished" and result.summary["test_acc"] > 0.15  # chance: 10%
