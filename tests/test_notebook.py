"""examples/quickstart.ipynb, executed in a real Jupyter kernel (nbclient + ipykernel).

The kernel is this interpreter (a kernelspec written into tmp_path for sys.executable),
with Jupyter's and IPython's folders in tmp_path too: nothing in the user's home changes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import cifarzoo

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _cell(nb, tag: str):
    return next(c for c in nb.cells if tag in c.get("metadata", {}).get("tags", []))


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def run_acc(work: Path) -> float:
    """The notebook's first run's test accuracy, from its summary.json."""
    import json

    (run_dir,) = (work / "runs").iterdir()
    return json.loads((run_dir / "summary.json").read_text())["test_acc"]


def _mimes(cell) -> set[str]:
    return {m for o in cell.outputs if o.output_type in ("display_data", "execute_result") for m in o.data}


@pytest.mark.slow
def test_quickstart_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    jupyter = tmp_path / "jupyter"
    write_kernel_spec(jupyter / "kernels" / "cifarzoo-test")
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    # The kernel imports the cifarzoo under test, wherever it is.
    src = str(Path(cifarzoo.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    work = tmp_path / "work"
    work.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Test-only last cell: the user's own pyplot figures still show inline after cifarzoo drew its files.
    check = nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1]);")
    check.metadata["tags"] = ["pyplot-after"]
    nb.cells.append(check)
    client = NotebookClient(nb, kernel_name="cifarzoo-test", timeout=240,
                            resources={"metadata": {"path": str(work)}})
    client.execute()

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # Training: a notebook progress widget (tqdm.notebook, detected in the kernel) and the epoch lines.
    train = _cell(nb, "train")
    assert "application/vnd.jupyter.widget-view+json" in _mimes(train)
    assert re.search(r"epoch +2/2 - .* - test_acc \d+\.\d+%", _text(train)), _text(train)
    # Accuracy above chance (10% for ten classes; the notebook's settings reach ~30%).
    m = re.search(r"test accuracy: (\d+\.\d+)%", _text(_cell(nb, "evaluate")))
    assert m and float(m.group(1)) > 15.0, _text(_cell(nb, "evaluate"))
    # run.plot() displayed as an image.
    assert "image/png" in _mimes(_cell(nb, "plot"))
    assert "image/png" in _mimes(_cell(nb, "pyplot-after"))
    # Five predictions with two classes each.
    lines = _text(_cell(nb, "predict")).strip().splitlines()
    assert len(lines) == 5 and all(re.search(r"predicted \w+ \d+%, \w+ \d+%", ln) for ln in lines), lines
    # Arrays out: probabilities (N, C) whose rows sum to 1, labels, the history as a DataFrame (HTML table).
    arrays = _cell(nb, "arrays")
    assert re.search(r"probabilities \(1000, 10\), rows sum to 1\.000\.\.1\.000", _text(arrays)), _text(arrays)
    m = re.search(r"accuracy from the labels: (\d+\.\d+)%", _text(arrays))
    assert m and abs(float(m.group(1)) / 100 - run_acc(work)) <= 0.002, _text(arrays)  # = test_acc, up to ties
    assert "text/html" in _mimes(arrays)  # pandas' table of run.history
    # Callbacks: the user's own sees every evaluated epoch; early stopping and keep-best on the validation
    # split; TensorBoard's scalars read back with TensorBoard's own reader.
    text = _text(_cell(nb, "callbacks"))
    epochs = [int(e) for e in re.findall(r"epoch (\d): validation accuracy \d+\.\d%", text)]
    assert epochs == list(range(1, len(epochs) + 1)) and 2 <= len(epochs) <= 4, text
    assert re.search(r"(finished|stopped) after \d epochs, weights of epoch \d, test accuracy", text), text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(work / "early-stopping" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("val/acc")] == epochs
    # The run's HTML representation: summary table and inline curves.
    html = next(o.data["text/html"] for o in _cell(nb, "run").outputs if "text/html" in o.get("data", {}))
    assert 'class="cifarzoo-run"' in html and "test accuracy" in html and "data:image/png;base64," in html
    # The same run folder as the CLI leaves.
    (run_dir,) = (work / "runs").iterdir()
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "summary.json", "curves.png"):
        assert (run_dir / name).is_file(), name
