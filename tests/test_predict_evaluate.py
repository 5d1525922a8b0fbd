"""`evaluate`, `predict` and `doctor` on a trained run folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cifarzoo.data import Dataset
from cifarzoo.errors import CifarzooError
from cifarzoo.evaluate import evaluate
from cifarzoo.predict import predict_files
from cifarzoo.train import TrainConfig, fit


@pytest.fixture(scope="module")
def sample():
    from cifarzoo import data

    return data.load("sample")


@pytest.fixture(scope="module")
def trained_run(sample, tmp_path_factory):
    """A small model trained for 2 epochs on 1,000 sample images: well above chance, cheap."""
    out = tmp_path_factory.mktemp("run") / "resnet18"
    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=2, batch_size=50, lr=0.1, subset=1000,
                         device="cpu", precision="fp32", compile="off", seed=0, data="sample", allow_stall=True)
    fit(config, dataset=sample, out_dir=out)
    return out


@pytest.fixture(scope="module")
def test_files(sample, tmp_path_factory):
    """The first 300 sample test images as lossless PNG files, with their labels."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(300):
        p = folder / f"{i:04d}_{sample.classes[sample.test_labels[i]]}.png"
        Image.fromarray(sample.test_images[i]).save(p)
        paths.append(p)
    return paths, sample.test_labels[:300]


def subset_dataset(ds: Dataset, n: int) -> Dataset:
    return Dataset(ds.train_images, ds.train_labels, ds.test_images[:n], ds.test_labels[:n], ds.classes,
                   ds.source, ds.mean, ds.std)


def test_predict_accuracy_equals_evaluate(trained_run, sample, test_files):
    paths, labels = test_files
    preds = predict_files(trained_run, paths, top_k=3, device="cpu")
    assert all(p.ok and len(p.top) == 3 for p in preds)
    predicted = np.array([sample.classes.index(p.top[0][0]) for p in preds])
    ev = evaluate(trained_run, dataset=subset_dataset(sample, 300), device="cpu", save=False)
    assert np.array_equal(predicted, ev.logits.argmax(1).numpy())
    assert (predicted == labels).mean() == pytest.approx(ev.accuracy)
    assert ev.accuracy > 0.2  # trained: well above the 10% of chance
    # Probabilities are a softmax of the same logits.
    probs = torch.softmax(ev.logits[0], 0)
    assert preds[0].top[0][1] == pytest.approx(probs.max().item(), abs=1e-5)


def test_predict_any_size_and_mode(trained_run, tmp_path):
    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(big)
    gray = tmp_path / "gray.png"
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    preds = predict_files(trained_run, [big, gray, rgba], top_k=2, device="cpu")
    assert all(p.ok for p in preds)
    assert all(abs(sum(q for _, q in p.top)) <= 1.0 + 1e-6 for p in preds)


