"""Your own network: cz.fit takes an nn.Module factory or instance; @cz.register_model; new processes.

A factory is recorded in the run's config by its import path ("package.module:name"), so
`cifarzoo evaluate`, `predict`, `train --resume` and `export` rebuild it in a new process
when it is importable and say why in one line (exit 2) when it is not. An instance has no
code a new process could import: it serves the Run in the process that trained it.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cifarzoo as cz
from cifarzoo import models
from cifarzoo.errors import CifarzooError
from cifarzoo.train import Reporter

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = dict(batch_size=16, precision="fp32", compile="off", device="cpu", progress="none")

NETS = '''
from torch import nn

import cifarzoo as cz


class TinyNet(nn.Module):
    """A factory: called with num_classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


@cz.register_model
def {name}(num_classes: int = 10):
    return TinyNet(num_classes)
'''


class StopAfterFirstEpoch(Reporter):
    def on_epoch_end(self, row):
        raise KeyboardInterrupt


def _module(tmp_path, monkeypatch, name: str, registered: str = "unused_tiny"):
    """An importable module of networks in tmp_path/mods (put on sys.path); unregistered afterwards."""
    folder = tmp_path / "mods"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(NETS.format(name=registered))
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    yield_back = lambda: (models.registry.unregister(registered), sys.modules.pop(name, None))  # noqa: E731
    return folder, module, yield_back


def _cli(*commands: tuple[str, ...], extra_path: str | None = None) -> list[tuple[int, str]]:
    """``(exit status, stderr)`` of each cifarzoo command, run one after another in one new Python
    process (torch is imported once); ``extra_path`` on its PYTHONPATH after src."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, extra_path) if p)}
    code = textwrap.dedent("""
        import contextlib, io, json, sys
        from cifarzoo.cli import main
        out = []
        for argv in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(argv)
            out.append((rc, err.getvalue()))
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return [tuple(r) for r in json.loads(done.stdout.strip().splitlines()[-1])]


def test_a_factory_is_recorded_by_import_path_and_rebuilt_in_new_processes(fake_batches_dir, tmp_path, monkeypatch):
    folder, mods, cleanup = _module(tmp_path, monkeypatch, "ownnets_factory")
    try:
        out = tmp_path / "run"
        with pytest.raises(KeyboardInterrupt):
            cz.fit(mods.TinyNet, data=str(fake_batches_dir), epochs=2, out=out, **{**FAST, "progress":
                                                                                   StopAfterFirstEpoch()})
    finally:
        cleanup()
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["model"] == "ownnets_factory:TinyNet"
    png = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(png)

    # Importable (its folder on PYTHONPATH): resume, evaluate, predict and export, each a new process.
    commands = (("train", "--resume", str(out), "--quiet"), ("evaluate", str(out)),
                ("predict", str(out), str(png)), ("export", str(out), "--out", str(tmp_path / "m.onnx")))
    results = _cli(*commands, extra_path=str(folder))
    assert [rc for rc, _ in results] == [0] * 4, results
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"

    # Not importable: one line naming the module, exit 2.
    [(rc, err)] = _cli(("evaluate", str(out)))
    assert rc == 2 and err.count("\n") == 1
    assert "model 'ownnets_factory:TinyNet': cannot import module 'ownnets_factory'" in err


def test_register_model_names_a_model_and_records_where_it_lives(fake_cifar, tmp_path, monkeypatch):
    _, mods, cleanup = _module(tmp_path, monkeypatch, "ownnets_registered", registered="own_tiny")
    try:
        assert "own_tiny" in models.list_models()
        importlib.reload(mods)  # a notebook cell run again registers it again, without complaint
        data = (fake_cifar.train_images, fake_cifar.train_labels, fake_cifar.test_images, fake_cifar.test_labels)
        run = cz.fit("own_tiny", data=data, epochs=1, out=tmp_path / "run", **FAST)
        assert run.config.model == "ownnets_registered:own_tiny" and run.run_dir.name == "run"
        assert run.summary["status"] == "finished" and run.predict_proba(fake_cifar.test_images).shape == (20, 10)
        # A runs_root folder is named after the model, without its module.
        auto = cz.fit(mods.own_tiny, data=data, epochs=1, runs_root=tmp_path / "runs", **FAST)
        assert auto.config.model == "ownnets_registered:own_tiny" and auto.run_dir.name.startswith("own_tiny-")
        with pytest.raises(CifarzooError, match="model name 'resnet18' is registered twice"):
            models.register_model(paper="")(_named("resnet18"))
        with pytest.raises(CifarzooError, match="own_tiny' does not take width_mult"):
            cz.fit("own_tiny", data=data, epochs=1, out=tmp_path / "w", width_mult=0.5, **FAST)
    finally:
        cleanup()


def _named(name: str):
    def builder(num_classes: int = 10):
        return nn.Linear(3, num_classes)

    builder.__name__ = name
    return builder


def test_a_module_instance_serves_its_process_and_is_refused_in_a_new_one(fake_cifar, fake_batches_dir, tmp_path):
    data = (fake_cifar.train_images, fake_cifar.train_labels, fake_cifar.test_images, fake_cifar.test_labels)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        cz.fit(net, data=data, epochs=2, out=out, **{**FAST, "progress": StopAfterFirstEpoch()})
    run = cz.fit(resume=out, data=data, progress="none")  # the same process: resumes
    assert run.summary["status"] == "finished" and run.config.model.endswith(">:Sequential")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # it trained a copy
    assert run.evaluate(save=False).accuracy >= 0 and run.predict(fake_cifar.test_images, as_labels=True).shape == (20,)

    interrupted = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        cz.fit(net, data=data, epochs=2, out=interrupted, **{**FAST, "progress": StopAfterFirstEpoch()})
    for rc, err in _cli(("evaluate", str(out)), ("train", "--resume", str(interrupted), "--data",
                                                  str(fake_batches_dir))):
        assert rc == 2 and err.count("\n") == 1, err
        assert "was an nn.Module instance given to cifarzoo.fit() in another Python process" in err


@pytest.mark.parametrize("model, message", [
    (3, r"model: expected a model name .*, an nn.Module factory .* or an nn.Module; got int"),
    ("nosuchmodule_xyz:Net", r"cannot import module 'nosuchmodule_xyz'"),
    ("torch.nn:NoSuchLayer", r"module 'torch.nn' has no 'NoSuchLayer'"),
])
def test_a_model_that_cannot_be_built_is_one_line(fake_cifar, tmp_path, model, message):
    data = (fake_cifar.train_images, fake_cifar.train_labels, fake_cifar.test_images, fake_cifar.test_labels)
    with pytest.raises(CifarzooError, match=message):
        cz.fit(model, data=data, epochs=1, out=tmp_path / "r", **FAST)


def test_model_building_from_a_config_has_one_place():
    """Outside models/, a network is built from a run's settings by models.from_config only."""
    src = Path(SRC) / "cifarzoo"
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if "models" not in p.parts and "model_kwargs)" in p.read_text() and "create(" in p.read_text()]
    assert offenders == []


def test_the_trainer_calls_the_models_hooks(fake_cifar, tmp_path):
    """init_from_data gets normalized training images; split_outputs' auxiliary logits add to the loss."""
    seen = {}

    class WithAux(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.body, self.aux = nn.Linear(3 * 32 * 32, num_classes), nn.Linear(3 * 32 * 32, num_classes)

        def forward(self, x):
            x = x.flatten(1)
            return (self.body(x), self.aux(x)) if self.training else self.body(x)

    def init(model, images):
        seen["images"] = None if images is None else tuple(images.shape)

    def split(out):
        seen["split"] = True
        return (out[0], (out[1],)) if isinstance(out, tuple) else (out, ())

    def own_hooked(num_classes: int = 10):
        return WithAux(num_classes)

    own_hooked.__module__ = "tests_own_hooked"
    models.register_model(init_from_data=init, split_outputs=split)(own_hooked)
    try:
        data = (fake_cifar.train_images, fake_cifar.train_labels, fake_cifar.test_images, fake_cifar.test_labels)
        run = cz.fit("own_hooked", data=data, epochs=1, out=tmp_path / "r", whiten_init=True, **FAST)
    finally:
        models.registry.unregister("own_hooked")
    assert run.summary["status"] == "finished"
    assert seen == {"images": (60, 3, 32, 32), "split": True}
