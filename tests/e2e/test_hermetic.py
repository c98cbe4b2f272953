"""Hermeticity end to end: what an action can see and write, and what posbuild keeps of it.

An action runs in a sandbox folder that holds only its declared inputs at their workspace-relative
paths, with a scrubbed environment. Probes that must escape the sandbox (to tell the test that an
action started, or how often it ran) use absolute paths under the test's tmp folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import bwrap_problem, counts, executed_labels


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _env_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# ---- only declared inputs are visible ---------------------------------------------------------

def test_undeclared_workspace_file_is_not_visible(ws):
    ws.write({
        "pkg/in.txt": "declared\n",
        "pkg/other.txt": "not declared\n",
        "pkg/BUILD": """
            genrule(
                name = "probe", srcs = ["in.txt"], outs = ["probe.txt"],
                cmd = "if test -e pkg/other.txt; then echo visible; else echo hidden; fi > $@; cat pkg/in.txt >> $@",
            )
        """,  # noqa: E501
    })
    ws.ok("//pkg:probe")
    assert ws.out("pkg/probe.txt") == "hidden\ndeclared\n"


def test_package_folder_in_the_sandbox_holds_only_declared_inputs(ws):
    ws.write({
        "pkg/in.txt": "x\n",
        "pkg/other.txt": "y\n",
        "pkg/sub/deep.txt": "z\n",
        "pkg/BUILD": """
            genrule(name = "listing", srcs = ["in.txt"], outs = ["ls.txt"], cmd = "ls -A pkg > $@")
        """,
    })
    ws.ok("//pkg:listing")
    assert ws.out("pkg/ls.txt").split() == ["in.txt"]


def test_sandbox_root_holds_only_input_packages_and_the_output_folder(ws):
    ws.write({
        "pkg/in.txt": "x\n",
        "unrelated/BUILD": "",
        "unrelated/secret.txt": "s\n",
        "pkg/BUILD": """
            genrule(name = "root", srcs = ["in.txt"], outs = ["root.txt"], cmd = "ls -A > $@")
        """,
    })
    ws.ok("//pkg:root")
    assert sorted(ws.out("pkg/root.txt").split()) == ["pkg", "posbuild-out"]


def test_declared_input_from_another_action_is_at_its_output_path(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "first", outs = ["first.txt"], cmd = "echo one > $@")
            genrule(name = "unused", outs = ["unused.txt"], cmd = "echo two > $@")
            genrule(name = "second", srcs = [":first"], outs = ["second.txt"],
                    cmd = "L=$$(ls -A posbuild-out/pkg); echo $$L > $@; cat posbuild-out/pkg/first.txt >> $@")
        """,  # noqa: E501
    })
    ws.ok("//...")
    # the sandbox holds the declared input; `unused` (built in the same build) is not there
    assert ws.out("pkg/second.txt") == "first.txt\none\n"


# ---- the environment is scrubbed --------------------------------------------------------------

def test_caller_environment_does_not_leak_into_the_action(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "env", outs = ["env.txt"], cmd = "env > $@")
        """,
    })
    result = ws.build("//pkg:env", env={
        "SECRET_X": "1", "LANG": "fr_FR.UTF-8", "TZ": "Europe/Paris", "TMPDIR": "/var/tmp",
        "PYTHONPATH": "/caller/path",
    })
    assert result.returncode == 0, result.stderr
    env = _env_of(ws.out("pkg/env.txt"))
    assert "SECRET_X" not in env
    assert "PYTHONPATH" not in env
    assert env["LANG"] == "C.UTF-8"
    assert env["TZ"] == "UTC"
    assert env["PATH"]
    assert "/usr/bin" in env["PATH"].split(":")
    assert env["TMPDIR"] != "/var/tmp"


def test_home_and_tmpdir_are_private_writable_folders_inside_the_sandbox(ws, tmp_path):
    ws.write({
        "pkg/BUILD": """
            genrule(
                name = "dirs", outs = ["dirs.txt"],
                cmd = "echo HOME=$$HOME > $@; echo TMPDIR=$$TMPDIR >> $@; echo CWD=$$(pwd -P) >> $@;" +
                      " echo h > $$HOME/probe && echo t > $$TMPDIR/probe && echo WRITABLE=yes >> $@",
            )
        """,  # noqa: E501
    })
    user_home = os.environ.get("HOME", "/root")
    result = ws.build("//pkg:dirs",
                      env={"HOME": str(tmp_path / "userhome"), "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    env = _env_of(ws.out("pkg/dirs.txt"))
    assert env.get("WRITABLE") == "yes", env
    home, tmpdir, cwd = Path(env["HOME"]), Path(env["TMPDIR"]), Path(env["CWD"])
    sandbox = cwd.parent  # the action's private folder around its working directory
    for folder in (home, tmpdir):
        assert folder.is_absolute()
        assert folder not in (Path(user_home), tmp_path / "userhome", tmp_path, Path("/tmp"))
        assert not folder.is_relative_to(tmp_path / "userhome")
        assert folder.resolve().is_relative_to(sandbox), (
            f"{folder} is outside the sandbox {sandbox}")
    # the probes the action wrote there did not end up anywhere the user can see (posbuild
    # itself may keep its compiled sandbox launcher in the user's ~/.cache)
    assert not list((tmp_path / "userhome").rglob("probe"))
    assert not (tmp_path / "probe").exists()


def test_declared_env_is_visible_to_the_action(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "env", outs = ["env.txt"], env = {"A": "1", "GREETING": "hello world"},
                    cmd = "echo A=$$A > $@; echo GREETING=$$GREETING >> $@")
        """,
    })
    ws.ok("//pkg:env")
    assert ws.out("pkg/env.txt") == "A=1\nGREETING=hello world\n"


