"""optimizer "muon": Muon on conv filters, SGD on the rest; it learns, freezes the whitening bias, resumes exactly."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cifarzoo import models
from cifarzoo.train.config import make_config
from cifarzoo.train.muon import make_muon_optimizer, muon_param_groups

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
CPU = torch.device("cpu")


def tiny(channels_last=False, **over):
    torch.manual_seed(0)
    c = make_config("fastnet", preset="airbench", width_mult=0.125, batch_size=16, **over)
    model = models.create("fastnet", num_classes=10, width_mult=0.125)
    model.whiten.weight.requires_grad_(False)  # as fit freezes the whitened stem
    if channels_last:
        model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 32, 32, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), generator=g)
    return c, model, x, y


def train(model, opt, x, y, steps, sched=None):
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


def test_groups_put_filters_on_muon_and_the_rest_on_sgd():
    c, model, _, _ = tiny()
    filters, groups = muon_param_groups(model, c)
    assert filters and all(p.ndim == 4 and p.requires_grad for p in filters)
    assert id(model.whiten.weight) not in {id(p) for p in filters}  # frozen: no optimizer touches it
    names = {g["name"]: g for g in groups}
    assert set(names) == {"weights", "bn", "whiten_bias"}
    assert names["weights"]["params"][0] is model.head.weight and names["weights"]["weight_decay"] == c.weight_decay
    assert names["bn"]["lr"] == c.lr * c.bias_lr_scale and names["bn"]["weight_decay"] == c.bn_bias_decay > 0
    assert names["whiten_bias"]["params"][0] is model.whiten.bias
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in filters} | {id(p) for g in groups for p in g["params"]} == trainable


def test_muon_steps_reduce_the_loss_and_keep_filters_at_norm_sqrt_out():
    # The SGD groups' steps made negligible, so what learns is the filters under Muon.
    def losses(muon_lr):
        c, model, x, y = tiny(lr=1e-4, bias_lr_scale=1.0, muon_lr=muon_lr)
        opt = make_muon_optimizer(model, c, CPU, steps_per_epoch=100)
        return model, train(model, opt, x, y, 12)

    model, learned = losses(0.24)
    _, control = losses(1e-6)
    assert all(math.isfinite(v) for v in learned)
    assert learned[-1] < 0.85 * learned[0], learned  # measured: 2.25 -> 1.67
    assert control[-1] > 0.97 * control[0], control  # without Muon's steps nothing learns
    conv = model.layers[1].conv2.weight
    assert conv.norm().item() == pytest.approx(math.sqrt(conv.shape[0]), rel=0.2)  # rescaled before each step


def test_whitening_bias_trains_then_freezes():
    c, model, x, y = tiny(whiten_bias_epochs=1)
    opt = make_muon_optimizer(model, c, CPU, steps_per_epoch=2)
    before = model.whiten.bias.detach().clone()
    train(model, opt, x, y, 2)
    after_two = model.whiten.bias.detach().clone()
    head = model.head.weight.detach().clone()
    train(model, opt, x, y, 3)
    assert not torch.equal(before, after_two)  # trained for 1 epoch = 2 steps
    assert torch.equal(model.whiten.bias, after_two)  # then frozen (momentum and decay included)
    assert not torch.equal(model.head.weight, head)  # while the rest keeps learning


@pytest.mark.parametrize("channels_last", [False, True])
def test_state_dict_round_trip_gives_bit_identical_next_steps(channels_last, tmp_path):
    from cifarzoo.train.checkpoint import load_checkpoint, save_checkpoint

    c, model, x, y = tiny(channels_last=channels_last, whiten_bias_epochs=1)

    def make(m):
        opt = make_muon_optimizer(m, c, CPU, steps_per_epoch=3)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 20)

    opt, sched = make(model)
    train(model, opt, x, y, 4, sched)
    # Through the trainer's own checkpoint files, which load with weights_only=True.
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": {"name": "fastnet"}, "classes": ["a", "b"], "config": {},
                                                 "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]},
                                                 "state_dict": model.state_dict(), "opt": opt.state_dict(),
                                                 "sched": sched.state_dict()})
    train(model, opt, x, y, 3, sched)  # the whitening bias froze after step 3

    saved = load_checkpoint(tmp_path)
    _, fresh, _, _ = tiny(channels_last=channels_last)
    fresh.load_state_dict(saved["state_dict"])
    opt2, sched2 = make(fresh)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert opt2.steps == 4 and [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in saved["opt"]["groups"]]
    train(fresh, opt2, x, y, 3, sched2)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_loading_another_optimizers_state_is_a_clear_error():
    from cifarzoo.errors import CifarzooError

    c, model, _, _ = tiny()
    opt = make_muon_optimizer(model, c, CPU, steps_per_epoch=10)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CifarzooError, match="not from the same model with optimizer 'muon'"):
        opt.load_state_dict(sgd.state_dict())
    with pytest.raises(CifarzooError, match="needs the number of steps per epoch"):
        make_muon_optimizer(model, c.replace(whiten_bias_epochs=3), CPU)


def test_airbench_preset_and_the_new_settings_validate():
    from cifarzoo.errors import CifarzooError
    from cifarzoo.train.config import TrainConfig

    c = make_config("fastnet", preset="airbench")
    assert (c.optimizer, c.crop_pad, c.augmentations, c.whiten_bias_epochs, c.tta_level, c.lookahead) == (
        "muon", 2, ("crop", "altflip"), 3, 2, False)
    assert 50_000 // c.batch_size * c.epochs == 200  # airbench94_muon's 200 steps
    plain = make_config("fastnet")
    assert (plain.optimizer, plain.lookahead, plain.crop_pad) == ("sgd", True, 4)  # SGD + lookahead stays the default
    assert make_config("vgg16", preset="airbench") == make_config("vgg16", preset="standard")
    for bad, match in [(dict(augment="flip,altflip"), "--augment"), (dict(crop_pad=-1), "--crop-pad"),
                       (dict(tta_level=3), "--tta-level"), (dict(muon_momentum=1.0), "--muon-momentum"),
                       (dict(optimizer="muon", whiten_bias_epochs=-1), "--whiten-bias-epochs"),
                       (dict(bn_bias_decay=-1.0), "--bn-bias-decay"),
                       (dict(optimizer="sgd", whiten_bias_epochs=3), "muon for bn_bias_decay and whiten_bias_epochs")]:
        with pytest.raises(CifarzooError, match=match):
            TrainConfig(**bad)
