"""DeviceLoader and normalize: exact augmentation, determinism, eval order, distributed splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarzoo.data import DeviceLoader, normalize
from cifarzoo.data.loader import PAD
from cifarzoo.errors import DataError

MEAN = (125.3, 123.0, 113.9)
STD = (63.0, 62.1, 66.7)


def collect(loader, start=0):
    xs, ys = zip(*loader.iter_from(start)) if len(loader) > start else ((), ())
    return list(xs), list(ys)


def reference_batch(images, indices, params, *, mean, std, crop, flip, cutout, cutout_size=12, pad=PAD):
    """The slow, obviously-right version: one image at a time, plain numpy."""
    out = []
    m, s = np.float32(mean), np.float32(std)
    for k, i in enumerate(indices):
        img = images[i]
        if crop:
            padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
            y0, x0 = params["crop_y"][k], params["crop_x"][k]
            img = padded[y0:y0 + 32, x0:x0 + 32]
        if flip and params["flip"][k]:
            img = img[:, ::-1]
        x = ((img.astype(np.float32) - m) / s).transpose(2, 0, 1)  # (3, 32, 32)
        if cutout:
            cy, cx = params["cutout_y"][k], params["cutout_x"][k]
            y0, x0 = cy - cutout_size // 2, cx - cutout_size // 2
            x[:, max(y0, 0):max(y0 + cutout_size, 0), max(x0, 0):max(x0 + cutout_size, 0)] = 0
        out.append(x)
    return np.stack(out)


# --------------------------------------------------------------------------- normalize


def test_normalize_shape_values_layout(images):
    x = normalize(images[:4], MEAN, STD)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    ref = ((images[:4].astype(np.float32) - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2)
    assert torch.equal(x, torch.from_numpy(np.ascontiguousarray(ref)))
    cl = normalize(torch.from_numpy(images[:4]), MEAN, STD, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)
    half = normalize(images[:4], MEAN, STD, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), x, atol=0.02)


def test_normalize_does_not_touch_a_float_input(images):
    f = torch.from_numpy(images[:2]).float()
    before = f.clone()
    normalize(f, MEAN, STD)
    assert torch.equal(f, before)


def test_normalize_rejects_nchw():
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\) NHWC"):
        normalize(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), MEAN, STD)


def test_normalized_training_set_has_zero_mean_unit_std(small_dataset):
    ds = small_dataset
    x = normalize(ds.train_images, ds.mean, ds.std).double()
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)


# --------------------------------------------------------------------------- eval


def test_eval_loader_keeps_order_every_image_and_never_augments(images, labels):
    loader = DeviceLoader(images, labels, batch_size=16, mean=MEAN, std=STD, augment="crop,flip,cutout")
    assert len(loader) == 4 and loader.num_samples == 50  # 16+16+16+2, nothing dropped
    xs, ys = collect(loader)
    assert [len(y) for y in ys] == [16, 16, 16, 2]
    assert torch.equal(torch.cat(xs), normalize(images, MEAN, STD))
    assert torch.equal(torch.cat(ys), torch.from_numpy(labels))
    assert ys[0].dtype == torch.int64 and xs[0].device.type == "cpu"
    loader.set_epoch(5)  # epochs do not matter for evaluation
    assert torch.equal(torch.cat(collect(loader)[0]), torch.cat(xs))


def test_eval_loader_can_shuffle_without_augmenting(images, labels):
    loader = DeviceLoader(images, labels, batch_size=10, mean=MEAN, std=STD, shuffle=True)
    xs, ys = collect(loader)
    idx = loader.epoch_indices()
    assert sorted(idx.tolist()) == list(range(50)) and idx.tolist() != list(range(50))
    assert torch.equal(torch.cat(xs), normalize(images[idx.numpy()], MEAN, STD))


# --------------------------------------------------------------------------- train


@pytest.mark.parametrize("augment", ["crop,flip,cutout", "crop", "flip", "flip,cutout", "none"])
def test_vectorized_augmentation_equals_per_image_reference(images, labels, augment):
    loader = DeviceLoader(images, labels, batch_size=16, mean=MEAN, std=STD, train=True,
                          augment=augment, cutout_size=12, seed=3)
    loader.set_epoch(2)
    xs, ys = collect(loader)
    idx = loader.epoch_indices().numpy()
    params = {k: v.numpy() for k, v in loader.epoch_params().items()}
    assert len(xs) == 3 and len(idx) == 48  # 50 // 16 batches, the last 2 images dropped
    ref = reference_batch(images, idx, params, mean=MEAN, std=STD, crop="crop" in augment,
                          flip="flip" in augment, cutout="cutout" in augment)
    assert torch.equal(torch.cat(xs), torch.from_numpy(ref))
    assert torch.equal(torch.cat(ys), torch.from_numpy(labels[idx]))


def test_augmentation_parameters_cover_their_ranges(images, labels):
    loader = DeviceLoader(np.repeat(images, 20, axis=0), np.repeat(labels, 20), batch_size=100,
                          mean=MEAN, std=STD, train=True, augment="crop,flip,cutout")
    p = loader.epoch_params()
    assert set(p["crop_y"].tolist()) == set(range(2 * PAD + 1))
    assert set(p["flip"].tolist()) == {0, 1}
    assert p["cutout_x"].min() == 0 and p["cutout_x"].max() == 31
    # Cutout is drawn but leaves crop and flip as they were.
    plain = DeviceLoader(np.repeat(images, 20, axis=0), np.repeat(labels, 20), batch_size=100,
                         mean=MEAN, std=STD, train=True, augment="crop,flip").epoch_params()
    assert all(torch.equal(p[k], plain[k]) for k in ("index", "crop_y", "crop_x", "flip"))


def test_flip_only_gives_the_image_or_its_mirror(images, labels):
    loader = DeviceLoader(images, labels, batch_size=50, mean=MEAN, std=STD, train=True, augment="flip")
    x = next(iter(loader))[0]
    idx, flip = loader.epoch_indices(), loader.epoch_params()["flip"]
    plain = normalize(images[idx.numpy()], MEAN, STD)
    expected = torch.where(flip.bool()[:, None, None, None], plain.flip(3), plain)
    assert torch.equal(x, expected) and 0 < flip.sum() < 50


def test_same_seed_and_epoch_same_batches_other_epoch_or_seed_differ(images, labels):
    def batches(seed, epoch):
        loader = DeviceLoader(images, labels, batch_size=10, mean=MEAN, std=STD, train=True,
                              augment="crop,flip,cutout", seed=seed)
        loader.set_epoch(epoch)
        return torch.cat(collect(loader)[0]), loader.epoch_indices()

    x1, i1 = batches(0, 1)
    x2, i2 = batches(0, 1)
    assert torch.equal(x1, x2) and torch.equal(i1, i2)
    x3, i3 = batches(0, 2)
    assert not torch.equal(i1, i3) and not torch.equal(x1, x3)
    x4, i4 = batches(1, 1)
    assert not torch.equal(i1, i4)


def test_iter_from_resumes_mid_epoch_exactly(images, labels):
    loader = DeviceLoader(images, labels, batch_size=8, mean=MEAN, std=STD, train=True,
                          augment="crop,flip,cutout", seed=7)
    loader.set_epoch(3)
    full_x, full_y = collect(loader)
    fresh = DeviceLoader(images, labels, batch_size=8, mean=MEAN, std=STD, train=True,
                         augment="crop,flip,cutout", seed=7)
    fresh.set_epoch(3)
    tail_x, tail_y = collect(fresh, start=4)
    assert len(tail_x) == len(full_x) - 4
    assert all(torch.equal(a, b) for a, b in zip(tail_x, full_x[4:]))
    assert all(torch.equal(a, b) for a, b in zip(tail_y, full_y[4:]))
    assert collect(fresh, start=len(fresh)) == ([], [])
    with pytest.raises(DataError, match="cannot start at batch 99"):
        fresh.iter_from(99)


def test_train_defaults_shuffle_and_drop_last(images, labels):
    loader = DeviceLoader(images, labels, batch_size=16, mean=MEAN, std=STD, train=True)
    assert loader.shuffle and loader.drop_last and len(loader) == 3 and loader.num_samples == 48
    idx = loader.epoch_indices()
    assert len(set(idx.tolist())) == 48
    kept = DeviceLoader(images, labels, batch_size=16, mean=MEAN, std=STD, train=True, drop_last=False)
    assert len(kept) == 4 and sorted(kept.epoch_indices().tolist()) == list(range(50))
    assert loader.num_classes == 10


# --------------------------------------------------------------------------- distributed


@pytest.mark.parametrize("world_size, batch_size, train", [(2, 10, True), (3, 12, True), (4, 8, False), (3, 9, False)])
def test_ranks_split_every_global_batch_and_see_each_image_once(images, labels, world_size, batch_size, train):
    loaders = [DeviceLoader(images, labels, batch_size=batch_size, mean=MEAN, std=STD, train=train,
                            shuffle=True, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    for ld in loaders:
        ld.set_epoch(1)
    assert len({len(ld) for ld in loaders}) == 1  # ranks stay in lockstep
    per_rank = [ld.epoch_indices().tolist() for ld in loaders]
    union = [i for r in per_rank for i in r]
    assert len(union) == len(set(union))  # no image twice
    expected = (50 // batch_size) * batch_size if train else 50
    assert len(union) == expected
    if not train:
        assert set(union) == set(range(50))
    # Global batch k is one contiguous run of the shared permutation, cut in rank order.
    order = DeviceLoader(images, labels, batch_size=batch_size, mean=MEAN, std=STD, train=train,
                         shuffle=True, seed=5)
    order.set_epoch(1)
    global_order = order.epoch_indices().tolist()
    batches = [collect(ld)[1] for ld in loaders]  # labels = index % 10, enough to check order
    for k in range(len(loaders[0])):
        stitched = torch.cat([batches[r][k] for r in range(world_size)]).tolist()
        assert stitched == [i % 10 for i in global_order[k * batch_size:(k + 1) * batch_size]]
        if train:
            assert all(len(batches[r][k]) == batch_size // world_size for r in range(world_size))


def test_bad_configurations_are_data_errors(images, labels):
    kw = dict(mean=MEAN, std=STD)
    with pytest.raises(DataError, match="global batch size 10 is not divisible by world size 3"):
        DeviceLoader(images, labels, batch_size=10, world_size=3, **kw)
    with pytest.raises(DataError, match="unknown augmentation rotate"):
        DeviceLoader(images, labels, batch_size=10, train=True, augment="crop,rotate", **kw)
    with pytest.raises(DataError, match="50 images make no complete batch of 64"):
        DeviceLoader(images, labels, batch_size=64, train=True, **kw)
    with pytest.raises(DataError, match="rank 2 is not in 0..1"):
        DeviceLoader(images, labels, batch_size=10, rank=2, world_size=2, **kw)
    with pytest.raises(DataError, match="uint8"):
        DeviceLoader(images.astype(np.float32), labels, batch_size=10, **kw)


# --------------------------------------------------------------------------- airbench's pieces


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_crop_pad_sets_the_translation_range(images, labels, pad):
    loader = DeviceLoader(np.repeat(images, 4, axis=0), np.repeat(labels, 4), batch_size=20, mean=MEAN, std=STD,
                          train=True, augment="crop,flip", crop_pad=pad, seed=2)
    xs, _ = collect(loader)
    idx = loader.epoch_indices().numpy()
    params = {k: v.numpy() for k, v in loader.epoch_params().items()}
    # Shifts of at most `pad` pixels each way, and every shift in that range is used.
    assert set(params["crop_y"].tolist()) == set(params["crop_x"].tolist()) == set(range(2 * pad + 1))
    ref = reference_batch(np.repeat(images, 4, axis=0), idx, params, mean=MEAN, std=STD, crop=True, flip=True,
                          cutout=False, pad=pad)
    assert torch.equal(torch.cat(xs), torch.from_numpy(ref))


def test_crop_pad_must_fit_the_image(images, labels):
    with pytest.raises(DataError, match="too small for a 32-pixel crop"):
        DeviceLoader(images, labels, batch_size=10, mean=MEAN, std=STD, train=True, crop_pad=32)
    with pytest.raises(DataError, match="crop padding must be an integer"):
        DeviceLoader(images, labels, batch_size=10, mean=MEAN, std=STD, train=True, crop_pad=-1)


def test_alternating_flip_flips_every_image_on_alternate_epochs(images, labels):
    loader = DeviceLoader(images, labels, batch_size=10, mean=MEAN, std=STD, train=True, augment="crop,altflip",
                          seed=4, drop_last=False)

    def flips(epoch):  # image index -> flipped in that epoch
        p = loader.epoch_params(epoch)
        return dict(zip(p["index"].tolist(), p["flip"].tolist()))

    per_epoch = [flips(e) for e in range(4)]
    assert sum(per_epoch[0].values()) == 25  # exactly half on even epochs
    for e in range(3):  # the other half on odd epochs: every image flips state from one epoch to the next
        assert all(per_epoch[e][i] != per_epoch[e + 1][i] for i in range(50))
    assert per_epoch[0] == per_epoch[2] and per_epoch[1] == per_epoch[3]
    # The mask comes from the seed alone: a new loader (a resumed run) sees the same flips; another seed does not.
    again = DeviceLoader(images, labels, batch_size=10, mean=MEAN, std=STD, train=True, augment="crop,altflip",
                         seed=4, drop_last=False)
    assert dict(zip(*(again.epoch_params(3)[k].tolist() for k in ("index", "flip")))) == per_epoch[3]
    other = DeviceLoader(images, labels, batch_size=10, mean=MEAN, std=STD, train=True, augment="crop,altflip",
                         seed=5, drop_last=False)
    assert dict(zip(*(other.epoch_params(0)[k].tolist() for k in ("index", "flip")))) != per_epoch[0]
    # And the batches are the images flipped exactly as the plan says.
    loader.set_epoch(1)
    xs, _ = collect(loader)
    params = {k: v.numpy() for k, v in loader.epoch_params().items()}
    ref = reference_batch(images, params["index"], params, mean=MEAN, std=STD, crop=True, flip=True, cutout=False)
    assert torch.equal(torch.cat(xs), torch.from_numpy(ref))


def test_flip_and_altflip_exclude_each_other(images, labels):
    with pytest.raises(DataError, match="flip and altflip exclude each other"):
        DeviceLoader(images, labels, batch_size=10, mean=MEAN, std=STD, train=True, augment="flip,altflip")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_prenormalized_copy_gives_the_same_batches(images, labels, dtype, train):
    kw = dict(batch_size=16, mean=MEAN, std=STD, train=train, augment="crop,altflip,cutout", crop_pad=2, seed=1,
              dtype=dtype, channels_last=True)
    plain = DeviceLoader(images, labels, **kw)
    pre = DeviceLoader(images, labels, prenormalize=True, **kw)
    assert pre.images.dtype == dtype and pre.images.shape == (50, 32, 32, 3)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        pre.set_epoch(epoch)
        (xa, ya), (xb, yb) = collect(plain), collect(pre)
        assert all(a.dtype == b.dtype == dtype and torch.equal(a, b) for a, b in zip(xa, xb))
        assert all(b.is_contiguous(memory_format=torch.channels_last) for b in xb)
        assert all(torch.equal(a, b) for a, b in zip(ya, yb))
