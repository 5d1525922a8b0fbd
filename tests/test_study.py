"""The study runner and the benchmark command: resume, force, failures, progress, CLI.

Tiny real training (width 0.125, 1-2 epochs, 60 fake images), so the whole file runs
in well under a minute on two CPU cores. One study is trained once per module and
copied by the tests that change it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import cifarzoo.train
from cifarzoo.cli import main
from cifarzoo.errors import CifarzooError, TrainingError
from cifarzoo.study import StudyReporter, estimate_seconds_left, plan_study, run_study
from cifarzoo.study.plan import EVAL_FILE
from cifarzoo.study.runner import remove_run_dir
from cifarzoo.study.training import top_losses
from cifarzoo.train.rundir import run_state

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TINY = dict(width_mult=0.125, epochs=1, batch_size=20, device="cpu", precision="fp32", compile="off",
            channels_last=False)
MODELS = ["vgg16", "resnet18", "xception"]  # xception is made to fail in the shared study
REAL_FIT = cifarzoo.train.fit


def tiny_dataset(train_per_class: int = 6, test_per_class: int = 3):
    """Class-coloured noisy images: learnable, made in memory in a few ms."""
    from cifarzoo.data import build_dataset

    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, size=(10, 3))

    def split(n):
        y = np.repeat(np.arange(10), n)
        x = np.clip(colours[y][:, None, None, :] + rng.integers(-30, 31, size=(len(y), 32, 32, 3)), 0, 255)
        order = rng.permutation(len(y))
        return x[order].astype(np.uint8), y[order].astype(np.int64)

    return build_dataset(*split(train_per_class), *split(test_per_class), CLASSES, "fake (test_study.py)")


def failing_fit(fail_model: str, calls: list | None = None):
    """A fit that raises a stall for ``fail_model`` and trains the others for real."""

    def fit(config=None, **kw):
        model = config.model if config is not None else None
        if calls is not None:
            calls.append(model or Path(kw["resume"]).name)
        if model == fail_model:
            raise TrainingError("not learning after 3 steps: training loss 2.3026", kind="stall",
                                diagnosis="DIAGNOSIS: the loss stays at ln(10)")
        return REAL_FIT(config, **kw)

    return fit


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine an
    OpenMP team spinning for a busy core makes each step many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def in_this_process():
    """These tests drive the study in the test process (a patched ``fit`` that fails, reporters
    that raise), so its runs train one after the other here, whatever the machine's cores;
    tests/test_local_jobs.py covers runs trained side by side in worker processes."""
    import cifarzoo.study.runner

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifarzoo.study.runner, "default_jobs", lambda plan: 1)
        yield


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture(scope="module")
def study(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("study") / "s"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifarzoo.train, "fit", failing_fit("xception"))
        result = run_study(MODELS, preset="quick", seeds=2, out_dir=out, dataset=dataset, **TINY)
    return result


def copy_study(study, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(study.plan.out_dir, dst)
    return dst


# --------------------------------------------------------------------------- the shared study
def test_every_run_is_a_run_folder_and_failures_are_recorded(study):
    out = study.plan.out_dir
    statuses = {o.spec.name: o.status for o in study.outcomes}
    assert statuses == {"vgg16-s0": "finished", "vgg16-s1": "finished", "resnet18-s0": "finished",
                        "resnet18-s1": "finished", "xception-s0": "failed", "xception-s1": "failed"}
    for name in ("vgg16-s0", "resnet18-s1"):
        d = out / "runs" / name
        for f in ("config.json", "metrics.csv", "checkpoint.pt", "summary.json", EVAL_FILE, "confusion.json"):
            assert (d / f).exists(), f
        ev = json.loads((d / EVAL_FILE).read_text())
        assert len(ev["per_class_accuracy"]) == 10 and np.asarray(ev["confusion"]).shape == (10, 10)
        assert len(ev["top_losses"]) <= 8
    failed = json.loads((out / "runs" / "xception-s0" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["kind"] == "stall"
    assert failed["reason"].startswith("not learning")
    assert "DIAGNOSIS" in failed["diagnosis"]
    assert [o.spec.name for o in study.failed] == ["xception-s0", "xception-s1"]
    html = (out / "report.html").read_text()
    assert "Failed runs" in html and "DIAGNOSIS: the loss stays at ln(10)" in html
    md = (out / "report.md").read_text()
    assert "xception-s0: stall" in md


def test_seeds_differ_and_runs_share_one_rule(study):
    runs = {o.spec.name: o for o in study.outcomes}
    c0, c1 = runs["vgg16-s0"].spec.config, runs["vgg16-s1"].spec.config
    assert (c0.seed, c1.seed) == (0, 1)
    assert c0.replace(seed=1) == c1
    assert "1 epoch for every model" in study.plan.rule and "no test-set selection" in study.plan.rule
    saved = json.loads((study.plan.out_dir / "study.json").read_text())
    assert saved["models"] == MODELS and saved["seeds"] == [0, 1] and saved["preset"] == "quick"


# --------------------------------------------------------------------------- resume and force
def test_second_invocation_skips_finished_and_failed_runs(study, dataset, tmp_path, monkeypatch):
    out = copy_study(study, tmp_path)
    mtime = (out / "runs" / "vgg16-s0" / "summary.json").stat().st_mtime_ns
    calls: list = []
    monkeypatch.setattr(cifarzoo.train, "fit", failing_fit("xception", calls))
    result = run_study(MODELS, preset="quick", seeds=2, out_dir=out, dataset=dataset, **TINY)
    assert calls == []
    assert {o.action for o in result.outcomes} == {"skipped"}
    assert [o.status for o in result.outcomes].count("failed") == 2
    assert (out / "runs" / "vgg16-s0" / "summary.json").stat().st_mtime_ns == mtime


def test_force_trains_again(study, dataset, tmp_path, monkeypatch):
    out = copy_study(study, tmp_path)
    old = json.loads((out / "runs" / "vgg16-s0" / "summary.json").read_text())["finished"]
    (out / "runs" / "vgg16-s0" / "stale.txt").write_text("left from before")
    calls: list = []
    monkeypatch.setattr(cifarzoo.train, "fit", failing_fit("none", calls))
    result = run_study(["vgg16"], preset="quick", seeds=1, out_dir=out, dataset=dataset, force=True, **TINY)
    assert calls == ["vgg16"]
    assert [(o.spec.name, o.action, o.status) for o in result.outcomes] == [("vgg16-s0", "trained", "finished")]
    assert not (out / "runs" / "vgg16-s0" / "stale.txt").exists()
    assert json.loads((out / "runs" / "vgg16-s0" / "summary.json").read_text())["finished"] >= old
    assert not list((out / "runs").glob(".trash-*"))


def test_interrupted_run_resumes_from_its_checkpoint(dataset, tmp_path, monkeypatch):
    class StopAfterFirstEpoch(StudyReporter):
        def on_epoch_end(self, index, total, spec, row, eta_seconds):
            if row["epoch"] == 1:
                raise KeyboardInterrupt

    out = tmp_path / "s"
    kw = {**TINY, "epochs": 2}
    with pytest.raises(KeyboardInterrupt):
        run_study(["vgg16"], preset="quick", out_dir=out, dataset=dataset, reporter=StopAfterFirstEpoch(), **kw)
    run_dir = out / "runs" / "vgg16-s0"
    assert run_state(run_dir) == "resume" and not (run_dir / "summary.json").exists()
    calls: list = []
    monkeypatch.setattr(cifarzoo.train, "fit", failing_fit("none", calls))
    result = run_study(["vgg16"], preset="quick", out_dir=out, dataset=dataset, **kw)
    assert calls == ["vgg16-s0"]  # fit(resume=run_dir), not a fresh start
    assert result.outcomes[0].action == "resumed" and result.outcomes[0].status == "finished"
    metrics = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(metrics) == 1 + 2


def test_other_settings_in_the_same_folder_are_refused(study, dataset, tmp_path):
    out = copy_study(study, tmp_path)
    with pytest.raises(CifarzooError, match="other settings.*epochs"):
        run_study(["vgg16"], preset="quick", out_dir=out, dataset=dataset, **{**TINY, "epochs": 3})


def test_a_real_stall_is_recorded_and_the_study_goes_on(tmp_path):
    # Every training image the same one: nothing to learn on any CPU; the stall guard (after 10 steps) stops it.
    from cifarzoo.data import build_dataset

    ds = tiny_dataset(train_per_class=20)
    same = np.broadcast_to(ds.train_images[:1], ds.train_images.shape).copy()
    ds = build_dataset(same, ds.train_labels, ds.test_images, ds.test_labels, CLASSES, "one image")
    bad = {**TINY, "epochs": 3, "stall_steps": 10, "batch_size": 10, "augment": "none"}
    result = run_study(["vgg16"], preset="quick", out_dir=tmp_path / "s", dataset=ds, report=False, **bad)
    s = json.loads((tmp_path / "s" / "runs" / "vgg16-s0" / "summary.json").read_text())
    assert s["status"] == "failed" and s["kind"] == "stall"
    assert s["reason"] and s["diagnosis"] and s["epochs"] == 3
    assert result.outcomes[0].status == "failed"


def test_a_run_folder_without_config_is_refused_not_trusted(study, dataset, tmp_path):
    out = copy_study(study, tmp_path)
    (out / "runs" / "vgg16-s0" / "config.json").unlink()  # a foreign run: its settings cannot be checked
    with pytest.raises(CifarzooError, match=r"vgg16-s0 holds a run whose settings cannot be checked.*--force"):
        run_study(MODELS, preset="quick", seeds=2, out_dir=out, dataset=dataset, report=False, **TINY)
    result = run_study(["vgg16"], preset="quick", seeds=1, out_dir=out, dataset=dataset, report=False, force=True,
                       **TINY)
    assert [o.action for o in result.outcomes] == ["trained"]
    assert (out / "runs" / "vgg16-s0" / "config.json").is_file()


def test_fewer_models_keep_the_others_in_the_study_and_its_report(study, dataset, tmp_path, monkeypatch):
    out = copy_study(study, tmp_path)
    calls = []
    monkeypatch.setattr(cifarzoo.train, "fit", failing_fit("none", calls))
    result = run_study(["resnet18"], preset="quick", seeds=2, out_dir=out, dataset=dataset, **TINY)
    assert calls == []  # resnet18's runs are finished: kept
    saved = json.loads((out / "study.json").read_text())
    assert saved["models"] == MODELS  # the union
    results = json.loads(result.report["results.json"].read_text())
    assert [r["model"] for r in results["models"]] == MODELS
    assert {r["name"] for r in results["runs"] if r["status"] == "finished"} >= {"vgg16-s0", "vgg16-s1"}
    # a model whose run folders are gone leaves the study
    remove_run_dir(out / "runs" / "xception-s0", out / "runs")
    remove_run_dir(out / "runs" / "xception-s1", out / "runs")
    run_study(["resnet18"], preset="quick", seeds=2, out_dir=out, dataset=dataset, report=False, **TINY)
    assert json.loads((out / "study.json").read_text())["models"] == ["vgg16", "resnet18"]


def test_one_study_process_per_study_folder(study, dataset, tmp_path):
    from cifarzoo.train.rundir import LOCK_FILE, RunLock

    out = copy_study(study, tmp_path)
    lock = RunLock.acquire(out / LOCK_FILE)  # another benchmark process on the same study
    try:
        with pytest.raises(CifarzooError, match="being written by another"):
            run_study(MODELS, preset="quick", seeds=2, out_dir=out, dataset=dataset, report=False, **TINY)
    finally:
        lock.release()
    run_study(MODELS, preset="quick", seeds=2, out_dir=out, dataset=dataset, report=False, **TINY)
    assert not (out / LOCK_FILE).exists()


def test_out_of_memory_is_a_failed_run_not_a_crash(dataset, tmp_path, monkeypatch):
    import torch

    def oom(config=None, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cifarzoo.train, "fit", oom)
    result = run_study(["vgg16"], preset="quick", out_dir=tmp_path / "s", dataset=dataset, **TINY)
    s = result.outcomes[0].summary
    assert (s["status"], s["kind"]) == ("failed", "oom")
    assert "batch" in s["diagnosis"]
    saved = json.loads((tmp_path / "s" / "runs" / "vgg16-s0" / "summary.json").read_text())
    assert saved["status"] == "failed"


# --------------------------------------------------------------------------- pieces
def test_plan_resolves_models_and_rejects_unknown():
    plan = plan_study(None, preset="quick", out_dir="x")
    assert plan.models == ("vgg16", "vgg19", "resnet50", "inception", "xception")
    assert all(s.config.data == "sample" for s in plan.runs)
    plan = plan_study("VGG16, vgg16,resnet18", preset="quick", seeds=3, out_dir="x", data="/some/where")
    assert plan.models == ("vgg16", "resnet18") and len(plan.runs) == 6
    assert {s.config.data for s in plan.runs} == {"/some/where"}
    with pytest.raises(CifarzooError, match="unknown model 'nope'.*known models"):
        plan_study("vgg16,nope", preset="quick", out_dir="x")
    with pytest.raises(CifarzooError, match="seeds"):
        plan_study(None, preset="quick", seeds=0, out_dir="x")


def test_estimate_seconds_left():
    assert estimate_seconds_left([], [1.0, 1.0]) is None
    assert estimate_seconds_left([], [1.0], (0, 5, 0.0, 1.0)) is None
    # equal costs: the mean wall time of the finished runs per run to go
    assert estimate_seconds_left([(10.0, 1.0), (20.0, 1.0)], [1.0, 1.0]) == 30.0
    # costs weigh the runs: 10 s for cost 1 -> a run of cost 4 takes 40 s
    assert estimate_seconds_left([(10.0, 1.0)], [4.0]) == pytest.approx(40.0)
    # current run: 2 of 4 epochs in 10 s -> 10 s more; then the others at the finished runs' rate
    assert estimate_seconds_left([(30.0, 1.0)], [1.0, 2.0], (2, 4, 10.0, 1.0)) == pytest.approx(10.0 + 90.0)
    # nothing finished yet: the current run's pace (20 s for cost 2) prices the others
    assert estimate_seconds_left([], [1.0], (1, 4, 5.0, 2.0)) == pytest.approx(15.0 + 10.0)
    # not started yet, priced by the finished runs
    assert estimate_seconds_left([(8.0, 2.0)], [], (0, 3, 0.0, 3.0)) == pytest.approx(12.0)


def test_top_losses_are_the_most_confident_mistakes():
    import torch

    logits = torch.tensor([[5.0, 0, 0], [0, 9.0, 0], [0, 0, 3.0], [1.0, 0, 0]])
    labels = np.array([0, 0, 1, 0])
    items = top_losses(logits, labels, k=8)
    assert [it["index"] for it in items] == [1, 2]
    assert items[0]["pred"] == 1 and items[0]["true"] == 0 and items[0]["prob"] > items[1]["prob"]
    assert items[0]["loss"] == pytest.approx(-np.log(items[0]["true_prob"]))


def test_remove_run_dir_refuses_outside_the_study(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    with pytest.raises(CifarzooError, match="refusing"):
        remove_run_dir(outside, tmp_path / "study" / "runs")
    assert outside.exists()


# --------------------------------------------------------------------------- command line
def test_cli_report_only_rebuilds_the_report(study, tmp_path, capsys):
    out = copy_study(study, tmp_path)
    (out / "report.html").unlink()
    (out / "results.json").unlink()
    assert main(["benchmark", "--report-only", "--out", str(out)]) == 0
    assert (out / "report.html").exists() and (out / "results.json").exists()
    text = capsys.readouterr().out
    assert "report.html" in text and "vgg16" in text and "failed" in text


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["benchmark", "--report-only", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cifarzoo benchmark: error:") and "study.json" in err[0]
    assert main(["benchmark", "--models", "vgg16,bogus", "--preset", "quick", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'bogus'" in err[0] and "resnet50" in err[0]


def test_cli_runs_a_study_with_progress(tmp_path, capsys, monkeypatch):
    import cifarzoo.data

    from cifarzoo.train.config import make_config

    ds = tiny_dataset(train_per_class=-(-make_config("vgg16", preset="quick").batch_size // 10))
    monkeypatch.setattr(cifarzoo.data, "load", lambda spec=None, **kw: ds)
    out = tmp_path / "s"
    rc = main(["benchmark", "--models", "vgg16", "--preset", "quick", "--out", str(out), "--epochs", "1",
               "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "[1/1] vgg16-s0: training" in text and "[1/1] vgg16-s0 epoch 1/1" in text
    assert "left" in text and "report:" in text
    assert (out / "report.html").exists()
    # the same command again keeps the finished run
    assert main(["benchmark", "--models", "vgg16", "--preset", "quick", "--out", str(out), "--epochs", "1",
                 "--device", "cpu"]) == 0
    assert "done earlier, kept" in capsys.readouterr().out
