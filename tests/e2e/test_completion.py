"""Shell completion end to end: the real CLI asked as bash and zsh ask it (`_POSBUILD_COMPLETE`,
COMP_WORDS, COMP_CWORD, and bash's COMP_LINE/COMP_POINT), for commands, options and labels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import POSBUILD, Workspace

APP_BUILD = """\
genrule(name = "report", srcs = ["//data:clean"], outs = ["report.txt"], cmd = "cat $< > $@")
genrule(name = "render", outs = ["r.txt"], cmd = "echo > $@")
"""
DATA_BUILD = """\
genrule(name = "clean", outs = ["clean.csv"], cmd = "echo > $@")
[genrule(name = "part%d" % i, outs = ["p%d.txt" % i], cmd = "echo > $@") for i in range(2)]
"""


@pytest.fixture
def comp_ws(ws: Workspace) -> Workspace:
    ws.write({"app/BUILD": APP_BUILD, "data/BUILD": DATA_BUILD,
              "data/raw/sub/BUILD": 'genrule(name = "deep", outs = ["d"], cmd = "echo > $@")\n'})
    return ws


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "POSBUILD_NO_SERVER"}  # as a user's shell
    return {**env, **extra}


def bash(ws: Workspace, line: str, cwd: Path | None = None) -> list[str]:
    """What posbuild answers bash for the command line `line`, the cursor at its end. Bash
    splits words at `:` (COMP_WORDBREAKS), and so do COMP_WORDS here."""
    words = line.replace(":", " : ").split() + ([""] if line.endswith((" ", ":")) else [])
    if line.endswith(":"):
        words.pop()  # the cursor is on the ':' word itself
    proc = subprocess.run(POSBUILD, cwd=cwd or ws.root, capture_output=True, text=True,
                          timeout=60, env=environment(
                              _POSBUILD_COMPLETE="bash_complete", COMP_WORDS=" ".join(words),
                              COMP_CWORD=str(len(words) - 1), COMP_LINE=line,
                              COMP_POINT=str(len(line))))
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    rows = [row for row in proc.stdout.splitlines() if row]  # none: one empty line
    assert all(row.startswith("plain,") for row in rows), proc.stdout
    return [row[len("plain,"):] for row in rows]


def test_commands_and_options(comp_ws: Workspace) -> None:
    assert bash(comp_ws, "posbuild bu") == ["build"]
    every = bash(comp_ws, "posbuild ")
    assert {"build", "init", "query", "watch", "clean"} <= set(every) and every == sorted(every)
    assert bash(comp_ws, "posbuild build --keep-g") == ["--keep-going"]
    assert "--output" in bash(comp_ws, "posbuild query --o")


def test_labels_level_by_level_with_bash_splitting_at_colons(comp_ws: Workspace) -> None:
    assert bash(comp_ws, "posbuild build //") == ["//...", "//app:", "//data/", "//data:"]
    assert bash(comp_ws, "posbuild build //a") == ["//app:"]
    assert bash(comp_ws, "posbuild build //data/") == ["//data/raw/"]
    assert bash(comp_ws, "posbuild build //data/raw/") == ["//data/raw/sub:"]
    # bash replaces only what follows the ':', so that is what comes back
    assert bash(comp_ws, "posbuild build //app:") == ["all", "render", "report"]
    assert bash(comp_ws, "posbuild build //app:re") == ["render", "report"]
    assert bash(comp_ws, "posbuild build //app:report //data:cl") == ["clean"]
    assert bash(comp_ws, "posbuild build //nowhere:") == []


def test_every_command_that_takes_targets_completes_them(comp_ws: Workspace) -> None:
    for command in ("build", "watch", "verify", "lock", "log", "explain", "cache export f.tar"):
        assert bash(comp_ws, f"posbuild {command} //app:rep") == ["report"], command
    assert bash(comp_ws, "posbuild //app:rep") == ["report"]  # `posbuild PATTERN` builds
    assert "--dry-run" in bash(comp_ws, "posbuild //app:report --d")


def test_relative_labels_in_a_package_folder(comp_ws: Workspace) -> None:
    data = comp_ws.root / "data"
    assert bash(comp_ws, "posbuild build :cl", cwd=data) == ["clean"]
    assert bash(comp_ws, "posbuild build r", cwd=data) == ["raw/"]


def test_the_graph_cache_names_targets_no_literal_names(comp_ws: Workspace) -> None:
    """Without a current cache the BUILD files are read as text (part0 and part1 are made in a
    loop: no literal); once a query has cached the graph, every target is known."""
    assert bash(comp_ws, "posbuild build //data:") == ["all", "clean"]
    assert comp_ws.run("query", "//...").returncode == 0
    assert bash(comp_ws, "posbuild build //data:") == ["all", "clean", "part0", "part1"]
    (comp_ws.root / "data/BUILD").write_text(DATA_BUILD + 'genrule(name = "new", outs = ["n"], '
                                             'cmd = "echo > $@")\n')
    assert bash(comp_ws, "posbuild build //data:n") == ["new"]  # a stale cache is not used


def test_a_broken_workspace_completes_what_it_can_and_never_fails(comp_ws: Workspace) -> None:
    (comp_ws.root / "app/BUILD").write_text('genrule(name = "half", outs = [\n')
    (comp_ws.root / "posbuild.toml").write_text("[build]\njobs = 'many'\n")
    assert bash(comp_ws, "posbuild build //app:") == ["all", "half"]
    outside = comp_ws.root.parent / "elsewhere"
    outside.mkdir()
    assert bash(comp_ws, "posbuild build //", cwd=outside) == []
    assert "build" in bash(comp_ws, "posbuild b", cwd=outside)


def test_zsh_gets_whole_labels(comp_ws: Workspace) -> None:
    proc = subprocess.run(POSBUILD, cwd=comp_ws.root, capture_output=True, text=True, timeout=60,
                          env=environment(_POSBUILD_COMPLETE="zsh_complete",
                                          COMP_WORDS="posbuild build //app:rep", COMP_CWORD="2"))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == ["plain", "//app:report", "_"]
    source = subprocess.run(POSBUILD, capture_output=True, text=True, timeout=60,
                            env=environment(_POSBUILD_COMPLETE="zsh_source"))
    assert "compdef _posbuild_completion posbuild" in source.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_bash_script_completes_a_label_in_bash(comp_ws: Workspace, tmp_path: Path) -> None:
    """The script `_POSBUILD_COMPLETE=bash_source posbuild` prints, sourced in a real bash and
    called as bash calls it for `posbuild build //app:rep<TAB>`."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "posbuild").write_text(f"#!/bin/sh\nexec {sys.executable} -m posbuild \"$@\"\n")
    (tools / "posbuild").chmod(0o755)
    env = environment(PATH=f"{tools}:{os.environ['PATH']}")
    script = subprocess.run(["posbuild"], capture_output=True, text=True, timeout=60,
                            env={**env, "_POSBUILD_COMPLETE": "bash_source"}).stdout
    assert "complete -o nosort -F _posbuild_completion posbuild" in script
    probe = script + """
COMP_LINE='posbuild build //app:rep'; COMP_POINT=${#COMP_LINE}
COMP_WORDS=(posbuild build //app : rep); COMP_CWORD=4
_posbuild_completion posbuild 2>/dev/null
echo "${COMPREPLY[@]}"
"""
    done = subprocess.run(["bash", "-c", probe], cwd=comp_ws.root, capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.stdout.strip() == "report", done.stderr
