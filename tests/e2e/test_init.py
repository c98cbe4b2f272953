"""First contact: `posbuild init` makes a workspace a first build succeeds in, bare `posbuild`
prints the help, and counts read as English ("1 action")."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from conftest import POSBUILD, Result, Workspace

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def run(folder: Path, *args: str) -> Result:
    proc = subprocess.run([*POSBUILD, *args], cwd=folder, capture_output=True, text=True,
                          timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"/"
            for p in sorted(folder.rglob("*"))}


def test_init_then_build_works(tmp_path: Path) -> None:
    result = run(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "wrote posbuild.toml, hello/BUILD, hello/name.txt"
    assert (tmp_path / ".gitignore").read_text() == "posbuild-out/\n.posbuild/\n"
    built = run(tmp_path, "//...")
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[-1].startswith("OK: 1 action (1 executed, 0 cached, 0 failed)")
    assert (tmp_path / "posbuild-out/hello/greeting.txt").read_text() == "Hello, world\n"
    again = run(tmp_path, "build", "//...")
    assert again.stdout.splitlines()[-1].startswith("OK: 1 action (0 executed, 1 cached, 0 failed)")


def test_the_config_lists_every_setting_commented_out_with_its_default(tmp_path: Path) -> None:
    from posbuild.workspace.config import TABLES, default_budget

    assert run(tmp_path, "init").returncode == 0
    text = (tmp_path / "posbuild.toml").read_text()
    assert tomllib.loads(text) == {}  # all of it commented out: the defaults hold
    uncommented = "\n".join(
        re.sub(r"^# (?=\[|\w+ = )", "", line) for line in text.splitlines())
    table = tomllib.loads(uncommented)
    for section, keys in TABLES.items():
        if section not in ("roles", "vars"):  # their keys are the user's to name
            assert sorted(table[section]) == sorted(keys), section
    assert table["build"] == {"jobs": 0, "build_file_names": ["BUILD"], "sandbox_base": "",
                              "server": True, "server_idle": 10800,
                              "default_visibility": "public"}
    assert table["vars"] == {"MODE": "fast"}  # a sample value
    assert table["resources"] == {"cpu": default_budget().cpu, "mem_mb": default_budget().mem_mb,
                                  "io": 2}
    assert table["roles"] == {"release": {"build": ["//..."], "upload": False}}
    documented = tomllib.loads(DOCS.read_text().split("```toml")[1].split("```")[0])
    for section, keys in documented.items():  # every setting docs/configuration.md shows
        if section != "vars":
            assert set(keys) <= set(table[section]), section
    # and the uncommented file (less the sample role, which POSBUILD_ROLE would have to name)
    # is a valid configuration that builds the same
    without_role = re.sub(r"\[roles\.release\].*?\n\n", "", uncommented, flags=re.S)
    (tmp_path / "posbuild.toml").write_text(without_role)
    built = run(tmp_path, "//...")
    assert built.returncode == 0, built.stderr


def test_gitignore_gets_each_missing_line_once(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/\n/posbuild-out")  # no final newline
    assert run(tmp_path, "init").returncode == 0
    assert (tmp_path / ".gitignore").read_text() == "node_modules/\n/posbuild-out\n.posbuild/\n"


def test_init_refuses_to_overwrite_and_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello/BUILD").write_text("# mine\n")
    (tmp_path / ".gitignore").write_text("x\n")
    before = listing(tmp_path)
    result = run(tmp_path, "init")
    assert result.returncode == 2
    assert result.stderr == (f"posbuild: init: hello/BUILD already exists in {tmp_path}; nothing "
                             "was written (posbuild init never overwrites a file)\n")
    assert listing(tmp_path) == before
    assert run(tmp_path / "hello", "init").returncode == 0  # elsewhere it may
    again = run(tmp_path / "hello", "init")
    assert again.returncode == 2
    assert "posbuild.toml, hello/BUILD, hello/name.txt already exist" in again.stderr


def test_a_file_where_a_folder_goes_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("a file\n")
    result = run(tmp_path, "init")
    assert result.returncode == 2
    assert result.stderr.startswith("posbuild: init: hello already exists in ")
    assert listing(tmp_path) == {"hello": b"a file\n"}


def test_bare_posbuild_prints_the_help(ws: Workspace) -> None:
    for folder in (ws.root, ws.root.parent):  # in a workspace or not
        result = run(folder)
        shown = result.stderr if result.returncode == 2 else result.stdout  # as click does
        assert result.returncode in (0, 2) and result.stdout + result.stderr == shown
        assert shown.startswith("Usage: posbuild [OPTIONS] COMMAND [ARGS]...\n")
        assert "\nCommands:\n" in shown and "  init " in shown
