"""predict_logits' test-time augmentation: each level is the weighted mean of its views, computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cifarzoo.data import normalize
from cifarzoo.inference import TTA_VIEWS, predict_logits, tta_views

MEAN, STD = (125.0, 122.0, 113.0), (63.0, 62.0, 66.0)


class PixelReadout(nn.Module):
    """A model whose logits are a fixed linear function of every pixel: any change of a view shows."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 5)
        torch.manual_seed(0)
        nn.init.normal_(self.fc.weight)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)


def shift(img: np.ndarray, s: int) -> np.ndarray:
    """Move (H, W, C) content s pixels down and right; the 1-pixel border reflected, as np.pad does."""
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    return padded[1 - s:1 - s + img.shape[0], 1 - s:1 - s + img.shape[1]]


def test_level_2_is_the_weighted_mean_of_six_views_made_by_hand(images):
    model = PixelReadout().eval()
    got = predict_logits(model, images, MEAN, STD, batch_size=4, tta=2)
    views = {(flip, s): np.stack([shift(im, s)[:, ::-1] if flip else shift(im, s) for im in images])
             for flip in (False, True) for s in (0, -1, 1)}
    with torch.no_grad():
        logits = {k: model(normalize(v, MEAN, STD)).double() for k, v in views.items()}
    expected = 0.25 * (logits[False, 0] + logits[True, 0]) + 0.125 * sum(
        logits[f, s] for f in (False, True) for s in (-1, 1))
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)
    # The shifted views really move the content one pixel: interior pixels match, and differ from the image.
    assert np.array_equal(shift(images[0], 1)[1:, 1:], images[0][:-1, :-1])
    assert np.array_equal(shift(images[0], -1)[:-1, :-1], images[0][1:, 1:])
    assert not torch.allclose(got, predict_logits(model, images, MEAN, STD, tta=1))


def test_levels_0_and_1_are_plain_and_flip(images):
    model = PixelReadout().eval()
    x = normalize(images, MEAN, STD)
    with torch.no_grad():
        plain, mirror = model(x), model(x.flip(3))
    assert torch.equal(predict_logits(model, images, MEAN, STD, tta=False), plain)
    assert torch.allclose(predict_logits(model, images, MEAN, STD, tta=True), 0.5 * (plain + mirror), atol=1e-6)


def test_view_weights_sum_to_one_and_views_keep_their_shape(images):
    x = normalize(images, MEAN, STD)
    for level in TTA_VIEWS:
        views = list(tta_views(x, level))
        assert sum(w for w, _ in views) == 1.0
        assert all(v.shape == x.shape for _, v in views)
    with pytest.raises(ValueError, match="tta must be"):
        predict_logits(PixelReadout(), images, MEAN, STD, tta=3)