def test_declared_env_value_wins_over_the_callers(ws):
    """A variable the action declares gets its declared value, not the caller's."""
    ws.write({
        "pkg/BUILD": """
            genrule(name = "env", outs = ["env.txt"], env = {"A": "declared"}, cmd = "echo $$A > $@")
        """,  # noqa: E501
    })
    result = ws.build("//pkg:env", env={"A": "from-caller"})
    assert result.returncode == 0, result.stderr
    assert ws.out("pkg/env.txt") == "declared\n"


# ---- what is collected ------------------------------------------------------------------------

def test_undeclared_files_the_action_writes_are_not_collected(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(
                name = "messy", outs = ["out.txt"],
                cmd = "echo out > $@; echo extra > posbuild-out/pkg/extra.txt; echo stray > stray.txt;" +
                      " mkdir -p pkg && echo src > pkg/new_source.txt",
            )
        """,  # noqa: E501
    })
    ws.ok("//pkg:messy")
    assert ws.out("pkg/out.txt") == "out\n"
    assert _files_under(ws.root / "posbuild-out") == {"pkg/out.txt"}
    assert not (ws.root / "stray.txt").exists()
    assert not (ws.root / "pkg/new_source.txt").exists()


def test_missing_declared_output_fails_the_action_and_names_it(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "half", outs = ["x", "y"], cmd = "echo y > posbuild-out/pkg/y")
        """,
    })
    result = ws.build("//pkg:half")
    assert result.returncode == 1
    assert "//pkg:half" in result.stderr
    assert "declared output 'posbuild-out/pkg/x' was not created" in result.stderr
    assert counts(result)["failed"] == 1
    # a failed action commits nothing, not even the output it did create
    assert not (ws.root / "posbuild-out/pkg/y").exists()
    assert not (ws.root / "posbuild-out/pkg/x").exists()


def test_failed_command_is_not_cached(ws, tmp_path):
    runs = tmp_path / "runs.log"
    ws.write({
        "pkg/BUILD": f"""
            genrule(name = "bad", outs = ["bad.txt"], cmd = "echo run >> {runs}; echo partial > $@; exit 1")
        """,  # noqa: E501
    })
    first = ws.build("//pkg:bad")
    second = ws.build("//pkg:bad")
    assert first.returncode == 1 and second.returncode == 1
    assert counts(second) == {"executed": 0, "cached": 0, "failed": 1}
    assert runs.read_text() == "run\nrun\n"
    assert not (ws.root / "posbuild-out/pkg/bad.txt").exists()


def test_failed_command_is_retried_once_the_cause_is_fixed(ws, tmp_path):
    flag = tmp_path / "allow"
    ws.write({
        "pkg/BUILD": f"""
            genrule(name = "flaky", outs = ["f.txt"], cmd = "test -e {flag} && echo ok > $@")
        """,
    })
    assert ws.build("//pkg:flaky").returncode == 1
    flag.write_text("")
    result = ws.ok("//pkg:flaky")
    assert executed_labels(result) == ["//pkg:flaky"]
    assert ws.out("pkg/f.txt") == "ok\n"


