"""The study report from hand-made run folders (no training): schema, CSV, Markdown, self-contained HTML."""
from __future__ import annotations

import base64
import csv
import json
import statistics
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cifarzoo.study import plan_study, write_report
from cifarzoo.study.report import RESULT_COLUMNS, RUN_KEYS, SCHEMA, fmt_bytes, fmt_count, fmt_pct, fmt_seconds
from cifarzoo.study.plan import EVAL_FILE, STUDY_FILE
from cifarzoo.io import write_json
from cifarzoo.train.rundir import write_metrics

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ACC = {("vgg16", 0): 0.41, ("vgg16", 1): 0.45, ("resnet50", 0): 0.52, ("resnet50", 1): 0.50}


def fake_dataset():
    from cifarzoo.data import build_dataset

    rng = np.random.default_rng(1)
    y_train, y_test = np.repeat(np.arange(10), 3), np.repeat(np.arange(10), 2)
    x_train = rng.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    return build_dataset(x_train, y_train, x_test, y_test, tuple(CLASSES), "fake (test_report.py)")


def make_study(out: Path, models, *, seeds=2, preset="quick", failed=(), missing=(), data=None,
               **overrides) -> Path:
    """A study folder as the runner leaves it, written by hand: ACC gives each finished run's accuracy."""
    plan = plan_study(models, preset=preset, seeds=seeds, out_dir=out, data=data, **overrides)
    write_json(out / STUDY_FILE, {**plan.to_dict(), "created": "2024-01-01T00:00:00+0000"})
    for spec in plan.runs:
        if spec.name in missing:
            continue
        d = spec.run_dir
        epochs = spec.config.epochs
        write_json(d / "config.json", {
            "config": spec.config.to_dict(), "run_dir": str(d),
            "data": {"source": "fake (test_report.py)", "classes": CLASSES, "mean": [125.3, 123.0, 113.9],
                     "std": [63.0, 62.1, 66.7], "train_images": 30, "eval_images": 20, "eval_split": "test",
                     "test_images": 20},
            "device": "cpu", "device_name": "cpu (x86_64, 2 threads)", "precision": "fp32", "compiled": False,
            "world_size": 1, "parameters": 1000,
            "versions": {"python": "3.11", "torch": "2.13.0", "numpy": "2.0", "cifarzoo": "0.1.0"},
        })
        if spec.name in failed:
            write_metrics(d / "metrics.csv", [])
            write_json(d / "summary.json", {
                "model": spec.model, "status": "failed", "seed": spec.seed, "epochs": epochs,
                "epochs_completed": 0, "kind": "stall", "reason": "not learning after 39 steps",
                "diagnosis": "The training loss stays at ln(num_classes)\n  - learning rate too high"})
            continue
        acc = ACC[(spec.model, spec.seed)]
        rows = [{"epoch": e, "lr": 0.1, "train_loss": 2.0 - 0.1 * e, "train_acc": acc * e / epochs,
                 "eval_loss": 2.1 - 0.1 * e, "eval_acc": acc * e / epochs, "epoch_seconds": 2.0,
                 "elapsed_seconds": 2.0 * e, "images_per_second": 500.0} for e in range(1, epochs + 1)]
        write_metrics(d / "metrics.csv", rows)
        params = 956154 if spec.model == "vgg16" else 375762
        write_json(d / "summary.json", {
            "model": spec.model, "status": "finished", "epochs": epochs, "seed": spec.seed, "test_acc": acc,
            "test_loss": 1.5, "test_acc_tta": acc + 0.01, "test_loss_tta": 1.45, "train_seconds": 2.0 * epochs,
            "images_per_second": 500.0, "peak_memory_bytes": 300 * 2**20 + spec.seed, "peak_memory_kind":
            "process peak RSS", "parameters": params, "macs": 20_000_000, "precision": "fp32",
            "device": "cpu (x86_64, 2 threads)", "data_source": "fake (test_report.py)", "train_images": 30})
        cm = np.eye(10, dtype=int) * 2
        cm[3, 3], cm[3, 5] = 1, 1
        write_json(d / EVAL_FILE, {
            "accuracy": acc, "loss": 1.5, "classes": CLASSES, "per_class_accuracy": list(np.diag(cm) / 2),
            "confusion": cm.tolist(), "tta": False, "data_source": "fake", "test_images": 20,
            "top_losses": [{"index": i, "true": int(np.repeat(np.arange(10), 2)[i]), "pred": 5, "prob": 0.9 - i / 100,
                            "true_prob": 0.05, "loss": 3.0} for i in (6, 7, 0)]})
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = make_study(tmp_path_factory.mktemp("r") / "study", ["vgg16", "resnet50", "xception"],
                     failed={"xception-s0", "xception-s1"})
    paths = write_report(out, dataset=fake_dataset())
    return out, paths


