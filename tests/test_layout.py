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


def test_the_curves_do_not_import_their_trainers():
    assert not {m for m in _imports(ROOT / "simulations/curves.py") if "curve_trainers" in m}
