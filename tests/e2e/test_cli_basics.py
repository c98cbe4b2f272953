"""The command line itself: help, version, progress output on pipes and terminals, -q, clean, -j."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time

import pytest

from conftest import POSBUILD, counts, executed_labels

from posbuild import __version__

CHAIN = {
    "p/in.txt": "b\na\n",
    "p/BUILD": """
        genrule(name = "first", srcs = ["in.txt"], outs = ["first.txt"], cmd = "sort $< > $@")
        genrule(name = "second", srcs = [":first"], outs = ["second.txt"], cmd = "wc -l < $< > $@")
    """,
}
SUMMARY = re.compile(
    r"^(OK|FAILED): (\d+) actions? \((\d+) executed, (\d+) cached, (\d+) failed\) in \d+\.\d\d s$")


# --- help and version ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, usage", [
    ([], "Usage: posbuild [OPTIONS] COMMAND [ARGS]..."),
    (["build"], "Usage: posbuild build [OPTIONS] [PATTERNS]..."),
    (["clean"], "Usage: posbuild clean [OPTIONS]"),
])
def test_help(ws, args, usage):
    result = ws.run(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage + "\n")
    assert "--help" in result.stdout
    assert result.stderr == ""


def test_top_level_help_lists_the_commands(ws):
    result = ws.run("-h")
    assert result.returncode == 0
    assert re.search(r"^\s+build\s+Build targets", result.stdout, re.MULTILINE)
    assert re.search(r"^\s+clean\s+Remove outputs", result.stdout, re.MULTILINE)


def test_build_help_documents_its_options(ws):
    result = ws.run("build", "--help")
    for option in ("-j, --jobs", "-k, --keep-going", "-q, --quiet"):
        assert option in result.stdout


def test_help_works_outside_a_workspace(tmp_path):
    proc = subprocess.run([*POSBUILD, "build", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: posbuild build")


def test_version(ws):
    result = ws.run("--version")
    assert result.returncode == 0
    assert result.stdout == f"posbuild, version {__version__}\n"


# --- piped output -------------------------------------------------------------------------------


def test_piped_output_is_plain_lines_and_a_summary(ws):
    ws.write(CHAIN)
    result = ws.ok("//p:second")
    lines = result.stdout.splitlines()
    assert lines[:2] == ["[1/2] //p:first", "[2/2] //p:second"]
    assert len(lines) == 3
    match = SUMMARY.match(lines[2])
    assert match and match.groups() == ("OK", "2", "2", "0", "0")
    assert "\r" not in result.stdout
    assert result.stderr == ""


def test_piped_output_lists_only_executed_actions(ws):
    ws.write(CHAIN)
    ws.ok("//p:second")
    ws.write({"p/BUILD": CHAIN["p/BUILD"].replace("wc -l < $< > $@", "wc -c < $< > $@")})
    result = ws.ok("//p:second")
    assert result.stdout.splitlines()[:-1] == ["[2/2] //p:second"]
    assert counts(result) == {"executed": 1, "cached": 1, "failed": 0}
    assert ws.out("p/second.txt").strip() == "4"


def test_noop_build_prints_only_the_summary(ws):
    ws.write(CHAIN)
    ws.ok("//...")
    result = ws.ok("//...")
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    match = SUMMARY.match(lines[0])
    assert match and match.groups() == ("OK", "2", "0", "2", "0")


def test_failure_is_reported_with_the_action_stderr(ws):
    ws.write(
        {"p/BUILD": 'genrule(name = "bad", outs = ["bad.txt"], cmd = "echo broken-input >&2; exit '
                    '7")'})
    result = ws.build("//p:bad")
    assert result.returncode == 1
    match = SUMMARY.match(result.stdout.splitlines()[-1])
    assert match and match.groups() == ("FAILED", "1", "0", "0", "1")
    lines = result.stderr.splitlines()
    assert lines[0].startswith("FAILED //p:bad: ")
    assert "  broken-input" in lines
    assert lines[-1] == "posbuild: 1 action failed: //p:bad"


# --- -q -----------------------------------------------------------------------------------------


def test_quiet_prints_nothing_on_success(ws):
    ws.write(CHAIN)
    result = ws.ok("-q", "//...")
    assert result.stdout == ""
    assert result.stderr == ""
    assert ws.out("p/second.txt").strip() == "2"


def test_quiet_still_prints_failures(ws):
    ws.write({"p/BUILD": """
        genrule(name = "good", outs = ["good.txt"], cmd = "echo ok > $@")
        genrule(name = "bad", outs = ["bad.txt"], cmd = "echo quiet-but-visible >&2; exit 1")
    """})
    result = ws.build("-q", "-k", "//...")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "FAILED //p:bad: " in result.stderr
    assert "  quiet-but-visible" in result.stderr.splitlines()
    assert result.stderr.splitlines()[-1] == "posbuild: 1 action failed: //p:bad"
    assert ws.out("p/good.txt") == "ok\n"


# --- a terminal ---------------------------------------------------------------------------------


def run_in_pty(args, cwd, timeout=60.0):
    """Run posbuild with stdout on a pseudo-terminal; returns (exit code, terminal bytes,
    stderr)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([*POSBUILD, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=subprocess.PIPE)
    finally:
        os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[1]
    finally:
        os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace"), stderr.decode()


def test_terminal_gets_a_live_status_line_and_summary(ws):
    ws.write(CHAIN)
    code, screen, stderr = run_in_pty(["build", "//..."], ws.root)
    assert code == 0, stderr
    assert re.search(r"\r\[\d/2\] //p:(first|second)", screen)
    assert "[1/2] //p:first\n" not in screen.replace("\r\n", "\n")
    last = screen.rstrip("\r\n").rsplit("\r", 1)[-1]
    match = SUMMARY.match(last)
    assert match and match.groups() == ("OK", "2", "2", "0", "0"), repr(screen)
    assert screen.endswith(last + "\r\n")
    assert ws.out("p/second.txt").strip() == "2"


def test_terminal_quiet_shows_no_status_line(ws):
    ws.write(CHAIN)
    code, screen, stderr = run_in_pty(["build", "-q", "//..."], ws.root)
    assert code == 0, stderr
    assert screen == ""


# --- clean --------------------------------------------------------------------------------------


def test_clean_removes_outputs_and_rebuild_restores_them_from_cache(ws):
    ws.write(CHAIN)
    ws.ok("//...")
    result = ws.run("clean")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"removed {ws.root / 'posbuild-out'}\n"
    assert not (ws.root / "posbuild-out").exists()
    assert (ws.root / ".posbuild").is_dir()
    rebuilt = ws.ok("//...")
    assert counts(rebuilt) == {"executed": 0, "cached": 2, "failed": 0}
    assert executed_labels(rebuilt) == []
    assert ws.out("p/first.txt") == "a\nb\n"
    assert ws.out("p/second.txt").strip() == "2"
    assert (ws.root / "posbuild-out/p/first.txt").stat().st_mode & 0o222 == 0


def test_clean_all_removes_the_store_and_everything_runs_again(ws):
    ws.write(CHAIN)
    ws.ok("//...")
    result = ws.run("clean", "--all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"removed {ws.root / 'posbuild-out'}",
                                          f"removed {ws.root / '.posbuild'}"]
    assert not (ws.root / "posbuild-out").exists()
    # the mark, and the lock others wait on
    assert sorted(os.listdir(ws.root / ".posbuild")) == ["CACHEDIR.TAG", "lock"]
    assert (ws.root / "p/in.txt").read_text() == "b\na\n"
    rebuilt = ws.ok("//...")
    assert counts(rebuilt) == {"executed": 2, "cached": 0, "failed": 0}
    assert ws.out("p/first.txt") == "a\nb\n"


def test_clean_with_nothing_to_remove(ws):
    result = ws.run("clean")
    assert result.returncode == 0
    assert result.stdout == "nothing to remove\n"


def test_clean_from_a_package_folder_cleans_the_workspace(ws):
    ws.write(CHAIN)
    ws.ok("//...")
    result = ws.run("clean", cwd=ws.root / "p")
    assert result.returncode == 0, result.stderr
    assert not (ws.root / "posbuild-out").exists()


# --- -j -----------------------------------------------------------------------------------------


def test_jobs_zero_is_a_usage_error(ws):
    ws.write(CHAIN)
    result = ws.build("-j", "0", "//...")
    assert result.returncode == 2
    assert "-j" in result.stderr
    assert result.stdout == ""
    assert not (ws.root / "posbuild-out").exists()


def test_jobs_not_a_number_is_a_usage_error(ws):
    result = ws.build("-j", "many")
    assert result.returncode == 2
    assert "-j" in result.stderr


def test_jobs_one_builds_everything(ws):
    ws.write({"p/BUILD": "\n".join(
        f'genrule(name = "g{i}", outs = ["g{i}.txt"], cmd = "echo {i} > $@")' for i in range(4)
    )})
    result = ws.ok("-j", "1", "//...")
    assert counts(result) == {"executed": 4, "cached": 0, "failed": 0}
    assert [ws.out(f"p/g{i}.txt") for i in range(4)] == ["0\n", "1\n", "2\n", "3\n"]