def test_results_json_schema(report):
    out, paths = report
    r = json.loads((out / "results.json").read_text())
    assert r["schema"] == SCHEMA
    assert set(r) == {"schema", "study", "data", "environment", "original_study", "models", "runs"}
    st = r["study"]
    for key in ("preset", "preset_description", "models", "seeds", "rule", "data_spec", "created", "report_date",
                "cifarzoo", "configs"):
        assert key in st, key
    assert st["preset"] == "quick" and st["models"] == ["vgg16", "resnet50", "xception"] and st["seeds"] == [0, 1]
    assert "no test-set selection" in st["rule"] and st["created"].startswith("2024")
    assert r["data"]["source"] == "fake (test_report.py)" and r["data"]["test_images"] == 20
    assert len(r["data"]["mean"]) == 3 and r["data"]["classes"] == CLASSES
    assert r["environment"]["device"].startswith("cpu") and r["environment"]["torch"]
    assert r["original_study"] is None

    models = {m["model"]: m for m in r["models"]}
    assert list(models) == ["vgg16", "resnet50", "xception"]
    for m in r["models"]:
        assert set(RESULT_COLUMNS) <= set(m)
    v = models["vgg16"]
    assert v["status"] == "finished" and v["n_seeds"] == 2 and v["n_failed"] == 0
    assert isinstance(v["parameters"], int) and isinstance(v["macs"], int) and isinstance(v["epochs"], int)
    assert v["test_acc_mean"] == pytest.approx(0.43)
    assert v["test_acc_std"] == pytest.approx(statistics.stdev([0.41, 0.45]))
    assert v["test_acc_tta_mean"] == pytest.approx(0.44)
    assert v["test_loss_mean"] == pytest.approx(1.5) and v["test_loss_std"] == pytest.approx(0.0)
    assert isinstance(v["train_seconds_mean"], float) and isinstance(v["images_per_second_mean"], float)
    assert v["peak_memory_bytes"] == 300 * 2**20 + 1  # max over seeds
    x = models["xception"]
    assert (x["status"], x["n_seeds"], x["n_failed"]) == ("failed", 0, 2)
    assert x["test_acc_mean"] is None and x["test_acc_std"] is None
    assert isinstance(x["parameters"], int) and x["parameters"] > 0  # sized from the config

    assert len(r["runs"]) == 6
    for run in r["runs"]:
        assert set(RUN_KEYS) <= set(run)
    fx = next(run for run in r["runs"] if run["name"] == "xception-s0")
    assert fx["status"] == "failed" and fx["kind"] == "stall" and "ln(num_classes)" in fx["diagnosis"]
    ok = next(run for run in r["runs"] if run["name"] == "vgg16-s1")
    assert ok["test_acc"] == 0.45 and ok["run_dir"] == "runs/vgg16-s1" and len(ok["per_class_accuracy"]) == 10


def test_results_csv_has_a_row_per_model(report):
    out, _ = report
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == RESULT_COLUMNS
    assert [r["model"] for r in rows] == ["vgg16", "resnet50", "xception"]
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(0.43) and rows[2]["test_acc_mean"] == ""


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table = None
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_html_is_self_contained_and_complete(report):
    out, paths = report
    text = (out / "report.html").read_text()
    page = _Page()
    page.feed(text)
    page.close()
    imgs = [a for t, a in page.tags if t == "img"]
    # curves, tradeoffs, data grid, and a confusion matrix + top losses per finished model
    assert len(imgs) == 3 + 2 * 2
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert a.get("alt")
    for tag, a in page.tags:
        for attr in ("src", "href"):
            if attr in a:
                assert a[attr].startswith(("data:", "#")), (tag, a[attr][:60])
        assert tag not in ("script", "link", "iframe")
    assert "<style>" in text and "http://" not in text and "https://" not in text

    summary = page.tables["summary"]
    assert summary[0][0] == "Model"
    assert [row[0] for row in summary[1:]] == ["vgg16", "resnet50", "xception"]
    assert "43.00 ± 2.83%" in summary[1]
    assert summary[3][1] == "failed"
    assert [row[0] for row in page.tables["per-class"][1:]] == ["vgg16", "resnet50"]
    assert "Failed runs" in text and "learning rate too high" in text and "not learning after 39 steps" in text
    for section in ("Learning curves", "Accuracy against cost", "Data", "Confusion matrices",
                    "Most confidently wrong test images", "Environment", "Per-class test accuracy"):
        assert f"<h2>{section}" in text, section
    assert "fake (test_report.py)" in text and "2.13.0" in text and "fp32" in text


