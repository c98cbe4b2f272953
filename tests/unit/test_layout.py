"""Every workspace name is spelled once, in layout.py: another module that spells one of them as
a string of its own would drift from it unseen."""

from __future__ import annotations

import ast
from pathlib import Path

import posbuild
from posbuild.core import layout

PACKAGE_DIR = Path(posbuild.__file__).parent
NAMES = {layout.CONFIG_NAME, layout.LOCK_NAME, layout.OUT_DIR, layout.STATE_DIR, layout.STORE_LOCK,
         layout.NO_CACHE_TAG}


def spelled(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in NAMES]


def test_no_module_but_layout_spells_a_workspace_name() -> None:
    found = [hit for path in sorted(PACKAGE_DIR.rglob("*.py")) if path.name != "layout.py"
             for hit in spelled(path)]
    assert found == []


def test_layout_imports_nothing() -> None:
    tree = ast.parse((PACKAGE_DIR / "core" / "layout.py").read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
