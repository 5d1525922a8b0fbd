"""docs/extending.md's worked examples run as written: each ```python block in a fresh interpreter in an empty
folder (a registered example model never reaches this process's registry). Blocks marked ```python skip show an
interface that is not in the code yet and are left out."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
_FENCE = re.compile(r"^```python(?P<info>[^\n]*)\n(?P<code>.*?)^```$", re.S | re.M)


def code_blocks(text: str) -> list[tuple[str, str, bool]]:
    """``(section title, code, skipped?)`` of every ```python block, in order."""
    blocks = []
    for m in _FENCE.finditer(text):
        heading = re.findall(r"^## (.+)$", text[:m.start()], re.M)
        blocks.append((heading[-1] if heading else "top", m["code"], "skip" in m["info"].split()))
    return blocks


BLOCKS = code_blocks(DOC.read_text(encoding="utf-8"))


def test_the_page_has_a_runnable_example_for_models_data_sources_and_presets():
    runnable = {title for title, _, skipped in BLOCKS if not skipped}
    assert {"A model", "A data source", "A preset", "An augmentation", "A callback"} <= runnable


def test_readme_is_short_and_its_links_reach_files():
    """README is read in five minutes (under 250 lines); every relative link names a file of the repository."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 250
    for doc in (readme, *(p.read_text(encoding="utf-8") for p in (root / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(((?!https?:|#)[^)#\s]+)", doc):
            assert any((base / target).exists() for base in (root, root / "docs")), target


@pytest.mark.parametrize("title, code", [(t, c) for t, c, skipped in BLOCKS if not skipped],
                         ids=[t for t, _, skipped in BLOCKS if not skipped])
def test_example_runs(title, code, tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{title}:\n{done.stderr[-3000:]}"
