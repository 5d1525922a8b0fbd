"""The augmentation registry: a registered augmentation is applied, deterministic and resumable, and
registering or turning one on leaves every other augmentation's numbers unchanged."""
from __future__ import annotations

import pytest
import torch

import cifarzoo
from cifarzoo.data import DeviceLoader, augment
from cifarzoo.data.augment import parse_augment, register_augmentation
from cifarzoo.errors import CifarzooError, DataError
from cifarzoo.train.config import TrainConfig

MEAN, STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
KW = dict(batch_size=10, mean=MEAN, std=STD, train=True, seed=3)


def _draw_gain(generator, n, image_size):
    return 0.5 + torch.rand(n, 1, generator=generator)  # (n, 1) in [0.5, 1.5)


def _gain(x, params):
    return x * params[:, :, None, None].to(x.dtype)


@pytest.fixture
def gain():
    """A registered augmentation (a random per-image gain), removed again after the test."""
    register_augmentation("gain", draw=_draw_gain)(_gain)
    yield "gain"
    augment._REGISTRY.pop("gain")


def batches(loader, epoch, start=0):
    loader.set_epoch(epoch)
    return [x for x, _ in loader.iter_from(start)]


def test_registering_and_enabling_a_new_augmentation_leaves_the_others_unchanged(images, labels):
    before = DeviceLoader(images, labels, augment="crop,flip,cutout", **KW)
    ref = {e: batches(before, e) for e in (0, 1)}
    register_augmentation("gain", draw=_draw_gain)(_gain)
    try:
        same = DeviceLoader(images, labels, augment="crop,flip,cutout", **KW)
        with_gain = DeviceLoader(images, labels, augment="crop,flip,cutout,gain", **KW)
        for e in (0, 1):
            assert all(torch.equal(a, b) for a, b in zip(batches(same, e), ref[e]))
            p = with_gain.epoch_params(e)
            assert p["gain"].shape == (50, 1)  # 5 batches of 10
            gains = p["gain"].split(10)
            # The new augmentation is applied on top of exactly the batches the others made.
            assert all(torch.equal(x, _gain(r, g)) for x, r, g in zip(batches(with_gain, e), ref[e], gains))
            assert all(torch.equal(p[k], v) for k, v in before.epoch_params(e).items())
    finally:
        augment._REGISTRY.pop("gain")


def test_a_registered_augmentation_is_deterministic_and_resumable(images, labels, gain):
    a = DeviceLoader(images, labels, augment="gain", **KW)
    b = DeviceLoader(images, labels, augment="gain", **KW)  # a restarted run
    full = batches(a, 2)
    assert all(torch.equal(x, y) for x, y in zip(batches(b, 2), full))
    assert all(torch.equal(x, y) for x, y in zip(batches(b, 2, start=2), full[2:]))  # resumed mid-epoch
    assert not torch.equal(a.epoch_params(1)["gain"], a.epoch_params(2)["gain"])  # a new draw each epoch
    other = DeviceLoader(images, labels, augment="gain", **{**KW, "seed": 4})
    assert not torch.equal(other.epoch_params(2)["gain"], a.epoch_params(2)["gain"])


def test_a_registered_augmentation_is_split_across_ranks_like_the_built_ins(images, labels, gain):
    one = DeviceLoader(images, labels, augment="crop,gain", **KW)
    ranks = [DeviceLoader(images, labels, augment="crop,gain", rank=r, world_size=2, **KW) for r in (0, 1)]
    whole = one.epoch_params(1)["gain"].split(10)
    halves = [r.epoch_params(1)["gain"].split(5) for r in ranks]
    assert all(torch.equal(whole[k], torch.cat([halves[0][k], halves[1][k]])) for k in range(5))


def test_the_setting_accepts_registered_names_and_suggests_for_unknown_ones(gain):
    assert TrainConfig(augment="crop,flip,gain").augmentations == ("crop", "flip", "gain")
    with pytest.raises(CifarzooError, match=r"invalid --augment 'crop,gian': unknown augmentation gian "
                                            r"\(did you mean gain\?\); use a comma list of crop, flip, "
                                            r"altflip, cutout, gain, or none"):
        TrainConfig(augment="crop,gian")
    with pytest.raises(DataError, match=r"unknown augmentation cutuot \(did you mean cutout\?\)"):
        parse_augment("cutuot")


def test_registration_refuses_bad_names_twice_and_unknown_exclusions(gain):
    with pytest.raises(CifarzooError, match="'gain' is registered twice"):
        register_augmentation("gain")(_gain)
    for bad in ("Gain2", "a,b", "a b", "none", "", None):
        with pytest.raises(CifarzooError, match="must be one lower-case word"):
            register_augmentation(bad)(_gain)
    with pytest.raises(CifarzooError, match="excludes unknown augmentation"):
        register_augmentation("dim", excludes=("nope",))(_gain)
    assert "dim" not in augment.AUGMENTATIONS


def test_exclusions_and_a_bad_draw_are_named(images, labels, gain):
    register_augmentation("dim", excludes=("gain",), reason="both scale the image")(_gain)
    register_augmentation("broken", draw=lambda g, n, hw: torch.zeros(n))(_gain)
    try:
        with pytest.raises(DataError, match="augmentations gain and dim exclude each other: both scale"):
            parse_augment("dim,gain")
        with pytest.raises(CifarzooError, match=r"augmentation 'broken': draw returned shape \(50,\)"):
            next(iter(DeviceLoader(images, labels, augment="broken", **KW)))
    finally:
        augment._REGISTRY.pop("dim"), augment._REGISTRY.pop("broken")


def test_register_augmentation_is_exported():
    assert cifarzoo.register_augmentation is register_augmentation
    assert "register_augmentation" in dir(cifarzoo)
