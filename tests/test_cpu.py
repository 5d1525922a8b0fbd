"""CPU settings: what ``--precision auto`` picks on CPUs with and without native bf16, and torch's threads."""
from __future__ import annotations

import json

import pytest
import torch

from cifarzoo import device as dev
from cifarzoo.errors import CifarzooError
from cifarzoo.train import TrainConfig, fit, make_config

CPU = torch.device("cpu")


def fake_cpu(monkeypatch, flags: set[str], mkldnn_bf16: bool = True) -> None:
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(dev, "_mkldnn_bf16", lambda: mkldnn_bf16)


@pytest.mark.parametrize("flags, mkldnn, expected", [
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, True, "AMX-BF16"),
    ({"avx2", "avx512f", "avx512_bf16"}, True, "AVX512-BF16"),
    ({"avx2", "avx512f"}, True, None),
    ({"avx512_bf16", "amx_bf16"}, False, None),  # torch's oneDNN cannot use it
])
def test_native_bf16_is_detected_from_torch_and_the_cpu_flags(monkeypatch, flags, mkldnn, expected):
    fake_cpu(monkeypatch, flags, mkldnn)
    assert dev.cpu_bf16() == expected


@pytest.mark.parametrize("flags, expected, why", [
    ({"avx512_bf16", "amx_bf16"}, "bf16", "auto: bf16, the CPU has AMX-BF16"),
    ({"avx512_bf16"}, "bf16", "auto: bf16, the CPU has AVX512-BF16"),  # AMD Zen 4
    ({"avx2", "fma"}, "fp32", "auto: fp32, the CPU has no native bf16"),  # emulated: slower
])
def test_auto_precision_on_cpu(monkeypatch, flags, expected, why):
    fake_cpu(monkeypatch, flags)
    precision, reason = dev.choose_precision("auto", CPU)
    assert precision == expected and reason.startswith(why)
    assert dev.resolve_precision("auto", CPU) == expected
    # An explicit choice is never second-guessed.
    assert dev.choose_precision("fp32", CPU) == ("fp32", "asked for")
    assert dev.choose_precision("bf16", CPU) == ("bf16", "asked for")


def test_fp16_on_cpu_is_an_error():
    with pytest.raises(CifarzooError, match="fp16 needs a CUDA device"):
        dev.choose_precision("fp16", CPU)


def test_physical_cores_count_hyperthread_siblings_once(tmp_path):
    # cpu0/cpu1 are two threads of core 0, cpu2 is core 1, cpu3 sits on another package's core 0.
    for cpu, (package, core) in enumerate([(0, 0), (0, 0), (0, 1), (1, 0)]):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert dev.physical_cores([0, 1, 2, 3], str(tmp_path)) == 3
    assert dev.physical_cores([0, 1], str(tmp_path)) == 1
    assert dev.physical_cores([0, 1, 7], str(tmp_path)) == 2  # no topology for cpu7: counted as itself


def test_threads_default_to_omp_num_threads_else_the_physical_cores(monkeypatch):
    monkeypatch.setattr(dev, "physical_cores", lambda: 6)
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 8)  # the CPUs present bound --threads and the variable
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert dev.resolve_threads(None) == (6, "the 6 physical cores")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert dev.resolve_threads(None) == (3, "OMP_NUM_THREADS")
    assert dev.resolve_threads(2) == (2, "asked for")
    with pytest.raises(CifarzooError, match="--threads"):
        TrainConfig(threads=0)


