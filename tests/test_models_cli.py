"""``cifarzoo models``: the zoo table (text and JSON), one model's layer table, errors."""
from __future__ import annotations

import json

from cifarzoo.cli import main
from cifarzoo.models import list_models


def test_models_json_lists_every_model_with_params_and_macs(capsys):
    assert main(["models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["width_mult"] == 1.0 and out["num_classes"] == 10
    rows = {r["name"]: r for r in out["models"]}
    assert sorted(rows) == list_models() == ["fastnet", "inception", "resnet18", "resnet50", "vgg16", "vgg19",
                                             "xception"]
    for r in rows.values():
        assert r["params"] > 1_000_000 and r["macs"] > 100_000_000 and r["paper"]
    assert rows["resnet18"]["params"] == 11_173_962
    assert rows["resnet18"]["macs"] == 555_422_720  # the widely quoted 0.56 G for the CIFAR ResNet-18
    assert rows["inception"]["aliases"] == ["googlenet"]


def test_models_table_at_a_width(capsys):
    assert main(["models", "--width-mult", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "width 0.25" in out and "parameters" in out and "MACs" in out
    for name in list_models():
        assert any(line.startswith(name) for line in out.splitlines())
    assert "inception (googlenet)" in out and "He et al. 2016" in out


def test_models_name_prints_a_layer_table(capsys):
    assert main(["models", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "Output Shape" in out and "Param #" in out
    assert "BasicBlock" in out and "[1, 64, 32, 32]" in out and "[1, 512, 4, 4]" in out and "[1, 10]" in out
    assert "Total params: 11,173,962" in out


def test_models_alias_and_width(capsys):
    assert main(["models", "googlenet", "--width-mult", "0.25"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("inception (width 0.25)") and "Inception" in out and "[1, 10]" in out


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["models", "resnet51"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifarzoo models: error: unknown model 'resnet51'")
    assert all(name in err for name in list_models()) and len(err.strip().splitlines()) == 1


def test_bad_width_is_a_one_line_error(capsys):
    assert main(["models", "--width-mult", "0"]) == 2
    assert "--width-mult" in capsys.readouterr().err