def test_source_modified_while_the_action_runs_fails_and_caches_nothing(ws, tmp_path):
    started = tmp_path / "started"
    ws.write({
        "pkg/src.txt": "before\n",
        "pkg/BUILD": f"""
            genrule(name = "slow", srcs = ["src.txt"], outs = ["slow.txt"],
                    cmd = "touch {started}; sleep 1.5; cat $< > $@")
            genrule(name = "after", srcs = [":slow"], outs = ["after.txt"], cmd = "cat $< > $@")
        """,
    })
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(result=ws.build("//...")))
    thread.start()
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "the action never started"
        time.sleep(0.01)
    time.sleep(0.2)
    (ws.root / "pkg/src.txt").write_text("after!\n")
    thread.join(timeout=60)
    result = box["result"]
    assert result.returncode == 1, result.stdout + result.stderr
    assert "//pkg:slow" in result.stderr
    assert "input 'pkg/src.txt' changed while the action ran" in result.stderr
    assert not (ws.root / "posbuild-out/pkg/slow.txt").exists()
    assert not (ws.root / "posbuild-out/pkg/after.txt").exists()
    # nothing was cached: the next build runs both actions on the new content
    started.unlink()
    again = ws.ok("//...")
    assert executed_labels(again) == ["//pkg:after", "//pkg:slow"]
    assert ws.out("pkg/after.txt") == "after!\n"


def test_source_modified_and_restored_while_the_action_runs_is_not_trusted(ws, tmp_path):
    """Same bytes in the end, but they changed during the run: the result is not kept."""
    started = tmp_path / "started"
    ws.write({
        "pkg/src.txt": "same\n",
        "pkg/BUILD": f"""
            genrule(name = "slow", srcs = ["src.txt"], outs = ["slow.txt"],
                    cmd = "touch {started}; sleep 1.5; cat $< > $@")
        """,
    })
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(result=ws.build("//...")))
    thread.start()
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "the action never started"
        time.sleep(0.01)
    time.sleep(0.2)
    (ws.root / "pkg/src.txt").write_text("ZZZZ\n")
    time.sleep(0.2)
    (ws.root / "pkg/src.txt").write_text("same\n")
    thread.join(timeout=60)
    result = box["result"]
    assert result.returncode == 1
    assert "changed while the action ran" in result.stderr
    assert not (ws.root / "posbuild-out/pkg/slow.txt").exists()


# ---- atomic outputs ---------------------------------------------------------------------------

def test_no_temp_files_are_left_in_posbuild_out(ws):
    big = "line of a larger output\n" * 20000  # ~480 KB: above the store's inline limit
    ws.write({
        "pkg/big.txt": big,
        "pkg/BUILD": """
            genrule(name = "small", outs = ["small.txt"], cmd = "echo small > $@")
            genrule(name = "large", srcs = ["big.txt"], outs = ["large.txt"], cmd = "cat $< $< > $@")
            genrule(name = "two", srcs = [":small"], outs = ["a.txt", "b.txt"],
                    cmd = "cp $< posbuild-out/pkg/a.txt; cp $< posbuild-out/pkg/b.txt")
        """,  # noqa: E501
    })
    expected = {"pkg/small.txt", "pkg/large.txt", "pkg/a.txt", "pkg/b.txt"}
    ws.ok("//...")
    assert _files_under(ws.root / "posbuild-out") == expected
    # after a restore from the store, too
    ws.run("clean")
    ws.ok("//...")
    assert _files_under(ws.root / "posbuild-out") == expected
    assert ws.out("pkg/large.txt") == big + big


# ---- plain commands skip the shell ------------------------------------------------------------

def test_a_plain_command_runs_without_the_shell_and_anything_else_under_it(ws):
    """`pkg/parent.sh > $@` is exec'd by posbuild itself; with a `;` the shell runs it (folder
    sandbox)."""
    (ws.root / "posbuild.toml").write_text('[sandbox]\nmode = "folder"\n')
    ws.write({
        "pkg/parent.sh": "#!/bin/sh\nreadlink /proc/$PPID/exe\n",
        "pkg/BUILD": """
            genrule(name = "plain", srcs = ["parent.sh"], outs = ["plain.txt"], cmd = "pkg/parent.sh > $@")
            genrule(name = "shell", srcs = ["parent.sh"], outs = ["shell.txt"], cmd = "pkg/parent.sh > $@; true")
            genrule(name = "missing", outs = ["m.txt"], cmd = "no-such-tool > $@")
        """,  # noqa: E501
    })
    (ws.root / "pkg/parent.sh").chmod(0o755)
    ws.ok("//pkg:plain", "//pkg:shell")
    assert ws.out("pkg/plain.txt") == os.path.realpath(sys.executable) + "\n"
    assert ws.out("pkg/shell.txt") not in ("", ws.out("pkg/plain.txt"))
    missing = ws.build("//pkg:missing")  # not found on PATH: the shell says so, in its words
    assert missing.returncode == 1 \
            and "no-such-tool: command not found" in missing.stdout + missing.stderr


