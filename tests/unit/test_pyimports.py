"""The import scan behind py_task's code hash: which workspace files a script imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from posbuild.load.pyimports import ImportScanner, ScanError


def _tree(root: Path, files: dict[str, str]) -> ImportScanner:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return ImportScanner(str(root))


def test_stdlib_and_missing_names_are_ignored(tmp_path: Path) -> None:
    scanner = _tree(tmp_path, {
        "p/t.py": "import os, json\nimport not_installed_anywhere\nfrom typing import Any\n"})
    assert scanner.scan("p/t.py").modules == ()


def test_a_local_module_shadowing_the_stdlib_counts(tmp_path: Path) -> None:
    scanner = _tree(tmp_path, {"p/t.py": "import json\n", "p/json.py": ""})
    assert scanner.scan("p/t.py").modules == ("p/json.py",)


def test_packages_submodules_and_relative_imports(tmp_path: Path) -> None:
    scanner = _tree(tmp_path, {
        "p/t.py": "from pkg import sub, CONSTANT\nimport pkg.other as o\n",
        "p/pkg/__init__.py": "CONSTANT = 1\n",
        "p/pkg/sub.py": "from .deep import thing\nfrom .. import beside\n",
        "p/pkg/other.py": "",
        "p/pkg/deep/__init__.py": "",
        "p/pkg/deep/thing.py": "",
        "p/beside.py": "",
        "p/unused.py": "",
    })
    assert scanner.scan("p/t.py").modules == (
        "p/beside.py", "p/pkg/__init__.py", "p/pkg/deep/__init__.py", "p/pkg/deep/thing.py",
        "p/pkg/other.py", "p/pkg/sub.py",
    )


def test_the_script_folder_comes_before_the_workspace_root(tmp_path: Path) -> None:
    scanner = _tree(tmp_path,
                    {"p/t.py": "import util\nimport rootonly\n", "p/util.py": "", "util.py": "",
                               "rootonly.py": ""})
    assert scanner.scan("p/t.py").modules == ("p/util.py", "rootonly.py")


def test_relative_imports_never_leave_the_workspace(tmp_path: Path) -> None:
    scanner = _tree(tmp_path, {"t.py": "from ... import x\nfrom .. import y\n"})
    assert scanner.scan("t.py").modules == ()


def test_import_cycles_terminate_and_files_read_covers_everything(tmp_path: Path) -> None:
    scanner = _tree(tmp_path,
                    {"t.py": "import a\n", "a.py": "import b\n", "b.py": "import a\nimport t\n"})
    scan = scanner.scan("t.py")
    assert scan.modules == ("a.py", "b.py")
    assert scan.files_read == ("a.py", "b.py", "t.py")


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    scanner = _tree(tmp_path, {"t.py": "import a\n", "a.py": "\n\ndef f(:\n"})
    with pytest.raises(ScanError) as caught:
        scanner.scan("t.py")
    assert (caught.value.path, caught.value.line) == ("a.py", 3)
