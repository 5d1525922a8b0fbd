"""The shape of the source, read from its syntax trees: imports point one way, no module reaches into
another's private names, one place builds a model, and every function reads in one screen.

Each check lists every violation it finds (file, function or line), so a failure says what to fix.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cifarzoo"
MAX_FUNCTION_LINES = 60  # def line to last line, docstring and comments included


@cache
def modules() -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the package by dotted name ("cifarzoo.data" for data/__init__.py), with its tree."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


def where(path: Path, line: int) -> str:
    return f"src/{path.relative_to(SRC).as_posix()}:{line}"


def is_package(name: str) -> bool:
    return modules()[name][0].name == "__init__.py"


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names, relative ones included."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package(module) else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(package module, name or None) pairs one import statement brings in: ``from a.b import c`` is
    the module a.b.c where that is a module, else name c of a.b."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if a.name.split(".")[0] == PACKAGE]
    source = resolve(module, node)
    if source.split(".")[0] != PACKAGE:
        return []
    return [(f"{source}.{a.name}", None) if f"{source}.{a.name}" in modules() else (source, a.name)
            for a in node.names]


def module_level_imports(tree: ast.Module):
    """Import statements run when the module is imported: at its top level, in top-level try/if blocks
    (not under ``if TYPE_CHECKING``), never inside a function or class."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo[:0] = node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo[:0] = node.body + [s for h in node.handlers for s in h.body] + node.orelse + node.finalbody


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports at import time: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {m: {} for m in modules()}
    for name, (_, tree) in modules().items():
        for node in module_level_imports(tree):
            for target, _ in imported(name, node):
                if target in modules() and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def mutual_imports() -> list[str]:
    """Pairs of modules that import each other anywhere, a function's deferred import included (a
    package's ``__init__`` left out: its lazy exports import what it re-exports on first use)."""
    graph: dict[str, dict[str, int]] = {m: {} for m in modules()}
    for name, (_, tree) in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, _ in imported(name, node):
                    if target in modules() and target != name:
                        graph[name].setdefault(target, node.lineno)
    return [f"{a} ({where(modules()[a][0], graph[a][b])}) <-> {b} ({where(modules()[b][0], graph[b][a])})"
            for a in sorted(graph) for b in sorted(graph[a])
            if a < b and a in graph[b] and not is_package(a) and not is_package(b)]


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle through it."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [shortest_cycle(graph, set(c)) for c in comps]


def shortest_cycle(graph, comp: set[str]) -> list[str]:
    """A shortest cycle inside one strongly connected component, from its first module by name."""
    start = min(comp)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]]):
            if w == start:
                return path + [start]
            if w in comp and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return [start]