def test_markdown_references_the_figures_next_to_it(report):
    out, paths = report
    md = (out / "report.md").read_text()
    links = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) == 7
    for link in links:
        assert link.startswith("figures/") and link.endswith(".png")
        assert (out / link).is_file()
    assert "| vgg16 | finished |" in md
    for name in ("curves", "tradeoffs", "data", "confusion:vgg16", "top:resnet50"):
        assert paths[name].is_file() and paths[name].parent == out / "figures"


def test_seed_preset_shows_the_original_study(tmp_path):
    out = make_study(tmp_path / "s", ["vgg16", "resnet50"], seeds=1, preset="seed", data="/nowhere/cifar")
    write_report(out, dataset=fake_dataset())
    r = json.loads((out / "results.json").read_text())
    assert r["original_study"]["vgg16"].startswith("10.0%")
    assert r["models"][0]["original_study"].startswith("10.0%")
    md = (out / "report.md").read_text()
    assert "Original study" in md and "The original study beside this one" in md
    assert "stuck at ln 10" in md and "41.00%" in md


def test_as_written_replay_shows_printed_replayed_and_correct_side_by_side(tmp_path):
    from cifarzoo.errors import CifarzooError

    plan = plan_study("vgg16,resnet50", preset="seed", as_written=True, out_dir=tmp_path / "p")
    assert plan.models == ("vgg16", "as_written_vgg16", "resnet50", "as_written_resnet")
    assert {s.model: s.config.normalize for s in plan.runs}["as_written_vgg16"] == "study"
    with pytest.raises(CifarzooError, match="needs --preset seed"):
        plan_study(None, preset="quick", as_written=True, out_dir=tmp_path / "q")

    out = make_study(tmp_path / "s", ["vgg16", "resnet50"], seeds=1, preset="seed", as_written=True,
                     failed=("as_written_vgg16-s0", "as_written_resnet-s0"))
    write_report(out, dataset=fake_dataset())
    md = (out / "report.md").read_text()
    replay = md[md.index("The original study replayed"):]
    assert "| vgg16 | loss 2.3028, val_loss 2.3026 (ln 10), accuracy 0.097-0.100 in every epoch | stopped in epoch 1 " \
           "(stall): not learning after 39 steps | 41.00% |" in replay
    assert "| resnet50 | loss 3.8090, accuracy 0.1000 in every epoch |" in replay


def test_seed_preset_with_overrides_does_not_claim_the_original_settings(tmp_path):
    out = make_study(tmp_path / "s", ["vgg16"], seeds=1, preset="seed", data="sample", epochs=1)
    write_report(out, dataset=fake_dataset())
    r = json.loads((out / "results.json").read_text())
    assert r["study"]["overrides"] == ["data sample (preset: the full CIFAR-10)", "epochs 1 (preset: 50)"]
    md = (out / "report.md").read_text()
    assert "same settings" not in md
    assert "overridden here: data sample (preset: the full CIFAR-10); epochs 1 (preset: 50)" in md
    original = md[md.index("The original study beside this one"):]
    assert "epochs 1 (preset: 50)" in original and "not the original settings" in original
    # without overrides the comparison is with the same settings
    out = make_study(tmp_path / "t", ["vgg16"], seeds=1, preset="seed")
    write_report(out, dataset=fake_dataset())
    assert "next to the same settings" in (out / "report.md").read_text()
    assert json.loads((out / "results.json").read_text())["study"]["overrides"] == []


def test_incomplete_study_and_unloadable_data(tmp_path):
    # seed 1 of resnet50 never ran; the study's data cannot be loaded at report time
    out = make_study(tmp_path / "s", ["vgg16", "resnet50"], missing={"resnet50-s1"}, data=str(tmp_path / "gone"))
    paths = write_report(out)
    r = json.loads((out / "results.json").read_text())
    res = next(m for m in r["models"] if m["model"] == "resnet50")
    assert res["status"] == "incomplete" and res["n_seeds"] == 1 and res["test_acc_std"] is None
    assert next(x for x in r["runs"] if x["name"] == "resnet50-s1")["status"] == "missing"
    md = (out / "report.md").read_text()
    assert "Not finished yet: resnet50-s1 (missing" in md
    assert "could not be loaded" in md and "data" not in paths and "top:vgg16" not in paths
    assert "confusion:vgg16" in paths  # drawn from the saved evaluation, no images needed


def test_formatters():
    assert fmt_pct(0.8512, 0.0031) == "85.12 ± 0.31%"
    assert fmt_pct(0.5) == "50.00%" and fmt_pct(None) == "–"
    assert fmt_count(23_520_842) == "23.52M" and fmt_count(956) == "956"
    assert fmt_seconds(42.0) == "42.0 s" and fmt_seconds(600) == "10.0 min" and fmt_seconds(9000) == "2.50 h"
    assert fmt_bytes(3 * 2**30) == "3.00 GiB"