def test_predict_reports_unreadable_file_and_classifies_the_rest(trained_run, test_files, tmp_path, capsys):
    from cifarzoo.cli import main

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    good = test_files[0][:2]
    rc = main(["predict", str(trained_run), str(good[0]), str(bad), str(good[1]), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert str(good[0]) in out and str(good[1]) in out
    assert "broken.png" in err
    rc = main(["predict", str(trained_run), str(good[0]), "--json", "--top-k", "2"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(data[0]["top"]) == 2 and data[0]["path"] == str(good[0])


def test_predict_missing_model_is_a_clear_error(tmp_path, capsys):
    from cifarzoo.cli import main

    rc = main(["predict", str(tmp_path / "nope"), "x.png"])
    assert rc == 2 and "no such run folder or checkpoint" in capsys.readouterr().err


def test_evaluate_writes_confusion_and_per_class(trained_run, sample):
    ev = evaluate(trained_run, dataset=sample, device="cpu", tta=True)
    assert ev.confusion.shape == (10, 10) and ev.confusion.sum() == len(sample.test_labels)
    assert np.diag(ev.confusion).sum() / ev.confusion.sum() == pytest.approx(ev.accuracy)
    saved = json.loads((trained_run / "confusion-tta.json").read_text())
    assert saved["tta"] is True and set(saved["per_class_accuracy"]) == set(sample.classes)
    assert (trained_run / "confusion-tta.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_refuses_data_with_other_classes(trained_run, sample):
    other = Dataset(sample.train_images, sample.train_labels, sample.test_images, sample.test_labels,
                    tuple(f"c{i}" for i in range(10)), "other", sample.mean, sample.std)
    with pytest.raises(CifarzooError, match="trained on classes"):
        evaluate(trained_run, dataset=other, save=False)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(CifarzooError, match="not a cifarzoo checkpoint, or damaged"):
        evaluate(bad, save=False)


def test_doctor_passes_a_sound_model_and_catches_a_broken_one(sample, monkeypatch):
    from cifarzoo import doctor

    report = doctor.run_doctor("resnet18", sample, width_mult=0.125, overfit_steps=150, lr_steps=30)
    names = [c.name for c in report.checks]
    assert names == ["normalization", "label balance", "initial outputs", "output layer's input",
                     "feature map size", "residual shortcuts", "overfit one batch", "learning-rate range test"]
    assert report.ok, [c.finding for c in report.checks if not c.ok]
    assert report.suggested_lr and report.suggested_lr > 0

    # The seed study's bugs: test divided by 255, train by 225 -> statistics no longer alike.
    bad = Dataset((sample.train_images.astype(np.float32) * 255 / 225).clip(0, 255).astype(np.uint8),
                  sample.train_labels, sample.test_images, sample.test_labels, sample.classes, "bad",
                  sample.mean, (1.0, 1.0, 1.0))
    assert not doctor.check_normalization(bad).ok

    # A ReLU on the logits is caught at initialization.
    from cifarzoo import models

    net = torch.nn.Sequential(models.create("resnet18", width_mult=0.125), torch.nn.ReLU())
    from cifarzoo.data.loader import normalize

    x = normalize(torch.from_numpy(sample.train_images[:32]), sample.mean, sample.std)
    y = torch.from_numpy(sample.train_labels[:32]).long()
    check = doctor.check_initial_outputs(net, x, y, 10)
    assert not check.ok and "ReLU" in check.finding


def test_checkpoint_with_a_compressed_record_is_refused_before_loading(tmp_path):
    import zipfile

    from cifarzoo.train.checkpoint import load_checkpoint, save_checkpoint

    real = tmp_path / "real.pt"
    save_checkpoint(real, {"state_dict": {"w": torch.zeros(4)}})
    bomb = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(bomb, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data/0"):  # the tensor: 10 MB of zeros deflated to ~10 KB
                out.writestr(info.filename, data + bytes(10 << 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                out.writestr(info, data)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(CifarzooError, match=rf"^{bomb}: refused: record '.*data/0' is compressed to [\d,]+ bytes "
                                            r"from 10,485,776; torch.save stores every record as is"):
        load_checkpoint(bomb)


def test_checkpoint_records_beyond_the_largest_model_are_refused(tmp_path, monkeypatch):
    from cifarzoo.train import checkpoint
    from cifarzoo.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.zeros(1000)}})
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 3_999)
    with pytest.raises(CifarzooError, match=rf"^{path}: refused: its records come to [\d,]+ bytes, more than a "
                                            r"cifarzoo checkpoint holds \(at most 3,999\)$"):
        load_checkpoint(path)


def test_checkpoint_bound_covers_the_largest_model():
    from cifarzoo import models
    from cifarzoo.train.checkpoint import MAX_CHECKPOINT_BYTES
    from cifarzoo.train.config import _NUMBERS

    widest = _NUMBERS["width_mult"][2]
    largest = max(sum(t.numel() for t in models.create(n, num_classes=100).state_dict().values())
                  for n in ("resnet50", "vgg19", "xception"))
    assert MAX_CHECKPOINT_BYTES >= 6 * 4 * largest * widest ** 2


@pytest.mark.parametrize("name", ["checkpoint.pt", "model.onnx"])
def test_fifo_given_as_a_model_is_refused_not_waited_on(tmp_path, no_hang, name):
    import os

    from cifarzoo.predict import load_classifier

    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(CifarzooError, match=rf"^{fifo}: refused: it is a FIFO; only regular files are read$"):
        load_classifier(fifo)