# ---- commands run under bash in strict mode ---------------------------------------------------

SANDBOXES = [pytest.param("folder"), pytest.param("namespace", marks=pytest.mark.skipif(
    bwrap_problem() is not None, reason=f"namespace sandbox unavailable: {bwrap_problem()}"))]


def _strict_workspace(ws, mode: str, cmd: str) -> None:
    (ws.root / "posbuild.toml").write_text(f'[sandbox]\nmode = "{mode}"\n')
    rule = f"genrule(name = 't', srcs = ['a.txt'], outs = ['t.txt'], cmd = {cmd!r})\n"
    ws.write({"pkg/a.txt": "a\n", "pkg/BUILD": rule})


@pytest.mark.parametrize("mode", SANDBOXES)
def test_a_pipe_whose_first_stage_fails_fails_the_action_and_commits_nothing(ws, mode):
    """`samtools view missing.bam | gzip > $@` is no empty success: pipefail fails the action."""
    _strict_workspace(ws, mode, "cat pkg/missing.bam | gzip > $@")
    result = ws.build("//pkg:t")
    assert result.returncode == 1, result.stdout + result.stderr
    assert counts(result) == {"executed": 0, "cached": 0, "failed": 1}
    assert "pkg/missing.bam: No such file or directory" in result.stdout + result.stderr
    assert not (ws.root / "posbuild-out/pkg/t.txt").exists()
    again = ws.build("//pkg:t")  # nothing was kept: it runs, and fails, again
    assert again.returncode == 1 and counts(again)["failed"] == 1


@pytest.mark.parametrize("mode", SANDBOXES)
def test_an_unset_variable_fails_the_action(ws, mode):
    _strict_workspace(ws, mode, "echo $$UNDECLARED_NAME > $@")
    result = ws.build("//pkg:t")
    assert result.returncode == 1 and counts(result)["failed"] == 1
    assert "UNDECLARED_NAME: unbound variable" in result.stdout + result.stderr
    assert not (ws.root / "posbuild-out/pkg/t.txt").exists()


@pytest.mark.parametrize("mode", SANDBOXES)
def test_a_failed_command_ends_the_script(ws, mode):
    _strict_workspace(ws, mode, "false; echo late > $@")
    result = ws.build("//pkg:t")
    assert result.returncode == 1 and counts(result)["failed"] == 1


@pytest.mark.parametrize("mode", SANDBOXES)
@pytest.mark.parametrize("cmd, expected", [
    ("cat pkg/missing.bam | gzip > $@ || true; echo tolerated > $@", "tolerated\n"),
    ("set +o pipefail; cat pkg/missing.bam | wc -c > $@", "0\n"),
    ("echo \"[$${OPTIONAL_NAME:-}]\" > $@", "[]\n"),
    ("{ grep absent pkg/a.txt || [ $$? -eq 1 ]; } > $@", ""),
    ("echo $$- | grep -o u > $@", "u\n"),  # $$ is still a literal $: $- holds the strict options
])
def test_what_a_command_writes_to_tolerate_a_failing_stage(ws, mode, cmd, expected):
    _strict_workspace(ws, mode, cmd)
    ws.ok("//pkg:t")
    assert ws.out("pkg/t.txt") == expected


def test_results_computed_under_the_former_shell_are_not_served(ws):
    """Keys and the graph cache carry the action schema, which the strict shell raised: a result
    (and a graph) made under the former schema is not reused."""
    _strict_workspace(ws, "folder", "cat $< > $@")
    former = (
        "import posbuild.core.action as a; a.ACTION_SCHEMA = 1\n"  # before anything imports it
        "from posbuild.cli import main; main()")
    old = subprocess.run([sys.executable, "-c", former, "build", "//pkg:t"], cwd=ws.root,
                         capture_output=True, text=True)
    assert old.returncode == 0, old.stdout + old.stderr
    assert counts(ws.ok("//pkg:t")) == {"executed": 1, "cached": 0, "failed": 0}
    assert counts(ws.ok("//pkg:t")) == {"executed": 0, "cached": 1, "failed": 0}