def too_long_functions() -> list[str]:
    out = []
    for path, tree in modules().values():
        def walk(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        n = child.end_lineno - child.lineno + 1
                        if n > MAX_FUNCTION_LINES:
                            out.append(f"{where(path, child.lineno)} {qual}: {n} lines")
                    walk(child, qual + ".")
                else:
                    walk(child, prefix)

        walk(tree, "")
    return out


def private_imports() -> list[str]:
    out = []
    for name, (path, tree) in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for source, what in imported(name, node):
                    private = what is not None and what.startswith("_") and not what.startswith("__")
                    if private and source != name:
                        out.append(f"{where(path, node.lineno)} {name} imports {what} from {source}")
    return out


MODEL_MODULES = ("cifarzoo.models", "cifarzoo.models.registry")


def model_builds_outside_models() -> list[str]:
    """Calls of ``models.create(...)`` (through any import of it) with a run's settings (an argument that
    mentions ``config``) outside the models package: ``models.from_config`` is the one place a model is built
    from a config. (The model listing builds from a name and width, a checkpoint from its recorded spec.)"""
    out = []
    for name, (path, tree) in modules().items():
        if name == "cifarzoo.models" or name.startswith("cifarzoo.models."):
            continue
        module_names, create_names = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                module_names |= {a.asname for a in node.names if a.name in MODEL_MODULES and a.asname}
            elif isinstance(node, ast.ImportFrom):
                for target, what in imported(name, node):
                    alias = next(a.asname or a.name for a in node.names if a.name == (what or target.split(".")[-1]))
                    if target in MODEL_MODULES and what is None:
                        module_names.add(alias)
                    elif target in MODEL_MODULES and what == "create":
                        create_names.add(alias)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            text = ast.unparse(f)
            from_config = "config" in ast.unparse(node)
            if from_config and ((isinstance(f, ast.Name) and f.id in create_names) or (
                    isinstance(f, ast.Attribute) and f.attr == "create"
                    and text.rsplit(".", 1)[0] in module_names | set(MODEL_MODULES))):
                out.append(f"{where(path, node.lineno)} {name} calls {text}(...)")
    return out


def report(violations: list[str]) -> str:
    return f"{len(violations)} violation(s):\n" + "\n".join(violations)


# ---------------------------------------------------------------------------------------------------- the checks


def test_no_import_cycle_between_modules():
    found = []
    graph = import_graph()
    for cycle in cycles(graph):
        steps = [f"{a} ({where(modules()[a][0], graph[a][b])})" for a, b in zip(cycle, cycle[1:])]
        found.append(" -> ".join(steps + [cycle[-1]]))
    assert not found, report(found)


def test_no_two_modules_import_each_other_even_in_a_function():
    found = mutual_imports()
    assert not found, report(found)


def test_no_module_imports_another_modules_private_names():
    found = private_imports()
    assert not found, report(found)


def test_only_the_models_package_builds_a_model_from_a_config():
    found = model_builds_outside_models()
    assert not found, report(found)


def test_no_function_is_longer_than_one_screen():
    found = too_long_functions()
    assert not found, report(found)


def test_the_checks_see_what_they_look_for(tmp_path, monkeypatch):
    """Each check finds a planted violation, so a passing check is not a blind one."""
    pkg = tmp_path / PACKAGE
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("def create(name):\n    return name\n")
    (pkg / "a.py").write_text("from cifarzoo import b\n_hidden = 1\n")
    (pkg / "b.py").write_text("from . import a\nfrom cifarzoo.a import _hidden\n\n\ndef f():\n"
                              "    from cifarzoo import models\n    return models.create(config.model)\n")
    (pkg / "c.py").write_text("from cifarzoo.models import create as make\n\n\ndef long():\n"
                              + "    x = 1\n" * MAX_FUNCTION_LINES + "    return make(config)\n")
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    modules.cache_clear()
    try:
        assert cycles(import_graph()) == [["cifarzoo.a", "cifarzoo.b", "cifarzoo.a"]]
        assert mutual_imports() == [f"cifarzoo.a (src/{PACKAGE}/a.py:1) <-> cifarzoo.b (src/{PACKAGE}/b.py:1)"]
        assert private_imports() == [f"src/{PACKAGE}/b.py:2 cifarzoo.b imports _hidden from cifarzoo.a"]
        assert model_builds_outside_models() == [f"src/{PACKAGE}/b.py:7 cifarzoo.b calls models.create(...)",
                                                 f"src/{PACKAGE}/c.py:{MAX_FUNCTION_LINES + 5} "
                                                 "cifarzoo.c calls make(...)"]
        assert too_long_functions() == [f"src/{PACKAGE}/c.py:4 long: {MAX_FUNCTION_LINES + 2} lines"]
    finally:
        modules.cache_clear()


def test_make_tests_lint_is_also_the_format_check(tmp_path):
    """`ruff check` with the project's rule set (pyproject.toml) refuses what a layout change brings:
    blank lines, whitespace, indentation and long lines, besides pyflakes' findings."""
    import json
    import subprocess
    import sys

    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = 1\ndef f( a ):\n  return a\ny = '" + "z" * 130 + "'\n")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(SRC.parent / "pyproject.toml"),
                           "--output-format", "json", "--no-cache", str(bad)], capture_output=True, text=True)
    codes = {finding["code"] for finding in json.loads(done.stdout)}
    assert {"F401", "E302", "E201", "E202", "E111", "E305", "E501"} <= codes, codes
