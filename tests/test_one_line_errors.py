"""Bad input gets one line and exit status 2, never a traceback (issue: tracebacks where one line is promised)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cifarzoo.cli import main
from cifarzoo.errors import CifarzooError
from cifarzoo.train import TrainConfig, fit


@pytest.fixture(scope="module")
def run_dir(sample_subset, tmp_path_factory) -> Path:
    tiny = sample_subset(10)
    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=1, batch_size=20, device="cpu",
                         precision="fp32", compile="off", allow_stall=True, data="sample", eval_batch_size=500)
    return fit(config, dataset=tiny, out_dir=tmp_path_factory.mktemp("run") / "run").run_dir


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "\x1b" not in err, err
    return err


def read_only(folder: Path, monkeypatch) -> None:
    """Make ``folder`` refuse new files, as a read-only folder does (also for root, who writes anywhere)."""
    import tempfile

    folder.chmod(0o555)
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


TRAIN = ["train", "resnet18", "--data", "sample", "--device", "cpu"]


@pytest.mark.parametrize("flag, value, expected", [
    ("--warmup-epochs", "nan", "--warmup-epochs nan"), ("--warmup-epochs", "inf", "--warmup-epochs inf"),
    ("--seed", str(2**64), "--seed"), ("--seed", "-1", "--seed -1"),
    ("--cutout-size", "-3", "--cutout-size"), ("--momentum", "nan", "--momentum"),
    ("--momentum", "1.5", "--momentum"), ("--weight-decay", "inf", "--weight-decay"),
    ("--stall-steps", "0", "--stall-steps"), ("--eval-batch-size", "0", "--eval-batch-size"),
    ("--nan-check-every", "-5", "--nan-check-every"), ("--aux-weight", "nan", "--aux-weight"),
    ("--crop-pad", "99", "--crop-pad"), ("--muon-lr", "inf", "--muon-lr"), ("--width-mult", "nan", "--width-mult"),
    ("--bn-bias-decay", "nan", "--bn-bias-decay"), ("--label-smoothing", "nan", "--label-smoothing"),
    ("--lr", "1e308", "--lr 1e+308: expected a number in (0, 10]"),
    ("--weight-decay", "1e308", "--weight-decay 1e+308: expected a number in [0, 1]"),
    ("--threads", "99999", "--threads 99999: expected an integer in [1, 4096], or none"),
    ("--epochs", "1000000000", "--epochs"), ("--width-mult", "64", "--width-mult"),
])
def test_every_numeric_option_is_checked_at_parse_time(capsys, tmp_path, flag, value, expected):
    small = ["--subset", "100", "--width-mult", "0.125", "--epochs", "1", "--batch-size", "50", "--compile", "off"]
    err = one_line_error(capsys, TRAIN + small + [flag, value, "--out", str(tmp_path / "run")])
    assert f"invalid {expected}" in err
    assert not (tmp_path / "run").exists()


def test_nproc_without_batch_size_resolves_the_automatic_batch_first(capsys, monkeypatch):
    import cifarzoo.train.launch as launch

    started = []
    monkeypatch.setattr(launch, "launch", lambda argv, n: started.append((argv, n)) or 0)
    # the sample's 5,000 images give the automatic batch 128; 3 ranks cannot split it evenly
    err = one_line_error(capsys, TRAIN + ["--nproc-per-node", "3"])
    assert "128" in err and "3" in err
    assert main(TRAIN + ["--nproc-per-node", "2"]) == 0  # 128 = 2 x 64: launched
    assert started and started[0][1] == 2


def test_evaluate_on_a_read_only_run_says_where_to_write(run_dir, tmp_path, capsys, monkeypatch):
    read_only(run_dir, monkeypatch)
    try:
        err = one_line_error(capsys, ["evaluate", str(run_dir), "--device", "cpu"])
        assert "--out" in err and str(run_dir) in err
        assert main(["evaluate", str(run_dir), "--device", "cpu", "--out", str(tmp_path / "elsewhere")]) == 0
        assert (tmp_path / "elsewhere" / "confusion.json").is_file()
    finally:
        run_dir.chmod(0o755)


def test_export_to_a_read_only_run_says_where_to_write(run_dir, capsys, monkeypatch):
    pytest.importorskip("onnx")
    read_only(run_dir, monkeypatch)
    try:
        err = one_line_error(capsys, ["export", str(run_dir)])
        assert "--out FILE.onnx" in err
    finally:
        run_dir.chmod(0o755)


def test_data_show_into_a_folder_is_one_line(tmp_path, capsys):
    err = one_line_error(capsys, ["data", "show", "--data", "sample", "--out", str(tmp_path)])
    assert "is a folder" in err


def test_a_checkpoint_whose_classes_do_not_match_its_outputs(run_dir, tmp_path, capsys):
    raw = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    raw["classes"] = raw["classes"][:7]
    torch.save(raw, tmp_path / "bad.pt")
    err = one_line_error(capsys, ["evaluate", str(tmp_path / "bad.pt"), "--device", "cpu"])
    assert "7 classes" in err and "10 outputs" in err


@pytest.mark.parametrize("content", ["pickled code", "not a zip"])
def test_a_foreign_checkpoint_is_one_plain_line(tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    if content == "pickled code":
        torch.save({"model": torch.nn.Linear(2, 2)}, path)  # needs the unsafe loader
    else:
        path.write_bytes(b"PK\x03\x04 not really")
    err = one_line_error(capsys, ["evaluate", str(path), "--device", "cpu"])
    assert "not a cifarzoo checkpoint, or damaged" in err
    assert "weights_only" not in err


def test_a_study_json_that_is_not_an_object(tmp_path, capsys):
    (tmp_path / "study.json").write_text("[1, 2, 3]")
    err = one_line_error(capsys, ["benchmark", "--report-only", "--out", str(tmp_path)])
    assert "study.json" in err and "not a cifarzoo study file" in err


def test_the_nan_message_promises_a_checkpoint_only_when_there_is_one(bundled_sample, tmp_path, monkeypatch):
    import cifarzoo.train.step as step_mod

    real = step_mod.model_loss
    monkeypatch.setattr(step_mod, "model_loss", lambda *a: (real(*a)[0] * float("nan"), real(*a)[1]))
    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=1, batch_size=250, device="cpu",
                         precision="fp32", compile="off", subset=500)
    with pytest.raises(Exception) as info:
        fit(config, dataset=bundled_sample, out_dir=tmp_path / "run")
    assert "No checkpoint had been saved yet" in str(info.value)
    assert "is kept" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_option_values_are_case_insensitive_and_val_split_takes_a_count_or_a_fraction(capsys, tmp_path):
    import json

    small = ["--subset", "100", "--width-mult", "0.125", "--epochs", "1", "--batch-size", "20", "--compile", "off",
             "--precision", "FP32", "--optimizer", "SGD", "--allow-stall"]
    assert main(TRAIN + small + ["--val-split", "0.2", "--out", str(tmp_path / "run")]) == 0
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (info["config"]["val_split"], info["config"]["optimizer"], info["config"]["precision"]) == (
        0.2, "sgd", "fp32")
    assert info["data"]["eval_split"] == "val" and info["data"]["eval_images"] == 20
    capsys.readouterr()
    with pytest.raises(SystemExit) as parse_error:  # argparse's usage, then the reason on its last line
        main(TRAIN + small + ["--val-split", "a tenth", "--out", str(tmp_path / "other")])
    assert parse_error.value.code == 2 and not (tmp_path / "other").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "--val-split: expected an image count or a fraction in (0, 1), got 'a tenth'")


def test_every_training_setting_has_an_upper_bound_in_the_python_api_too():
    import dataclasses
    import math

    from cifarzoo.train.config import _NUMBERS, TrainConfig

    numeric = {f.name for f in dataclasses.fields(TrainConfig)
               if any(t in str(f.type) for t in ("int", "float")) and f.name != "tta_level"}
    assert numeric <= set(_NUMBERS), numeric - set(_NUMBERS)
    for name, (integer, lo, hi, lo_ok, hi_ok, optional) in _NUMBERS.items():
        assert hi is not None, name
        too_big = hi + 1 if integer else (math.nextafter(hi, math.inf) if hi_ok else hi)
        with pytest.raises(CifarzooError, match=rf"^invalid --{name.replace('_', '-')} "):
            TrainConfig(**{name: too_big})


def test_threads_beyond_the_cpus_present_are_refused_and_such_an_environment_ignored(monkeypatch):
    import os

    from cifarzoo.device import resolve_threads

    cpus = os.cpu_count()
    with pytest.raises(CifarzooError, match=rf"^--threads {cpus + 1}: more than the {cpus} CPUs present$"):
        resolve_threads(cpus + 1)
    assert resolve_threads(1) == (1, "asked for")
    monkeypatch.setenv("OMP_NUM_THREADS", "99999")
    threads, why = resolve_threads(None)
    assert threads <= cpus and "OMP_NUM_THREADS='99999' ignored" in why
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_threads(None) == (1, "OMP_NUM_THREADS")


def test_seeds_beyond_the_bound_are_refused_before_planning(tmp_path, capsys):
    import cifarzoo as cz

    with pytest.raises(CifarzooError, match=r"--seeds must be an integer in \[1, 100\], got 1000000000"):
        cz.benchmark(["fastnet"], data="sample", seeds=10**9, out=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()