def test_fit_uses_the_threads_asked_for_and_says_why_it_chose_its_precision(tmp_path, monkeypatch):
    fake_cpu(monkeypatch, {"avx512_bf16"})  # without AMX: bf16 too
    before = torch.get_num_threads()
    try:
        config = make_config("resnet18", width_mult=0.125, epochs=1, batch_size=50, subset=100, device="cpu",
                             data="sample", threads=1, precision="auto", allow_stall=True, tta_level=2)
        run = fit(config, out_dir=tmp_path / "run").run_dir
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    info = json.loads((run / "config.json").read_text())
    assert (info["threads"], info["threads_reason"]) == (1, "1: asked for")
    assert info["precision"] == "bf16" and "AVX512-BF16" in info["precision_reason"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision_reason"] == info["precision_reason"] and summary["threads"] == 1
    # tta_level 2 adds airbench's 6-view TTA beside the flip TTA every run reports.
    assert summary["tta_level"] == 2
    assert 0 <= summary["test_acc_tta_level"] <= 1 and 0 <= summary["test_acc_tta"] <= 1


def test_cpu_preset_is_full_cifar10_with_fastnet_on_airbench_muon():
    f = make_config("fastnet", preset="cpu")
    assert f.data is None and f.width_mult == 1.0 and f.precision == "auto" and f.compile == "off"
    assert (f.optimizer, f.crop_pad, f.tta_level, f.augment) == ("muon", 2, 2, "crop,altflip")
    for model in ("vgg16", "vgg19", "resnet50", "inception", "xception"):
        c = make_config(model, preset="cpu")
        assert c.data is None and c.width_mult < 1 and c.precision == "auto"
        assert 0 < c.warmup_epochs < c.epochs / 2, model  # one-cycle's peak early, whatever the epochs


def test_cpu_preset_gives_every_study_model_the_same_core_minutes(tmp_path):
    """Equal budget: each study model's epochs are the whole epochs of the full training set that
    CPU_CORE_MINUTES of one reference core fill at its measured training throughput, and the
    study's report says so in one sentence."""
    from cifarzoo.study import plan_study
    from cifarzoo.recipe_kit import CPU_CORE_MINUTES, CPU_TRAIN_IMAGES, budget_epochs
    from cifarzoo.train.config import equal_budgets

    CPU_BUDGET = {m: (b.width, b.batch, b.lr, b.img_s) for m, b in equal_budgets("cpu").items()}

    assert set(CPU_BUDGET) == {"vgg16", "vgg19", "resnet50", "inception", "xception"}
    for model, (width, batch, lr, img_s) in CPU_BUDGET.items():
        c = make_config(model, preset="cpu")
        assert (c.width_mult, c.batch_size, c.lr) == (width, batch, lr)
        seconds = CPU_CORE_MINUTES * 60
        assert c.epochs * CPU_TRAIN_IMAGES / img_s <= seconds < (c.epochs + 1) * CPU_TRAIN_IMAGES / img_s, model
        assert c.eval_every == -(-c.epochs // 4) and c.checkpoint_every == 1  # ~4 evaluations per run
    assert budget_epochs(100.0, minutes=10, images=1000) == 60 and budget_epochs(1.0, minutes=1) == 1

    # the study prices its runs (start order, time left) at those measured seconds: all alike
    from cifarzoo.study.runner import _costs

    plan = plan_study(None, preset="cpu", out_dir=tmp_path)
    costs = _costs(plan.runs, 10)
    for run in plan.runs:  # the budget less under one epoch (whole epochs)
        img_s = CPU_BUDGET[run.model][3]
        assert seconds - CPU_TRAIN_IMAGES / img_s < costs[run.name] <= seconds, run.name
    rule = plan.rule
    assert rule.startswith(f"each network trained for {CPU_CORE_MINUTES} core-minutes of one core of ")
    c = make_config("inception", preset="cpu")
    assert f"inception w0.125 {c.epochs} epochs" in rule and "no test-set selection" in rule
    # changed settings or a model outside the budget: the rule says what was run instead
    assert "core-minutes" not in plan_study(None, preset="cpu", out_dir=tmp_path, epochs=1).rule
    assert "core-minutes" not in plan_study(["vgg16", "fastnet"], preset="cpu", out_dir=tmp_path).rule


def test_threads_option_reaches_every_run_of_a_study(tmp_path):
    import argparse

    from cifarzoo.cli.benchmark import register
    from cifarzoo.study import plan_study

    parser = argparse.ArgumentParser()
    args = register(parser.add_subparsers()).parse_args(["--preset", "cpu", "--threads", "3"])
    assert (args.preset, args.threads) == ("cpu", 3)
    plan = plan_study(["vgg16", "fastnet"], preset="cpu", out_dir=tmp_path, threads=args.threads)
    assert [r.config.threads for r in plan.runs] == [3, 3]
    assert plan.runs[1].config.optimizer == "muon"


def test_console_line_says_the_precision_and_threads_and_why():
    import io

    from cifarzoo.progress import ConsoleReporter

    info = {"config": {"model": "fastnet", "width_mult": 1.0, "epochs": 8}, "parameters": 10, "run_dir": "r",
            "data": {"source": "s", "train_images": 1, "eval_images": 1, "eval_split": "test"},
            "device": "cpu", "device_name": "cpu (Some CPU, 2 threads)", "compiled": False,
            "precision": "bf16", "precision_reason": "auto: bf16, the CPU has AMX-BF16",
            "threads": 2, "threads_reason": "2: the 2 physical cores"}
    out = io.StringIO()
    ConsoleReporter(stream=out).on_start(info)
    assert "bf16 (auto: bf16, the CPU has AMX-BF16), 2 CPU threads (the 2 physical cores)" in out.getvalue()
    out = io.StringIO()
    ConsoleReporter(stream=out).on_start({**info, "precision": "fp32", "precision_reason": "asked for",
                                          "threads": 1, "threads_reason": "1: asked for"})
    assert "fp32, 1 CPU thread (asked for);" in out.getvalue()
