"""Damaged, hand-edited or crafted inputs get one line naming what is wrong (exit status 2), never a
traceback and never a number shown as success: checkpoints, run folders, ONNX files, images, settings."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarzoo.cli import main
from cifarzoo.errors import CifarzooError
from cifarzoo.train import TrainConfig, fit


@pytest.fixture(scope="module")
def run_dir(sample_subset, tmp_path_factory) -> Path:
    """A finished 1-epoch run of a tiny model on 100 sample images."""
    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=1, batch_size=20, device="cpu",
                         precision="fp32", compile="off", allow_stall=True, data="sample", eval_batch_size=500)
    return fit(config, dataset=sample_subset(10), out_dir=tmp_path_factory.mktemp("run") / "run").run_dir


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "grey.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
    return path


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _first_conv(c):
    key = next(k for k, t in c["state_dict"].items() if t.dim() == 4)
    c["state_dict"][key] = torch.zeros(1, 1, 1, 1)


def _partial(step, steps):
    return {"step": step, "step_loss": torch.zeros(steps), "step_correct": torch.zeros(steps),
            "step_count": torch.zeros(steps), "epoch_seconds": 1.0}


# (edit of the checkpoint dict, text the one-line error must contain)
CORRUPTIONS = {
    "model name an int": (lambda c: c["model"].update(name=5), "'model.name' is 5"),
    "model a list": (lambda c: c.update(model=[1]), "'model' is [1]"),
    "kwargs a list": (lambda c: c["model"].update(kwargs=[1, 2]), "'model.kwargs' is [1, 2]"),
    "kwargs unknown": (lambda c: c["model"]["kwargs"].update(bogus=1), "cannot build model"),
    "width mismatch": (lambda c: c["model"]["kwargs"].update(width_mult=0.25), "weights do not fit"),
    "a weight of another shape": (_first_conv, "has shape (1, 1, 1, 1)"),
    "state_dict a list": (lambda c: c.update(state_dict=[1]), "'state_dict' is [1]"),
    "normalization of 2 values": (lambda c: c["normalization"].update(mean=[1.0, 2.0]), "'normalization.mean'"),
    "normalization std missing": (lambda c: c["normalization"].pop("std"), "lacks 'normalization.std'"),
    "normalization a string": (lambda c: c.update(normalization="x"), "'normalization' is 'x'"),
    "normalization missing": (lambda c: c.pop("normalization"), "lacks 'normalization'"),
    "classes a string": (lambda c: c.update(classes="abc"), "'classes' is 'abc'"),
    "classes numbers": (lambda c: c.update(classes=list(range(10))), "'classes'"),
    "config a list": (lambda c: c.update(config=[1]), "'config' is [1]"),
    "config missing": (lambda c: c.pop("config"), "lacks 'config'"),
    "config data an int": (lambda c: c["config"].update(data=5), "--data 5"),
    "eval batch size 0": (lambda c: c["config"].update(eval_batch_size=0), "--eval-batch-size 0"),
    "eval batch size a string": (lambda c: c["config"].update(eval_batch_size="x"), "--eval-batch-size 'x'"),
    "epoch a string": (lambda c: c.update(epoch="one"), "'epoch' is 'one'"),
    "epoch negative": (lambda c: c.update(epoch=-1), "'epoch' is -1"),
    "epoch beyond the config": (lambda c: c.update(epoch=99), "'epoch' is 99"),
    "rng missing": (lambda c: c.pop("rng"), "lacks 'rng'"),
    "rng of floats": (lambda c: c.update(rng={"torch": torch.zeros(3)}), "'rng'"),
    "optimizer missing": (lambda c: c.pop("optimizer"), "lacks 'optimizer'"),
    "optimizer without groups": (lambda c: c.update(optimizer={"a": 1}), "'optimizer'"),
    "scheduler missing": (lambda c: c.pop("scheduler"), "lacks 'scheduler'"),
    "metrics garbage": (lambda c: c.update(metrics="garbage"), "'metrics' is 'garbage'"),
    "metrics rows not dicts": (lambda c: c.update(metrics=[1, 2]), "'metrics' is [1, 2]"),
    "partial step a string": (lambda c: c.update(partial={"step": "x"}), "'partial'"),
    "train_seconds a string": (lambda c: c.update(train_seconds="x"), "'train_seconds' is 'x'"),
    "std zero": (lambda c: c["normalization"].update(std=[0.0, 1.0, 1.0]), "'normalization.std'"),
}


def damaged(run_dir: Path, folder: Path, edit, *, finished: bool = True) -> Path:
    """A copy of ``run_dir`` in ``folder`` whose checkpoint has had ``edit`` applied."""
    import shutil

    shutil.copytree(run_dir, folder)
    ckpt = copy.deepcopy(torch.load(run_dir / "checkpoint.pt", weights_only=True))
    ckpt["finished"] = finished
    edit(ckpt)
    torch.save(ckpt, folder / "checkpoint.pt")
    (folder / "summary.json").unlink(missing_ok=not finished)
    return folder


RESUME_ONLY = ("rng missing", "optimizer missing", "scheduler missing")  # predict and evaluate do without them
NOT_RESUME = ("kwargs unknown", "width mismatch")  # a resumed run builds its model from its config, not 'model'


@pytest.mark.parametrize("command, case", [
    (command, case) for command in ("predict", "evaluate", "resume") for case in CORRUPTIONS
    if (command == "resume" or case not in RESUME_ONLY) and (command != "resume" or case not in NOT_RESUME)])
def test_a_damaged_checkpoint_is_one_line_naming_the_field(run_dir, image, tmp_path, capsys, case, command):
    edit, expected = CORRUPTIONS[case]
    folder = damaged(run_dir, tmp_path / "run", edit, finished=command != "resume")
    argv = {"predict": ["predict", str(folder), str(image), "--device", "cpu"],
            "evaluate": ["evaluate", str(folder), "--device", "cpu", "--out", str(tmp_path / "eval")],
            "resume": ["train", "--resume", str(folder)]}[command]
    err = one_line_error(capsys, argv)
    assert expected in err and str(folder) in err, err


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c.update(rng={"torch": torch.zeros(7, dtype=torch.uint8)}), "random state"),
    (lambda c: c["optimizer"].update(param_groups=[]), "optimizer"),
    (lambda c: c.update(partial=_partial(50, 5)), "'partial' stopped at step 50"),
])
def test_resume_refuses_state_that_does_not_fit_the_run(run_dir, tmp_path, capsys, edit, expected):
    def unfinished(c):
        c["config"]["epochs"] = 2
        edit(c)

    folder = damaged(run_dir, tmp_path / "run", unfinished, finished=False)
    err = one_line_error(capsys, ["train", "--resume", str(folder)])
    assert expected in err and "damaged checkpoint" in err


def crafted_onnx(path: Path, shape_in: list, shape_out: list, op: str, classes: int = 10) -> Path:
    """A one-node ONNX graph carrying cifarzoo's metadata: what a crafted or foreign file can look like."""
    import json

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    nodes = [helper.make_node(op, ["images"], ["logits"], **({"axis": 1} if op == "Flatten" else {}))]
    graph = helper.make_graph(nodes, "crafted", [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape_out)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for key, value in {"format": "cifarzoo.onnx", "classes": json.dumps([f"c{i}" for i in range(classes)]),
                       "model_name": "crafted", "layout": "nchw"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("shape_in, shape_out, op, expected", [
    (["batch", 3072], ["batch", 10], "Identity", "input has shape (batch, 3072)"),
    (["batch", 3, 32, 32], ["batch", "n"], "Flatten", "3072"),  # ONNX Runtime infers the width
    (["batch", 3, 32, 32], ["batch", 3, 32, 32], "Identity", "output has shape (batch, 3, 32, 32)"),
])
def test_a_crafted_onnx_file_is_one_line(image, tmp_path, capsys, shape_in, shape_out, op, expected):
    path = crafted_onnx(tmp_path / "crafted.onnx", shape_in, shape_out, op)
    err = one_line_error(capsys, ["predict", str(path), str(image)])
    assert expected in err and str(path) in err, err


def test_nan_weights_are_refused_not_shown_as_nan_percent(run_dir, image, tmp_path, capsys):
    def poison(c):
        key = next(k for k, t in c["state_dict"].items() if t.is_floating_point() and t.dim() == 4)
        c["state_dict"][key] = c["state_dict"][key] * float("nan")

    folder = damaged(run_dir, tmp_path / "run", poison)
    err = one_line_error(capsys, ["predict", str(folder), str(image), "--json"])
    assert "'state_dict'" in err and "finite" in err
    assert "nan%" not in capsys.readouterr().out


def test_non_finite_logits_are_an_error_naming_the_file(run_dir, image, monkeypatch, capsys):
    from cifarzoo import predict

    monkeypatch.setattr(predict._TorchClassifier, "predict_logits", lambda self, x: np.full((len(x), 10), np.nan))
    err = one_line_error(capsys, ["predict", str(run_dir), str(image), "--json"])
    assert "non-finite logits" in err and str(image) in err


def test_json_output_is_always_valid_json():
    import json

    from cifarzoo.io import json_text

    text = json_text({"acc": float("nan"), "rows": [float("inf"), 1.5]})
    assert json.loads(text) == {"acc": None, "rows": [None, 1.5]}  # bare NaN would not parse strictly
    assert "NaN" not in text and "Infinity" not in text


def test_a_batch_with_keys_of_mixed_types_is_one_line(fake_files, fake_cifar, tmp_path):
    from cifarzoo.data import load
    from cifarzoo.errors import DataError

    batch = {5: b"x", b"labels": [0], "other": 1}
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake_cifar,
                                      overrides={"data_batch_2": batch})
    with pytest.raises(DataError, match="missing key 'data'"):
        load(str(folder))


def test_ctrl_c_while_the_commands_load_is_one_line_and_130(tmp_path):
    """A real SIGINT while the parser is built (the commands' modules imported): no traceback."""
    import os
    import subprocess
    import sys

    code = ("import os, signal, sys\n"
            "import cifarzoo.cli as cli\n"
            "real = cli.build_parser\n"
            "def build():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real()\n"
            "cli.build_parser = build\n"
            "sys.exit(cli.main(['models']))\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "cifarzoo: interrupted"


def test_ctrl_c_during_onnx_export_is_an_interruption_not_an_exporter_bug(run_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    from cifarzoo import export

    def interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:  # as torch's exporter does: its own error, raised from the signal
            raise RuntimeError("Failed to export the model with torch.export") from exc

    monkeypatch.setattr(export, "_to_onnx_proto", interrupted)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "m.onnx")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "cifarzoo export: interrupted" and not (tmp_path / "m.onnx").exists()


def test_class_names_with_dollar_signs_are_drawn_literally(fake_files, tmp_path, capsys):
    """matplotlib would parse ``$_low_$`` as mathtext and raise inside ``data show`` and every figure."""
    from cifarzoo.plots import plot_confusion

    fake = fake_files.make(classes=("pay_$_low_$", "a$\\frac{1}{0}$", *[f"c{i}" for i in range(8)]))
    root = fake_files.write_image_folder(tmp_path / "images", fake)
    assert main(["data", "show", "--data", str(root), "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    plot_confusion(tmp_path / "confusion.png", np.eye(10, dtype=np.int64), list(fake.classes), title="$x_$")
    assert (tmp_path / "confusion.png").stat().st_size > 0


@pytest.mark.parametrize("argv, expected", [
    (["data", "show", "--data", "sample", "--seed", "-1"], "--seed"),
    (["doctor", "resnet18", "--data", "sample", "--overfit-steps", "0"], "--overfit-steps"),
    # options outside TrainConfig have upper bounds too (a huge one used to run for ever or spawn without end)
    (["doctor", "resnet18", "--data", "sample", "--overfit-steps", "100000000"],
     "--overfit-steps must be an integer in [1, 100000]"),
    (["data", "show", "--data", "sample", "--per-class", "100000"], "--per-class must be in [1, 100]"),
    (["data", "show", "--data", "sample", "--classes", "100000"], "--classes must be in [1, 1000]"),
    (["train", "resnet18", "--data", "sample", "--nproc-per-node", "99999"],
     "--nproc-per-node must be a positive integer, at most 256"),
    (["benchmark", "--models", "vgg16", "--data", "sample", "--jobs", "99999"],
     "--jobs must be an integer in [1, 1024]"),
    (["benchmark", "--models", "vgg16", "--data", "sample", "--executor", "ray", "--cpus-per-run", "1e9"],
     "--cpus-per-run must be in (0, 1024]"),
])
def test_settings_of_show_and_doctor_are_one_line(tmp_path, capsys, argv, expected):
    out = {"data": ["--out", str(tmp_path / "g.png")], "benchmark": ["--out", str(tmp_path / "s")]}
    err = one_line_error(capsys, argv + out.get(argv[0], []))
    assert expected in err


@pytest.mark.parametrize("kwargs, expected", [
    ({"model_kwargs": {"num_classes": 3}}, "num_classes"),
    ({"model_kwargs": [("aux_logits", True)]}, "model_kwargs"),
    ({"model_kwargs": {1: True}}, "model_kwargs"),
])
def test_model_kwargs_are_checked_against_the_builder(kwargs, expected):
    with pytest.raises(CifarzooError, match=expected):
        TrainConfig(model="resnet18", **kwargs)


def test_an_unknown_model_option_is_one_line():
    from cifarzoo import models

    with pytest.raises(CifarzooError, match="does not take"):
        models.create("resnet18", num_classes=10, bogus=1)


def test_top_k_true_is_refused(run_dir):
    import cifarzoo as cz

    with pytest.raises(CifarzooError, match="top_k"):
        cz.load_run(run_dir).predict(np.zeros((32, 32, 3), np.uint8), top_k=True)


def test_an_empty_test_split_is_refused_on_load(fake_files, tmp_path):
    import shutil

    from cifarzoo.data import load
    from cifarzoo.errors import DataError

    root = fake_files.write_image_folder(tmp_path / "images", fake_files.make())
    for folder in (root / "test").iterdir():  # test/ holds no class folder at all
        shutil.rmtree(folder)
    with pytest.raises(DataError, match="no test images"):
        load(str(root))


@pytest.mark.parametrize("name, content, use", [
    ("config.json", "[1, 2]", repr), ("config.json", '{"config": [1]}', repr),
    ("config.json", '{"data": "x"}', lambda r: r.classes),
    ("config.json", '{"data": {}}', lambda r: r.config), ("config.json", '{"config": {"lr": "x"}}', lambda r: r.config),
    ("summary.json", '{"test_acc": "high"}', repr), ("summary.json", "[]", repr),
    ("metrics.csv", "epoch,lr\n1,0.1\n", lambda r: r.plot()),
    ("metrics.csv", "garbage\nx,y,z\n", lambda r: r.metrics),
    ("metrics.csv", "epoch,lr,train_loss,train_acc,eval_loss,eval_acc,epoch_seconds,elapsed_seconds,"
                    "images_per_second\none,1,1,1,1,1,1,1,1\n", lambda r: r.metrics),
])
def test_run_on_a_damaged_folder_raises_one_line(run_dir, tmp_path, name, content, use):
    import shutil

    import cifarzoo as cz

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    (folder / name).write_text(content)
    with pytest.raises(CifarzooError) as info:
        use(cz.load_run(folder))
    assert name in str(info.value) and "\n" not in str(info.value)


def crafted_dds(path: Path) -> Path:
    """A DDS header naming a pixel format Pillow does not implement (it raises NotImplementedError)."""
    import struct

    header = struct.pack("<4s7I44s", b"DDS ", 124, 0x1007, 32, 32, 0, 0, 0, b"\0" * 44)
    pixel_format = struct.pack("<2I4s5I", 32, 0x4, b"XXXX", 0, 0, 0, 0, 0)
    path.write_bytes(header + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + b"\0" * 4096)
    return path


def test_a_crafted_image_is_refused_by_name_and_the_others_classified(run_dir, image, tmp_path, capsys):
    bad = crafted_dds(tmp_path / "bad.dds")
    assert main(["predict", str(run_dir), str(bad), str(image), "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    assert str(image) in out and "Traceback" not in err
    assert f"{bad}: cannot read this image (NotImplementedError" in err


def test_run_predict_refuses_odd_pil_images_by_name_and_classifies_the_rest(run_dir):
    import cifarzoo as cz

    closed = Image.new("RGB", (32, 32))
    closed.close()
    negative = Image.fromarray(np.full((8, 8), -5, np.int32))  # mode I
    good = Image.new("RGB", (32, 32), (200, 10, 10))
    results = cz.load_run(run_dir).predict([Image.new("F", (8, 8)), negative, closed, good], device="cpu")
    assert [r.ok for r in results] == [False, False, False, True]
    assert all(r.error.startswith(f"images[{i}]: ") for i, r in enumerate(results[:3]))


def test_one_accuracy_per_run_whatever_it_trained_in(sample_subset, tmp_path):
    """A bf16 run's summary and `evaluate` give the same test accuracy: both are computed in fp32."""
    import json

    from cifarzoo.evaluate import evaluate

    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=1, batch_size=20, device="cpu",
                         precision="bf16", compile="off", allow_stall=True, data="sample", eval_batch_size=500)
    run = fit(config, dataset=sample_subset(10), out_dir=tmp_path / "run").run_dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["eval_precision"] == "fp32"
    result = evaluate(run, dataset=sample_subset(10), device="cpu", save=False)
    assert result.accuracy == summary["test_acc"] and result.loss == summary["test_loss"]


def test_a_short_run_at_chance_says_so(sample_subset, tmp_path, capsys):
    """Fewer steps than the stall check needs, and an accuracy within noise of chance: said in the
    summary and on the console, not reported as a plain "finished"."""
    import json

    from cifarzoo.progress import ConsoleReporter

    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=1, batch_size=20, device="cpu", lr=1e-6,
                         precision="fp32", compile="off", data="sample", eval_batch_size=500)
    fit(config, dataset=sample_subset(10), out_dir=tmp_path / "run", reporter=ConsoleReporter())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["stall_check"] == "not run (too few steps)"
    assert any("stall check did not run" in w for w in summary["warnings"])
    assert "warning: the stall check did not run" in capsys.readouterr().out


def test_near_chance_is_two_standard_errors_above_one_over_c():
    from cifarzoo.train.guards import near_chance

    # 10 classes, 1,000 images: chance 10%, standard error 0.95%: up to 11.9% is noise
    assert near_chance(0.104, 10, 1000) and near_chance(0.118, 10, 1000) and not near_chance(0.12, 10, 1000)
    assert not near_chance(0.5, 10, 1000)
