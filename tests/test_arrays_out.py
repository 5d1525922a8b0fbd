"""Arrays out of a Run: predict_proba, predict(as_labels=True), run.model, run.history, a compact
EvalResult, run.plot() that pyplot shows, and cz.lr_find's curve."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import cifarzoo as cz
from cifarzoo.errors import CifarzooError
from conftest import make_fake_cifar

TINY = dict(width_mult=0.125, batch_size=16, precision="fp32", compile="off", device="cpu", progress="none")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished resnet18 run (2 epochs on the fake arrays) and its data, shared by this file."""
    fake = make_fake_cifar()
    data = (fake.train_images, fake.train_labels, fake.test_images, fake.test_labels)
    return cz.fit("resnet18", data=data, epochs=2, out=tmp_path_factory.mktemp("arrays") / "run", **TINY), fake


def test_predict_proba_and_labels_are_arrays_that_agree_with_predict_and_the_model(trained):
    run, fake = trained
    x = fake.test_images
    p = run.predict_proba(x, device="cpu")
    assert isinstance(p, np.ndarray) and p.shape == (20, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    labels = run.predict(x, as_labels=True, device="cpu")
    assert labels.shape == (20,) and labels.dtype == np.int64 and (labels == p.argmax(1)).all()
    top = run.predict(x, top_k=1, device="cpu")  # the default form is unchanged: Predictions
    assert [run.classes.index(t.top[0][0]) for t in top] == labels.tolist()
    assert run.predict_proba(x[0], device="cpu").shape == (1, 10)  # one (32, 32, 3) image

    model = run.model
    assert not model.training and all(t.device.type == "cpu" for t in model.state_dict().values())
    with torch.no_grad():
        from_uint8 = model(torch.from_numpy(x))
        from_float = model(torch.from_numpy(x).float())
    torch.testing.assert_close(from_uint8, from_float)
    np.testing.assert_allclose(torch.softmax(from_uint8, 1).numpy(), p, atol=1e-5)


def test_predict_proba_refuses_an_unreadable_file_in_one_line(trained, tmp_path):
    run, fake = trained
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"no")
    with pytest.raises(CifarzooError, match="not-an-image.png"):
        run.predict_proba([fake.test_images[0], bad])
    with pytest.raises(CifarzooError, match="images: expected an array"):
        run.predict_proba(3)


def test_history_is_a_dataframe_or_without_pandas_the_rows(trained, monkeypatch):
    pd = pytest.importorskip("pandas")
    run, _ = trained
    h = run.history
    assert isinstance(h, pd.DataFrame) and h["epoch"].tolist() == [1, 2] and "eval_acc" in h.columns
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    assert run.history == run.metrics


def test_eval_result_repr_is_one_short_line(trained):
    run, _ = trained
    result = run.evaluate(save=False, device="cpu")
    text = repr(result)
    assert text.startswith("EvalResult(accuracy=") and "\n" not in text and len(text) < 200
    assert "tensor" not in text and "images=20" in text and "classes=10" in text


def test_plot_is_shown_by_pyplot_once_imported_and_inline_without_it(trained):
    run, _ = trained
    png = run.plot(pyplot=False)
    assert png._repr_png_().startswith(b"\x89PNG")  # Jupyter's inline display, without pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    fig = run.plot()  # pyplot imported: a figure of its own, which plt.show() shows
    try:
        assert fig.number in plt.get_fignums() and len(fig.axes) == 2
        run._repr_html_()  # the Run's own display leaves no figure open in pyplot
        assert set(plt.get_fignums()) == before | {fig.number}
    finally:
        plt.close(fig)


def test_lr_find_returns_the_curve_a_suggestion_and_a_plot(trained):
    _, fake = trained
    data = (fake.train_images, fake.train_labels, fake.test_images, fake.test_labels)
    curve = cz.lr_find("resnet18", data=data, steps=12, batch_size=16, width_mult=0.125)
    assert len(curve.lrs) == len(curve.losses) and 2 <= len(curve.lrs) <= 12
    assert curve.lrs == sorted(curve.lrs) and curve.lrs[0] == pytest.approx(1e-5)
    assert min(curve.lrs) / 10 <= curve.suggested_lr <= max(curve.lrs) / 10
    assert "suggested_lr=" in repr(curve)
    fig = curve.plot(pyplot=False)
    assert fig.axes[0].get_xscale() == "log" and fig._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(CifarzooError, match=r"batch_size must be an integer in \[1, 60\]"):
        cz.lr_find("resnet18", data=data, batch_size=64)
