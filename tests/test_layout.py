"""The package's layering: imports point one way, so each layer reads on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("core/model", ("core.local", "core.phases", "server", "client", "simulations")),
        ("core/local", ("core.phases", "server", "client", "simulations")),
        ("core", ("server", "client", "simulations")),
        ("client", ("server", "simulations")),
        ("server", ("client", "simulations")),
    ],
)
def test_no_import_runs_back_up(folder, forbidden):
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / folder).rglob("*.py")
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    }
    assert not wrong


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project's modules a file imports; ``from pkg import sub`` counts as ``pkg.sub``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= (subs & modules) or {node.module}
    return found & modules


def test_no_import_circles():
    files = [
        p for top in ("core", "server", "client", "simulations") for p in (ROOT / top).rglob("*.py")
    ]
    modules = {_module(p) for p in files}
    graph = {_module(p): _project_imports(p, modules) - {_module(p)} for p in files}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, ()))
        return False

    circles = sorted(m for m in graph if reaches(m, m))
    assert not circles


def test_the_runner_does_not_import_the_benchmarks():
    runner = [
        p
        for p in (ROOT / "simulations").rglob("*.py")
        if "benchmarks" not in p.relative_to(ROOT).parts
    ]
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in runner
        for name in _imports(path)
        if name.startswith("simulations.benchmarks") or name == "csfl"
    }
    assert not wrong


def test_only_the_composition_root_gathers_the_roles():
    wrong = {
        f"{path.relative_to(ROOT)}"
        for top in ("core", "server", "client", "simulations")
        for path in (ROOT / top).rglob("*.py")
        if "csfl" in _imports(path)
    }
    assert not wrong
