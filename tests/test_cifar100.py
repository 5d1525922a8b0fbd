"""CIFAR-100 end to end: train (fine and coarse labels), evaluate, predict, export, a quick study,
and outputs that stay readable at 100 classes. Data: a small archive in the official layout
(conftest's fake CIFAR-100: 2 train and 1 test image per fine class)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from cifarzoo.cli import main
from cifarzoo.evaluate import format_per_class, top_confusions

TINY = ["--width-mult", "0.125", "--epochs", "1", "--batch-size", "50", "--device", "cpu", "--precision", "fp32",
        "--compile", "off", "--allow-stall", "--quiet"]


@pytest.fixture(scope="module")
def c100(tmp_path_factory):
    from conftest import make_fake_cifar100, write_cifar100_archive

    fake = make_fake_cifar100()
    return fake, write_cifar100_archive(tmp_path_factory.mktemp("c100") / "cifar-100-python.tar.gz", fake)


@pytest.fixture(scope="module")
def fine_run(c100, tmp_path_factory):
    fake, archive = c100
    out = tmp_path_factory.mktemp("fine") / "run"
    assert main(["train", "resnet18", "--data", str(archive), "--out", str(out), *TINY]) == 0
    return out


def test_a_fine_run_has_100_classes_everywhere(fine_run, c100):
    fake, _ = c100
    info = json.loads((fine_run / "config.json").read_text())
    assert info["config"]["labels"] == "fine" and info["data"]["classes"] == list(fake.classes)
    ckpt = torch.load(fine_run / "checkpoint.pt", weights_only=True)
    assert ckpt["model"]["kwargs"]["num_classes"] == 100 and ckpt["config"]["labels"] == "fine"
    assert ckpt["state_dict"]["fc.weight"].shape[0] == 100  # the model's head, built from the data


def test_evaluate_at_100_classes_lists_top_confusions_not_a_grid(fine_run, capsys):
    assert main(["evaluate", str(fine_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "per-class accuracy, worst first (100 classes):" in out and "confusion matrix" not in out
    assert re.search(r"top \d+ confusions \(true -> predicted, count, share of the true class", out)
    # no 100-column row (the run folder's path, whose length depends on the temporary folder, left out)
    assert max(len(line.replace(str(fine_run), "RUN")) for line in out.splitlines()) < 160
    per_class = out.split("worst first (100 classes):\n")[1].split("\n\n")[0].splitlines()
    accs = [float(line.split()[-1].rstrip("%")) for line in per_class]
    assert len(accs) == 100 and accs == sorted(accs)
    confusions = out.split("confusion.json):\n")[1].strip().splitlines()
    assert 1 <= len(confusions) <= 20 and all(" -> " in line and line.endswith("%") for line in confusions)
    saved = json.loads((fine_run / "confusion.json").read_text())
    assert np.asarray(saved["confusion"]).shape == (100, 100) and saved["top_confusions"]
    with Image.open(fine_run / "confusion.png") as im:  # a readable size, not 55 inches of cells
        assert max(im.size) <= 1400


def test_predict_and_export_at_100_classes(fine_run, c100, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from cifarzoo.export import OnnxClassifier, export_onnx
    from cifarzoo.predict import predict_files

    fake, _ = c100
    png = tmp_path / "x.png"
    Image.fromarray(fake.test_images[0]).save(png)
    top = predict_files(fine_run, [png], top_k=5, device="cpu")[0].top
    assert len(top) == 5 and all(name in fake.classes for name, _ in top)
    result = export_onnx(fine_run, out=tmp_path / "m.onnx", exporter="legacy", check_images=fake.test_images[:4])
    clf = OnnxClassifier(result.path)
    assert clf.classes == list(fake.classes) and len(json.loads(clf.metadata["classes"])) == 100
    assert clf.predict_logits(fake.test_images[:3]).shape == (3, 100)
    assert [c for c, _ in predict_files(result.path, [png], top_k=5)[0].top] == [c for c, _ in top]


def test_coarse_labels_train_a_20_class_model_and_evaluate_reloads_them(c100, tmp_path, capsys):
    fake, archive = c100
    out = tmp_path / "coarse"
    assert main(["train", "resnet18", "--data", str(archive), "--labels", "coarse", "--out", str(out), *TINY]) == 0
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["labels"] == "coarse" and info["data"]["classes"] == list(fake.coarse_classes)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["model"]["kwargs"]["num_classes"] == 20
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--device", "cpu"]) == 0  # the run's own labels: coarse
    assert len(json.loads(capsys.readouterr().out)["classes"]) == 20
    assert main(["evaluate", str(out), "--labels", "fine", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the model was trained on classes" in err


def test_a_run_trained_from_arrays_says_how_to_give_its_data_again(fake_cifar, fake_archive, tmp_path, capsys):
    import cifarzoo as cz
    from cifarzoo.train import Reporter

    class StopAfterFirstEpoch(Reporter):
        def on_epoch_end(self, row):
            raise KeyboardInterrupt

    out = tmp_path / "run"
    data = (fake_cifar.train_images, fake_cifar.train_labels, fake_cifar.test_images, fake_cifar.test_labels)
    with pytest.raises(KeyboardInterrupt):
        cz.fit("resnet18", data=data, epochs=2, out=out, progress=StopAfterFirstEpoch(), width_mult=0.125,
               batch_size=20, precision="fp32", compile="off", device="cpu")
    capsys.readouterr()
    for argv in (["train", "--resume", str(out)], ["evaluate", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "the run was trained from arrays in memory" in err and "pass --data PATH with the same data" in err
        assert "data=(x_train" in err and "no such file" not in err
    # The same images from a file (fake_archive holds fake_cifar) resume and evaluate it.
    assert main(["train", "--resume", str(out), "--data", str(fake_archive), "--quiet"]) == 0
    assert main(["evaluate", str(out), "--data", str(fake_archive), "--device", "cpu"]) == 0
    assert "confusion matrix (rows true, columns predicted):" in capsys.readouterr().out  # CIFAR-10: the grid


def test_quick_study_on_a_cifar100_folder_reports_top_confusions(tmp_path, capsys):
    from conftest import make_fake_cifar100, write_cifar100_folder

    folder = write_cifar100_folder(tmp_path / "cifar-100-python", make_fake_cifar100())
    out = tmp_path / "study"
    assert main(["benchmark", "--preset", "quick", "--data", str(folder), "--models", "resnet18,vgg16",
                 "--epochs", "1", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["data"]["classes"]) == 100
    assert [m["status"] for m in results["models"]] == ["finished", "finished"]
    md = (out / "report.md").read_text()
    assert "## Most frequent confusions" in md and "| True class | Predicted | Count | Share |" in md
    assert "<details><summary>the 100 classes</summary>" in md and "| Class | resnet18 | vgg16 |" in md
    assert "20 random classes of 100" in md
    assert max(line.count("|") for line in md.splitlines()) < 20  # no 100-column table (the summary has 12)
    page = (out / "report.html").read_text()
    assert '<table id="confusions-resnet18">' in page and "<details><summary>the 100 classes" in page


def test_top_confusions_and_per_class_order():
    classes = ["a", "b", "c"]
    cm = np.array([[5, 3, 0], [1, 8, 1], [0, 3, 2]])
    assert top_confusions(cm, classes) == [
        {"true": "a", "pred": "b", "count": 3, "share": 3 / 8},
        {"true": "c", "pred": "b", "count": 3, "share": 3 / 5},  # ties: class order
        {"true": "b", "pred": "a", "count": 1, "share": 0.1},
        {"true": "b", "pred": "c", "count": 1, "share": 0.1}]  # zeros are never listed
    assert top_confusions(cm, classes, k=1)[0]["pred"] == "b" and top_confusions(np.eye(3, dtype=int), classes) == []
    names10 = [f"k{i}" for i in range(10)]
    acc10 = np.linspace(1, 0, 10)
    assert [line.split()[0] for line in format_per_class(names10, acc10).splitlines()] == names10  # CIFAR-10 order
    names = [f"k{i}" for i in range(30)]
    lines = format_per_class(names, np.linspace(1, 0, 30)).splitlines()
    assert [line.split()[0] for line in lines] == names[::-1]  # many classes: worst first


def test_a_study_run_saved_before_labels_existed_still_belongs_to_it(tmp_path):
    from cifarzoo.io import write_json
    from cifarzoo.study import plan_study
    from cifarzoo.study.runner import check_compatible

    spec = plan_study(["resnet18"], preset="quick", out_dir=tmp_path).runs[0]
    old = {k: v for k, v in spec.config.to_dict().items() if k != "labels"}
    write_json(spec.run_dir / "config.json", {"config": old})
    check_compatible(spec)
    write_json(spec.run_dir / "config.json", {"config": {**old, "labels": "coarse"}})
    with pytest.raises(Exception, match="labels 'coarse' \\(now 'fine'\\)"):
        check_compatible(spec)


@pytest.mark.parametrize("argv", [["doctor", "resnet18"], ["benchmark", "--preset", "quick", "--out", "{tmp}"],
                                  ["train", "resnet18", "--out", "{tmp}"]])
def test_labels_coarse_of_cifar10_is_refused_by_every_command(argv, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path / "out") for a in argv]
    assert main([*argv, "--data", "sample", "--labels", "coarse"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--labels coarse: the sample (CIFAR-10) has one set of labels" in err
    assert not (tmp_path / "out").exists()
