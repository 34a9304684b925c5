"""The package's shape: no import cycles, every module imports on its own, doctests run, and the
command line builds without torch."""

from __future__ import annotations

import ast
import doctest
import importlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

import cardiomegaly

PACKAGE = Path(cardiomegaly.__file__).parent
MODULES = sorted(
    ".".join(("cardiomegaly", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
        ".__init__"
    )
    for p in PACKAGE.rglob("*.py")
)


def _module_path(name: str) -> Path | None:
    parts = name.split(".")[1:]
    for candidate in (PACKAGE.joinpath(*parts).with_suffix(".py"),
                      PACKAGE.joinpath(*parts, "__init__.py")):  # fmt: skip
        if candidate.is_file():
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """Which package modules each module imports, anywhere in its file (inside functions and
    ``TYPE_CHECKING`` blocks too): an import inside a function hides a cycle, it does not break
    it. ``from .pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        path = _module_path(module)
        is_package = path.name == "__init__.py"
        package = module if is_package else module.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if _module_path(sub) and sub.startswith("cardiomegaly")
                                   else base)  # fmt: skip
            else:
                continue
            edges.update(t for t in targets if t in MODULES and t != module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_package_modules():
    graph = import_graph()
    assert len(graph) >= 40 and graph["cardiomegaly.train"]  # the walk sees the package
    assert "cardiomegaly.data.split" in graph["cardiomegaly.export"]
    assert cycles(graph) == []


def test_every_module_imports_in_a_fresh_interpreter_in_a_shuffled_order():
    """One shuffled order (15 s of a fresh interpreter each): the graph above, which has no
    cycle, is what makes every order work; this run catches what an import does at run time."""
    order = [m for m in MODULES if m != "cardiomegaly.__main__"]  # that one runs the CLI
    random.Random(0).shuffle(order)
    code = f"import importlib\nfor m in {order!r}:\n    importlib.import_module(m)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_command_line_predict_and_measure_load_without_torch():
    code = ("import sys\nfrom cardiomegaly.cli import build_parser\nbuild_parser()\n"
            "import cardiomegaly.predict, cardiomegaly.segment.measure\n"
            "print('torch' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "cardiomegaly.__main__"])
def test_the_examples_in_the_docstrings_run(module):
    """Docstring examples are run, so they stay true; examples that need a trained run or data
    are marked ``+SKIP`` in the docstring itself."""
    failures, _ = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert failures == 0
