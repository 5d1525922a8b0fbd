"""The Python API (cifarzoo.api): train from arrays, the Run object, resume, predict, benchmark."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from PIL import Image

import cifarzoo as cz
from cifarzoo.errors import CifarzooError
from cifarzoo.train import Reporter

TINY = dict(width_mult=0.125, batch_size=16, precision="fp32", compile="off", device="cpu")


def _data(fake):
    return (fake.train_images, fake.train_labels, fake.test_images, fake.test_labels)


def test_import_cifarzoo_stays_light_and_the_api_survives_importing_the_trainer():
    code = ("import sys, cifarzoo as cz; assert 'torch' not in sys.modules and 'numpy' not in sys.modules; "
            "import cifarzoo.train.loop; from cifarzoo.api import fit; assert cz.fit is fit and cz.Run")
    subprocess.run([sys.executable, "-c", code], check=True)


class StopAfterFirstEpoch(Reporter):
    def on_epoch_end(self, row):
        raise KeyboardInterrupt


def test_train_from_arrays_resume_evaluate_predict_and_show(fake_cifar, fake_batches_dir, tmp_path, capsys):
    data = _data(fake_cifar)
    out = tmp_path / "run"
    # Interrupted after epoch 1 of 2 (as a kernel interrupt would): a resumable checkpoint, and how to resume.
    with pytest.raises(KeyboardInterrupt) as stop:
        cz.fit("resnet18", data=data, epochs=2, out=out, progress=StopAfterFirstEpoch(), **TINY)
    assert f"cifarzoo.fit(resume={str(out)!r}, data=...)" in "".join(getattr(stop.value, "__notes__", []))
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["data"] == "arrays" and info["data"]["source"] == "arrays in memory"
    partial = cz.load_run(out)
    assert partial.summary == {} and len(partial.metrics) == 1 and "unfinished (1 of 2 epochs)" in partial._repr_html_()

    with pytest.raises(CifarzooError, match=r"trained on arrays in memory .* pass them again to resume it: "
                                            r"data=\(x_train, y_train, x_test, y_test\)"):
        cz.fit(resume=out)
    other = list(data)
    other[0] = 255 - other[0]
    with pytest.raises(CifarzooError, match="these are not the arrays the run was trained on"):
        cz.fit(resume=out, data=other)
    with pytest.raises(CifarzooError, match="a resumed run keeps its settings and folder; drop model, epochs"):
        cz.fit("resnet18", resume=out, epochs=3)
    # The same images saved to disk meanwhile (fake_batches_dir holds fake_cifar) resume it too.
    run = cz.fit(resume=out, data=str(fake_batches_dir), progress="none")
    assert capsys.readouterr() == ("", "")  # library code prints nothing of its own
    assert run.summary["status"] == "finished" and [r["epoch"] for r in run.metrics] == [1, 2]
    assert run.classes == list(fake_cifar.classes) and run.config.epochs == 2

    # evaluate: the arrays held by this Run; a reopened run needs them again.
    result = run.evaluate()
    assert result.confusion.sum() == 20 and 0 <= result.accuracy <= 1
    with pytest.raises(CifarzooError, match="pass them again to evaluate it"):
        cz.load_run(out).evaluate()
    assert cz.load_run(out / "checkpoint.pt").evaluate(data=data, save=False).accuracy == result.accuracy

    # predict: arrays, one array, PIL images and files (an unreadable one reported, the rest classified).
    png = tmp_path / "x.png"
    Image.fromarray(fake_cifar.test_images[0]).resize((64, 48)).save(png)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    batch = run.predict(fake_cifar.test_images[:3], top_k=2)
    assert [p.path for p in batch] == ["images[0]", "images[1]", "images[2]"]
    assert all(len(p.top) == 2 and p.top[0][1] >= p.top[1][1] and p.top[0][0] in run.classes for p in batch)
    mixed = run.predict([fake_cifar.test_images[1], Image.fromarray(fake_cifar.test_images[2]), str(png),
                         tmp_path / "bad.png"], top_k=2)
    for m, b in zip(mixed[:2], batch[1:]):  # the same pixels, as an array or a PIL image
        assert dict(m.top) == pytest.approx(dict(b.top), abs=1e-5)
    assert mixed[2].ok and not mixed[3].ok and "bad.png" in mixed[3].error
    assert run.predict(fake_cifar.test_images[0])[0].top[0][0] == batch[0].top[0][0]
    with pytest.raises(CifarzooError, match=re.escape("images: expected shape (N, 32, 32, 3), got (2, 3, 32, 32)")):
        run.predict(fake_cifar.test_images[:2].transpose(0, 3, 1, 2))

    # plot and the HTML representation.
    from matplotlib.figure import Figure

    fig = run.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and fig._repr_png_().startswith(b"\x89PNG")
    page = run._repr_html_()
    assert "test accuracy" in page and f"{100 * run.summary['test_acc']:.2f}%" in page
    assert page.count('<img src="data:image/png;base64,') == 1
    assert "resnet18" in repr(run) and "finished" in repr(run)


def test_train_from_a_data_spec_records_it_and_evaluates_from_it(fake_batches_dir, tmp_path):
    run = cz.fit("resnet18", data=str(fake_batches_dir), epochs=1, runs_root=tmp_path / "runs",
                   progress="none", **TINY)
    assert run.run_dir.parent == tmp_path / "runs" and run.run_dir.name.startswith("resnet18-")
    assert run.config.data == str(fake_batches_dir) and not run.trained_on_arrays
    reopened = cz.load_run(run.run_dir)
    assert reopened.evaluate(save=False).accuracy == pytest.approx(run.summary["test_acc"], abs=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda d: cz.fit(data=d), r"fit\(\) needs a model name"),
    (lambda d: cz.fit("resnet18", data=d, epochs=0), r"invalid --epochs 0: expected an integer in \[1, 10000\]"),
    (lambda d: cz.fit("resnet18", data=d, epoch=3), r"unknown training settings: epoch"),
    (lambda d: cz.fit("resnet18", data="sample", classes=["a"]), r"classes= names the classes of arrays"),
    (lambda d: cz.fit("resnet18", data=3), r"data: expected a --data spec"),
    (lambda d: cz.fit("resnet18", data=d, progress="loud"), r"progress='loud'"),
    (lambda d: cz.fit("resnet18", data=d[:3]), r"data: got a tuple of 3 items"),
    (lambda d: cz.load_run("nowhere"), r"nowhere: not a run folder"),
    (lambda d: cz.load_study("nowhere"), r"nowhere: no study report here"),
    (lambda d: cz.benchmark(["vgg16"], data=d, jobs=0, out="nowhere"),
     r"--jobs must be an integer in \[1, 1024\], got 0"),
])
def test_bad_calls_are_one_line_errors(fake_cifar, call, message):
    with pytest.raises(CifarzooError, match=message) as err:
        call(_data(fake_cifar))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_benchmark_from_arrays_returns_a_study_with_its_report(fake_cifar, tmp_path):
    study = cz.benchmark(["resnet18"], preset="quick", data=_data(fake_cifar), out=tmp_path / "study",
                         epochs=1, batch_size=16, progress="none")
    assert study.report == tmp_path / "study" / "report.html" and study.report.is_file()
    (row,) = study.results
    assert row["model"] == "resnet18" and row["status"] == "finished" and 0 <= row["test_acc_mean"] <= 1
    (run,) = study.runs
    assert run.summary["status"] == "finished" and run.run_dir.name == "resnet18-s0"
    page = cz.load_study(tmp_path / "study")._repr_html_()
    assert "<table>" in page and f"{100 * row['test_acc_mean']:.2f}%" in page
    assert page.count('<img src="data:image/png;base64,') == 2  # learning curves and trade-offs


def test_rerunning_a_fit_cell_returns_the_finished_run_and_other_settings_are_refused_in_python_terms(
        fake_cifar, tmp_path):
    data, out = _data(fake_cifar), tmp_path / "run"
    first = cz.fit("resnet18", data=data, epochs=1, out=out, progress="none", **TINY)
    stamp = (out / "summary.json").stat().st_mtime_ns
    again = cz.fit("resnet18", data=data, epochs=1, out=out, progress="none", **TINY)  # the same cell, re-run
    assert again.run_dir == first.run_dir and (out / "summary.json").stat().st_mtime_ns == stamp
    with pytest.raises(CifarzooError, match=r"other settings: epochs 1 \(now 2\); pass force=True .* another out="):
        cz.fit("resnet18", data=data, epochs=2, out=out, progress="none", **TINY)
    other = list(data)
    other[0] = 255 - other[0]
    with pytest.raises(CifarzooError, match="not the arrays the run was trained on.*force=True"):
        cz.fit("resnet18", data=other, epochs=1, out=out, progress="none", **TINY)
    forced = cz.fit("resnet18", data=data, epochs=1, out=out, progress="none", force=True, lr=0.05, **TINY)
    assert forced.config.lr == 0.05 and (out / "summary.json").stat().st_mtime_ns != stamp


@pytest.mark.parametrize("given, hint", [
    (dict(learning_rate=0.1), r"learning_rate \(cifarzoo calls it lr\)"),
    (dict(validation_split=0.1), r"validation_split \(cifarzoo calls it val_split\)"),
    (dict(num_epochs=3, verbose=1), r"num_epochs \(cifarzoo calls it epochs\); verbose \(progress is an argument"),
    (dict(validation_data=([], [])), r"validation_data \(.*data=\(x_train, y_train, x_test, y_test\)"),
    (dict(weight_decy=0.1), r"weight_decy \(did you mean weight_decay\?\)"),
])
def test_unknown_settings_name_what_was_meant(fake_cifar, tmp_path, given, hint):
    with pytest.raises(CifarzooError, match="unknown training settings: " + hint):
        cz.fit("vgg16", data=_data(fake_cifar), out=tmp_path / "r", epochs=1, progress="none", **given, **TINY)
    assert not (tmp_path / "r").exists()


def test_option_values_are_case_insensitive_and_val_split_takes_a_fraction(fake_cifar, tmp_path):
    from cifarzoo.train import make_config

    c = make_config("VGG16", optimizer="Adam", schedule="OneCycle", augment="Crop,Flip", val_split=0.25)
    assert (c.model, c.optimizer, c.schedule, c.augment, c.val_split) == (
        "vgg16", "adam", "onecycle", "crop,flip", 0.25)
    for bad in (1.0, 1.5, -0.1, True, "10"):
        with pytest.raises(CifarzooError, match="invalid --val-split"):
            make_config("vgg16", val_split=bad)
    run = cz.fit("resnet18", data=_data(fake_cifar), epochs=1, out=tmp_path / "r", progress="none",
                 val_split=0.25, **TINY)
    assert run.info["data"]["eval_split"] == "val" and run.info["data"]["eval_images"] == 15  # 25% of 60
