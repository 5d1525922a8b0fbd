"""benchmarks/: the scripts run on CPU at tiny size and write the JSON and markdown they promise.

Smoke tests of shape, not of speed: no timing is asserted (the machine is shared).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return _load("throughput")


@pytest.fixture(scope="module")
def tta():
    return _load("time_to_accuracy")


@pytest.fixture
def one_thread():
    # Tiny models: one thread is faster, and two spin against each other on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_variant_names_parse(throughput):
    project = throughput.Variant("project", "bf16", True, False, False)
    assert throughput.parse_variant("project", project) is project
    v = throughput.parse_variant("bf16+cl+compile", project)
    assert (v.precision, v.channels_last, v.compile, v.compile_inference) == ("bf16", True, True, True)
    base = throughput.parse_variant("fp32", project)
    assert (base.precision, base.channels_last, base.compile) == ("fp32", False, False)
    with pytest.raises(SystemExit, match="unknown variant part"):
        throughput.parse_variant("bf16+turbo", project)


def test_project_variant_is_what_fit_resolves(throughput):
    from cifarzoo.train import make_config
    from cifarzoo.device import resolve_compile, resolve_precision

    cpu = torch.device("cpu")
    c = make_config("resnet18", preset="quick", device="cpu")
    v = throughput.project_variant(c, cpu)
    assert v.precision == resolve_precision(c.precision, cpu)
    assert v.channels_last == c.channels_last
    assert v.compile is resolve_compile(c.compile, cpu, 10_000) is False  # no compile on CPU unless asked
    # On a GPU the standard preset compiles long runs (40 epochs of 97 steps) but not fastnet's 480 steps.
    gpu = torch.device("cuda")
    assert resolve_compile("auto", gpu, 3880) and not resolve_compile("auto", gpu, 480)


def test_throughput_writes_json_and_markdown(throughput, tmp_path, one_thread, capsys):
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    rc = throughput.main(["--device", "cpu", "--models", "fastnet,resnet18", "--width-mult", "0.125",
                          "--batch-size", "4", "--inference-batch-size", "4", "--steps", "1", "--warmup", "1",
                          "--repeats", "2", "--variants", "fp32,project,cl", "--json", str(out),
                          "--markdown", str(md)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "throughput" and result["commit"] and result["machine"]["device"] == "cpu"
    assert [m["model"] for m in result["models"]] == ["fastnet", "resnet18"]
    for m in result["models"]:
        assert set(m["variants"]) == {"fp32", "project", "cl"}
        assert m["variants"]["fp32"]["train_ratio"] == pytest.approx(1.0)
        for r in m["variants"].values():
            assert len(r["train_rounds"]) == 2 and r["train_images_per_second"] > 0
            assert r["infer_images_per_second"] > 0 and r["train_ratio"] > 0
            assert r["train_images_per_cpu_second"] > 0  # the CPU-time figure, for a shared machine
    table = md.read_text()
    assert table.startswith("Throughput on cpu") and "| fastnet | 0.125 | 4 | project |" in table
    assert table in capsys.readouterr().out


def test_time_to_threshold_reads_epoch_ends(tta):
    metrics = [{"epoch": 1, "eval_acc": 0.42, "elapsed_seconds": 1.5},
               {"epoch": 2, "eval_acc": 0.81, "elapsed_seconds": 3.0},
               {"epoch": 3, "eval_acc": 0.79, "elapsed_seconds": 4.5}]
    assert tta.time_to(metrics, 0.4) == {"epoch": 1, "seconds": 1.5}
    assert tta.time_to(metrics, 0.8) == {"epoch": 2, "seconds": 3.0}
    assert tta.time_to(metrics, 0.9) is None


def test_time_to_accuracy_trains_and_reports(tta, tmp_path, one_thread):
    out = tmp_path / "tta.json"
    rc = tta.main(["--models", "fastnet", "--preset", "quick", "--seeds", "2", "--epochs", "2", "--subset", "200",
                   "--width-mult", "0.125", "--batch-size", "50", "--device", "cpu", "--thresholds", "0.1,0.99",
                   "--out", str(tmp_path / "runs"), "--json", str(out), "--markdown", str(tmp_path / "tta.md")])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["data_source"].startswith("sample") and result["thresholds"] == [0.1, 0.99]
    runs = result["runs"]
    assert [(r["model"], r["seed"], r["status"]) for r in runs] == [("fastnet", 0, "finished"), ("fastnet", 1, "finished")]
    for r in runs:
        assert Path(r["run_dir"], "metrics.csv").is_file()
        assert len(r["curve"]) == 2 and r["curve"][-1]["elapsed_seconds"] == pytest.approx(
            r["train_seconds"], rel=1e-5)  # metrics.csv keeps 6 significant digits
        assert r["time_to"]["0.99"] is None  # 2 tiny epochs never reach 99%
        assert 0 <= r["test_acc"] <= 1 and 0 <= r["test_acc_tta"] <= 1
    s = result["summary"][0]
    assert s["model"] == "fastnet" and s["runs"] == 2 and s["test_acc_std"] is not None
    table = (tmp_path / "tta.md").read_text()
    assert "s to 10%" in table and "not reached" in table and "| fastnet | 2 |" in table


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_benchmark_script_runs_end_to_end_in_tiny_mode(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "BENCH_WORK": str(tmp_path / "work"), "PYTHON": sys.executable,
           "BENCH_COMMIT": "test", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(BENCH / "gpu_benchmark.sh"), "--tiny"], env=env, capture_output=True,
                          text=True, timeout=900)
    log = (out / "benchmark.log").read_text() if (out / "benchmark.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    for stage in ("throughput", "fastnet", "epochs2", "study"):
        assert f"stage {stage}: rc=0" in log, log
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8  # what the script promises to leave, whatever ran
    assert {"benchmark.log", "tables.md", "throughput.json", "fastnet.json", "epochs2.json", "study_results.json",
            "results.tar.gz"} == set(files)
    assert json.loads((out / "throughput.json").read_text())["commit"] == "test"
    fast = json.loads((out / "fastnet.json").read_text())
    assert len(fast["runs"]) == 2 and all(r["status"] == "finished" for r in fast["runs"])
    two = json.loads((out / "epochs2.json").read_text())
    assert [len(r["curve"]) for r in two["runs"]] == [2]  # per-epoch times and accuracies to extrapolate from
    tables = (out / "tables.md").read_text()
    assert "Throughput on cpu" in tables and "Time to accuracy" in tables


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_benchmark_script_says_what_data_it_needs(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "BENCH_WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable}
    env.pop("CIFAR10_DATA", None)
    proc = subprocess.run(["bash", str(BENCH / "gpu_benchmark.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "no CIFAR-10 data given" in proc.stderr
    assert "bash benchmarks/gpu_benchmark.sh PATH" in proc.stderr
    proc = subprocess.run(["bash", str(BENCH / "gpu_benchmark.sh"), str(tmp_path / "nope.tar.gz")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{tmp_path / 'nope.tar.gz'} does not exist" in proc.stderr


def test_prepare_data_turns_an_image_folder_archive_into_the_official_layout(tmp_path):
    import tarfile

    import numpy as np
    from PIL import Image

    from cifarzoo.data import load

    rng = np.random.default_rng(0)
    images = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "jpeg" / "cifar10" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i:04d}.png")  # lossless, so pixels can be compared
                images[split, cls, i] = arr
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "jpeg" / "cifar10", arcname="cifar10")
    prepare = _load("prepare_data")
    assert prepare.main([str(archive), str(tmp_path / "batches")]) == 0
    ds = load(str(tmp_path / "batches"))
    assert ds.classes == ("cat", "dog") and len(ds.train_labels) == 6 and len(ds.test_labels) == 4
    assert np.array_equal(ds.train_images[0], images["train", "cat", 0])
    assert np.array_equal(ds.test_images[-1], images["test", "dog", 1]) and ds.test_labels[-1] == 1
    assert prepare.main([str(tmp_path / "missing.tar.gz"), str(tmp_path / "x")]) == 2


def test_ablation_seed_study_trains_the_chosen_variants_and_writes_its_table(tmp_path, one_thread):
    ablation = _load("ablation_seed_study")
    out = tmp_path / "ablation.json"
    assert ablation.main(["--models", "resnet", "--seeds", "1", "--epochs", "1", "--subset", "320",
                          "--variants", "0,4", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]["resnet"]["rows"]
    assert [r["variant"] for r in rows] == ["as written", "shortcut added"]
    assert all(0 <= r["test_acc_mean"] <= 1 and len(r["runs"]) == 1 for r in rows)
