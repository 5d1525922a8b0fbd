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


def test_throughput_records_one_models_failure_and_reuses_an_earlier_baseline(throughput, tmp_path, one_thread,
                                                                              monkeypatch):
    args = ["--device", "cpu", "--width-mult", "0.0625", "--batch-size", "4", "--inference-batch-size", "4",
            "--steps", "1", "--warmup", "1", "--repeats", "1", "--no-inference"]
    first = tmp_path / "eager.json"
    assert throughput.main([*args, "--models", "fastnet", "--variants", "fp32", "--json", str(first)]) == 0
    real_init = throughput.Bench.__init__

    def init(self, config, *a, **k):  # what a CUDA out-of-memory or compiler failure looks like to the loop
        if config.model == "resnet18":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        real_init(self, config, *a, **k)

    monkeypatch.setattr(throughput.Bench, "__init__", init)
    out = tmp_path / "t.json"
    rc = throughput.main([*args, "--models", "resnet18,fastnet", "--variants", "fp32,bf16", "--json", str(out),
                          "--markdown", str(tmp_path / "t.md"), "--baseline-from", str(first)])
    assert rc == 1  # a failed model is a failed run, after the others were measured
    bad, good = json.loads(out.read_text())["models"]
    assert bad == {"model": "resnet18", "status": "failed",
                   "reason": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert good["status"] == "finished" and set(good["variants"]) == {"fp32", "bf16"}
    assert good["variants"]["fp32"]["reused_from"] == str(first)  # not measured again
    assert good["variants"]["fp32"]["train_rounds"] == json.loads(first.read_text())["models"][0]["variants"][
        "fp32"]["train_rounds"]
    assert good["variants"]["bf16"]["train_ratio"] > 0
    table = (tmp_path / "t.md").read_text()
    assert "| resnet18 | | | failed: RuntimeError: CUDA out of memory" in table and "fp32 (earlier run)" in table


def test_time_to_accuracy_goes_on_after_a_runs_runtime_error(tta, tmp_path, one_thread, monkeypatch):
    real = tta.train_one

    def train_one(config, *a, **k):
        if config.seed == 0:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(config, *a, **k)

    monkeypatch.setattr(tta, "train_one", train_one)
    out = tmp_path / "tta.json"
    rc = tta.main(["--models", "fastnet", "--preset", "quick", "--seeds", "2", "--epochs", "1", "--subset", "100",
                   "--width-mult", "0.0625", "--batch-size", "50", "--device", "cpu", "--out", str(tmp_path / "r"),
                   "--json", str(out), "--markdown", str(tmp_path / "tta.md")])
    assert rc == 1
    failed, finished = json.loads(out.read_text())["runs"]
    assert (failed["status"], failed["reason"]) == (
        "failed", "RuntimeError: CUDA error: an illegal memory access was encountered")
    assert finished["status"] == "finished" and finished["seed"] == 1
    assert "failed: RuntimeError: CUDA error" in (tmp_path / "tta.md").read_text()


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
    assert [(r["model"], r["seed"], r["status"]) for r in runs] == [("fastnet", 0, "finished"),
                                                                     ("fastnet", 1, "finished")]
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


DEFAULT_STAGES = ["fastnet_airbench", "fastnet", "epochs2", "throughput_eager", "throughput"]
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and timeout")


def _script(args, tmp, **env):
    env = {**os.environ, "OUT": str(tmp / "out"), "BENCH_WORK": str(tmp / "work"), "PYTHON": sys.executable,
           "BENCH_COMMIT": "test", "OMP_NUM_THREADS": "1", **env}
    env.pop("CIFAR10_DATA", None)
    return subprocess.run(["bash", str(BENCH / "gpu_benchmark.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=900)


def _planned(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("stage ")]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One BENCH_DEVICE=cpu run of the GPU script: its own stage commands at tiny sizes, from a JPEG
    archive through the data stage, with compile turned off (the fallback), then study part 1."""
    import tarfile

    from conftest import make_fake_cifar, write_image_folder

    tmp = tmp_path_factory.mktemp("gpu_script")
    root = write_image_folder(tmp / "jpeg" / "cifar10", make_fake_cifar(train_per_class=26, test_per_class=5),
                              ext=".jpg")
    archive = tmp / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar10")
    proc = _script([str(archive)], tmp, BENCH_DEVICE="cpu", BENCH_COMPILE="off",
                   BENCH_STAGES=",".join(DEFAULT_STAGES + ["study"]))
    log = (tmp / "out" / "benchmark.log").read_text() if (tmp / "out" / "benchmark.log").exists() else ""
    return proc, log, tmp


@pytest.mark.slow
@needs_bash
def test_gpu_script_cpu_mode_runs_every_stage_command(cpu_run):
    proc, log, tmp = cpu_run
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert "stage data: rc=0" in log and "260 train / 50 test images" in log
    for stage in ("fastnet_airbench", "fastnet", "epochs2", "throughput_eager", "study_part1"):
        assert f"stage {stage}: rc=0" in log, log
    # BENCH_COMPILE=off: said once, the fit stages told --compile off, the compiled stage skipped.
    assert "every later stage runs eager" in log and "stage throughput: skipped" in log
    assert "--compile off" in log.split("stage fastnet_airbench: start")[1].splitlines()[0]
    out = tmp / "out"
    files = {p.name for p in out.iterdir()}
    assert files == {"benchmark.log", "tables.md", "fastnet_airbench.json", "fastnet.json", "epochs2.json",
                     "throughput_eager.json", "study_results.json", "results.tar.gz"}
    for stage in ("fastnet_airbench", "fastnet", "epochs2"):
        runs = json.loads((out / f"{stage}.json").read_text())["runs"]
        assert runs and all(r["status"] == "finished" for r in runs), runs
    # Each stage wrote its JSON straight into OUT (rewritten after every model), not at the end.
    assert f"--json {out}/epochs2.json" in log
    assert "Throughput on cpu" in (out / "tables.md").read_text()


@pytest.mark.slow
@needs_bash
def test_gpu_script_cpu_mode_runs_what_a_gpu_gets(cpu_run):
    proc, log, tmp = cpu_run
    out = tmp / "out"
    air = json.loads((out / "fastnet_airbench.json").read_text())
    assert air["preset"] == "airbench" and air["runs"][0]["config"]["optimizer"] == "muon"
    two = json.loads((out / "epochs2.json").read_text())
    # Cheapest first; warm-up scaled with the epochs (1 of vgg16's 60: 12 -> 0.2), labelled truncated.
    assert [r["model"] for r in two["runs"]] == ["vgg16", "vgg19", "resnet18", "resnet50", "xception", "inception"]
    assert two["schedule"] == "truncated" and two["runs"][0]["config"]["warmup_epochs"] == pytest.approx(0.2)
    eager = json.loads((out / "throughput_eager.json").read_text())
    assert [m["model"] for m in eager["models"]][:2] == ["fastnet", "vgg16"]
    assert all(m["status"] == "finished" and m["variants"]["bf16+cl"]["infer_images_per_second"] is None
               for m in eager["models"])  # --no-inference
    study = json.loads((out / "study_results.json").read_text())
    assert {m["model"] for m in study["models"] if m["status"] == "finished"} == {"vgg16", "vgg19", "resnet50"}
    # The next --study call continues with part 2, into the same study folder.
    plan = _script(["--study", "--plan"], tmp, BENCH_DEVICE="cpu")
    assert "study part 2 of 2: inception,xception" in plan.stdout and "<- this call" in plan.stdout.split("part 2")[1]
    assert "--models inception,xception" in plan.stdout and f"--out {tmp / 'work' / 'study'}" in plan.stdout


@needs_bash
def test_gpu_script_plan_puts_fit_stages_first_and_cheapest_compiles_first(tmp_path):
    proc = _script(["--plan", str(tmp_path / "cifar10.tar.gz")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _planned(proc.stdout) == ["data", "fastnet_airbench", "fastnet", "epochs2", "throughput_eager",
                                     "compile_check", "throughput"]
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("stage ")}
    assert "--models resnet18,vgg16,vgg19,resnet50,xception,inception" in lines["throughput"]
    assert f"--baseline-from {tmp_path / 'out'}/throughput_eager.json" in lines["throughput"]
    assert "--no-inference" in lines["throughput_eager"] and "--device cuda" in lines["throughput_eager"]
    assert "--truncate-schedule" in lines["epochs2"]
    assert not (tmp_path / "out").exists()  # a plan runs and writes nothing
    # Told to run eager: said first, and the compiled stage is left out.
    off = _script(["--plan", str(tmp_path / "cifar10.tar.gz")], tmp_path, BENCH_COMPILE="off")
    assert "every later stage runs eager" in off.stdout and "compile_check" not in _planned(off.stdout)
    assert "stage throughput: skipped" in off.stdout


@needs_bash
def test_gpu_script_study_call_runs_the_next_unfinished_part(tmp_path):
    study = tmp_path / "work" / "study"
    plan = _script(["--study", "--plan", "x.tar.gz"], tmp_path)
    assert "study part 1 of 2: vgg16,vgg19,resnet50, expected ~340s on an H100 <- this call" in plan.stdout
    assert "study part 2 of 2: inception,xception, expected ~410s on an H100\n" in plan.stdout
    assert "study_part1" in _planned(plan.stdout)
    study.mkdir(parents=True)
    (study / ".part1-done").touch()
    assert "study_part2" in _planned(_script(["--study", "--plan", "x.tar.gz"], tmp_path).stdout)
    (study / ".part2-done").touch()  # all done: the next call starts the study again
    again = _script(["--study", "--plan", "x.tar.gz"], tmp_path).stdout
    assert "starting the study again" in again and "study_part1" in _planned(again)


def test_compile_check_reports_why_compile_fails(monkeypatch):
    common = _load("_common")
    assert common.compile_problem.__doc__

    def broken(*a, **k):
        raise RuntimeError("Cannot find a working triton installation.\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    assert common.compile_problem("cpu") == "RuntimeError: Cannot find a working triton installation."


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


def test_prepare_data_decodes_an_image_archive_from_its_tar_stream(tmp_path, fake_archive):
    import tarfile

    import numpy as np
    from PIL import Image

    from cifarzoo.data import load

    rng = np.random.default_rng(0)
    images = {}
    members = []
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("dog", "cat"):
            folder = tmp_path / "jpeg" / "cifar10" / split / cls
            folder.mkdir(parents=True)
            for i in reversed(range(n)):  # stored out of order: the result is sorted as a folder is read
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i:04d}.png")  # lossless, so pixels can be compared
                images[split, cls, i] = arr
                members.append(folder / f"{i:04d}.png")
    (tmp_path / "jpeg" / "cifar10" / "train" / "cat" / "notes.txt").write_text("not an image")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for m in [*members, tmp_path / "jpeg" / "cifar10" / "train" / "cat" / "notes.txt"]:
            tar.add(m, arcname=str(m.relative_to(tmp_path / "jpeg")))
    prepare = _load("prepare_data")
    assert prepare.main([str(archive), str(tmp_path / "batches"), "--workers", "2"]) == 0  # a process pool
    ds = load(str(tmp_path / "batches"))
    assert ds.classes == ("cat", "dog") and len(ds.train_labels) == 6 and len(ds.test_labels) == 4
    assert np.array_equal(ds.train_images[0], images["train", "cat", 0])
    assert np.array_equal(ds.train_images[2], images["train", "cat", 2]) and ds.train_labels[3] == 1
    assert np.array_equal(ds.test_images[-1], images["test", "dog", 1]) and ds.test_labels[-1] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batches", "cifar-10-python.tar.gz", "images.tar.gz",
                                                          "jpeg"]  # nothing unpacked beside them
    # The official archive is a tar too: recognised from its first member and read as --data reads it.
    assert prepare.main([str(fake_archive), str(tmp_path / "official")]) == 0
    assert len(load(str(tmp_path / "official")).train_labels) == 60
    assert prepare.main([str(tmp_path / "missing.tar.gz"), str(tmp_path / "x")]) == 2


def test_profile_cpu_shares_the_step_out_by_operator_family(tmp_path, one_thread, capsys):
    prof = _load("profile_cpu")
    assert prof.family("aten::convolution_backward") == "convolution backward"
    assert prof.family("aten::mkldnn_convolution") == "convolution forward"
    assert prof.family("aten::native_batch_norm_backward") == "batch norm"
    assert prof.family("aten::max_pool2d_with_indices") == "pooling"
    assert prof.family("aten::cat") == "copies, casts, concatenation"
    assert prof.main(["--models", "resnet18", "--preset", "quick", "--width-mult", "0.125", "--batch-size", "8",
                      "--steps", "1", "--warmup", "1", "--top", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "## resnet18, width 0.125, batch 8" in out and "| convolution backward |" in out
    operators = out.split("| operator | calls per step | self CPU ms per step | share |\n|---|---|---|---|\n")[1]
    assert len([ln for ln in operators.splitlines() if ln.startswith("| ")]) == 3  # --top 3


def test_ablation_seed_study_trains_the_chosen_variants_and_writes_its_table(tmp_path, one_thread):
    ablation = _load("ablation_seed_study")
    out = tmp_path / "ablation.json"
    assert ablation.main(["--models", "resnet", "--seeds", "1", "--epochs", "1", "--subset", "320",
                          "--variants", "0,4", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]["resnet"]["rows"]
    assert [r["variant"] for r in rows] == ["as written", "shortcut added"]
    assert all(0 <= r["test_acc_mean"] <= 1 and len(r["runs"]) == 1 for r in rows)
