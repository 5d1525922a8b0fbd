"""Settings files: `train --config FILE`, `benchmark --config FILE` and cz.fit(config=...)."""
from __future__ import annotations

import json

import pytest

from cifarzoo.cli import main

TINY = ["--width-mult", "0.0625", "--epochs", "1", "--batch-size", "20", "--device", "cpu", "--threads", "1",
        "--eval-batch-size", "20"]


def _config_of(run_dir):
    return json.loads((run_dir / "config.json").read_text())["config"]


def test_train_config_round_trips_a_run_exactly(tmp_path, fake_batches_dir, capsys):
    """A run's own settings given back with --config give a run with exactly those settings."""
    first = tmp_path / "first"
    assert main(["train", "fastnet", "--data", str(fake_batches_dir), *TINY, "--quiet", "--out", str(first)]) == 0
    settings = _config_of(first)
    settings["lr"] = 0.05  # and batch_size 20, where fastnet's recipe says 1024
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    second = tmp_path / "second"
    assert main(["train", "--config", str(tmp_path / "settings.json"), "--quiet", "--out", str(second)]) == 0
    assert _config_of(second) == settings


def test_command_line_wins_over_the_file_and_toml_reads(tmp_path):
    import argparse

    from cifarzoo.cli.train import config_from_args, register

    (tmp_path / "s.toml").write_text('model = "resnet18"\npreset = "quick"\nlr = 0.3\nepochs = 4\n'
                                     '[model_kwargs]\n')
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(tmp_path / "s.toml"), "--epochs", "2"])
    config = config_from_args(args)
    assert (config.model, config.lr, config.epochs, config.data) == ("resnet18", 0.3, 2, "sample")


@pytest.mark.parametrize("text, name, message", [
    ('{"lr": 0.1, "learning_rate": 0.2}', "s.json", "learning_rate (cifarzoo calls it lr)"),
    ('{"epocs": 3}', "s.json", "epocs (did you mean epochs?)"),
    ('{"lr": 0.1,}', "s.json", "s.json: not valid JSON"),
    ('lr = = 1', "s.toml", "s.toml: not valid TOML"),
    ('[1, 2]', "s.json", "expected an object of settings"),
    ('{"lr": "fast"}', "s.json", "invalid --lr 'fast'"),
])
def test_train_config_errors_are_one_line_naming_the_file(tmp_path, capsys, text, name, message):
    (tmp_path / name).write_text(text)
    assert main(["train", "resnet18", "--config", str(tmp_path / name), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_train_config_missing_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.json")]) == 2
    assert "none.json: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ('{"modles": "vgg16"}', "modles (did you mean models?)"),
    ('{"seeds": "2"}', "invalid seeds '2': expected an integer"),
    ('{"preset": "huge"}', "invalid preset 'huge': expected quick"),
])
def test_benchmark_config_refuses_bad_keys_and_values(tmp_path, capsys, text, message):
    (tmp_path / "study.json").write_text(text)
    assert main(["benchmark", "--config", str(tmp_path / "study.json"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert message in err and "study.json" in err and len(err.strip().splitlines()) == 1


def test_benchmark_config_file_below_the_command_line(tmp_path, monkeypatch):
    """The file's options are the defaults, the command line's win: what plan_study is asked for."""
    from cifarzoo import study

    asked = {}

    def plan_study(models, **kw):
        asked.update(kw, models=models)
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "plan_study", plan_study)
    (tmp_path / "study.toml").write_text('models = ["vgg16", "resnet50"]\npreset = "quick"\nseeds = 3\n'
                                         'epochs = 5\n')
    main(["benchmark", "--config", str(tmp_path / "study.toml"), "--preset", "standard", "--out", str(tmp_path)])
    assert asked["models"] == "vgg16,resnet50" and asked["preset"] == "standard"
    assert (asked["seeds"], asked["epochs"]) == (3, 5)


def test_fit_takes_a_config(tmp_path, small_dataset):
    import cifarzoo as cz

    (tmp_path / "s.json").write_text(json.dumps({"model": "resnet18", "width_mult": 0.0625, "epochs": 1,
                                                 "batch_size": 20, "lr": 0.05, "device": "cpu", "threads": 1}))
    run = cz.fit(data=small_dataset, config=tmp_path / "s.json", lr=0.02, out=tmp_path / "r", progress="none")
    assert (run.config.model, run.config.lr, run.config.batch_size) == ("resnet18", 0.02, 20)
    with pytest.raises(cz.CifarzooError, match="epocs"):
        cz.fit(data=small_dataset, config={"epocs": 1}, model="resnet18", progress="none")
