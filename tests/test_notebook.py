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
    # The run's HTML representation: summary table and inline curves.
    html = next(o.data["text/html"] for o in _cell(nb, "run").outputs if "text/html" in o.get("data", {}))
    assert 'class="cifarzoo-run"' in html and "test accuracy" in html and "data:image/png;base64," in html
    # The same run folder as the CLI leaves.
    (run_dir,) = (work / "runs").iterdir()
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "summary.json", "curves.png"):
        assert (run_dir / name).is_file(), name
