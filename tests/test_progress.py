"""Progress reporters (cifarzoo.progress): notebook bars in a Jupyter kernel, the CLI's lines elsewhere."""
from __future__ import annotations

import io
import sys
import types

import pytest

from cifarzoo import progress
from cifarzoo.errors import CifarzooError

INFO = {
    "config": {"model": "resnet18", "width_mult": 0.125, "epochs": 2}, "parameters": 1234,
    "device_name": "cpu", "precision": "fp32", "compiled": False, "run_dir": "runs/x",
    "data": {"source": "arrays in memory", "train_images": 60, "eval_images": 20, "eval_split": "test"},
}
ROW = {"epoch": 1, "epoch_seconds": 0.5, "images_per_second": 120.0, "lr": 0.1, "train_loss": 2.1,
       "train_acc": 0.25, "eval_loss": 2.0, "eval_acc": 0.3}


def _fake_kernel(monkeypatch, config: dict) -> None:
    shell = types.SimpleNamespace(config=config)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


def test_kernel_detection(monkeypatch):
    assert not progress.in_notebook()  # pytest is no kernel
    _fake_kernel(monkeypatch, {"IPKernelApp": {}})
    assert progress.in_notebook()
    _fake_kernel(monkeypatch, {"TerminalIPythonApp": {}})  # the IPython console is a terminal
    assert not progress.in_notebook()


def test_auto_in_a_kernel_uses_tqdm_notebook_bars_and_keeps_the_epoch_lines(monkeypatch, capsys):
    from tqdm.notebook import tqdm as notebook_tqdm

    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    reporter = progress.make_reporter("auto")
    assert isinstance(reporter, progress.NotebookReporter)
    assert reporter.bar_class is notebook_tqdm
    reporter.on_start(INFO)
    reporter.on_epoch_start(1, 4)
    assert isinstance(reporter.bar, notebook_tqdm) and reporter.bar.total == 4
    reporter.on_step(1, 3, 4, 3)
    assert reporter.bar.n == 3
    reporter.on_epoch_end(ROW)
    assert reporter.bar is None
    reporter.on_epoch_start(2, 4)  # the next bar carries the last epoch's figures
    assert "test_acc 30.0%" in reporter.bar.postfix
    reporter.on_epoch_end({**ROW, "epoch": 2})
    out = capsys.readouterr().out
    assert "epoch   1/2 - 0.5s - 125ms/step - 120 img/s - lr 1.00e-01 - loss 2.1000 - acc 25.00% - " \
           "test_loss 2.0000 - test_acc 30.00%" in out
    assert "epoch   2/2" in out


def test_auto_outside_a_kernel_is_the_cli_reporter_and_none_is_silent(monkeypatch, capsys):
    from tqdm.std import tqdm as text_tqdm

    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    assert type(progress.make_reporter("auto")) is progress.ConsoleReporter
    bar = progress.make_reporter("bar")  # forced bars: tqdm's text bar outside a kernel
    assert isinstance(bar, progress.NotebookReporter) and bar.bar_class is text_tqdm
    quiet = progress.make_reporter("none")
    quiet.on_start(INFO), quiet.on_epoch_start(1, 4), quiet.on_epoch_end(ROW)
    assert capsys.readouterr() == ("", "")
    # The CLI's reporter draws no bar when its stream is not a terminal.
    stream = io.StringIO()
    console = progress.ConsoleReporter(stream=stream)
    console.on_start(INFO), console.on_epoch_start(1, 4)
    assert console.bar is None


def test_progress_argument_is_checked():
    class Mine:
        def on_start(self, info): ...
        def on_epoch_start(self, epoch, steps): ...
        def on_step(self, epoch, step, steps, global_step): ...
        def on_epoch_end(self, row): ...
        def on_end(self, summary): ...

    mine = Mine()
    assert progress.make_reporter(mine) is mine
    with pytest.raises(CifarzooError, match="progress='verbose': expected 'auto', 'bar', 'none' or a Reporter"):
        progress.make_reporter("verbose")
    with pytest.raises(CifarzooError, match="or a StudyReporter"):
        progress.make_study_reporter(mine)  # a training reporter is not a study reporter
    assert type(progress.make_study_reporter("auto")) is progress.ConsoleStudyReporter


def test_study_progress_in_a_kernel_counts_runs_on_a_notebook_bar(monkeypatch, capsys):
    from tqdm.notebook import tqdm as notebook_tqdm

    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    reporter = progress.make_study_reporter("auto")
    assert isinstance(reporter, progress.NotebookStudyReporter)
    plan = types.SimpleNamespace(runs=[1, 2], models=("vgg16", "resnet18"), seeds=(0,), preset="quick",
                                 out_dir="study/quick", rule="the same for all")
    dataset = types.SimpleNamespace(source="sample", train_labels=[0] * 5, test_labels=[0] * 2)
    reporter.on_study_start(plan, dataset)
    assert isinstance(reporter.bar, notebook_tqdm) and reporter.bar.total == 2
    outcome = types.SimpleNamespace(summary={"kind": "stall", "reason": "stuck"}, spec=types.SimpleNamespace(
        name="vgg16-s0"), action="trained", status="failed", wall_seconds=1.0, where="")
    reporter.on_run_end(1, 2, outcome, 30.0)
    assert reporter.bar.n == 1 and "~30s left" in reporter.bar.postfix
    reporter.on_report({"report.html": "study/quick/report.html"})
    assert reporter.bar is None
    out = capsys.readouterr().out
    assert "[1/2] vgg16-s0: FAILED (stall): stuck; ~30s left" in out and "report: study/quick/report.html" in out
