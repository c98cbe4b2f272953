"""shellfree: which commands may skip `/bin/sh -c`, where their program is found, and how a
signal is reported as the shell would."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from posbuild.shellfree import Direct, find_program, parse, shell_status


@pytest.mark.parametrize("command, argv, stdout", [
    ("cat a b > out", ("cat", "a", "b"), "out"),
    ("cat a b >out", ("cat", "a", "b"), "out"),
    ("  cat\tp/a.txt  >  posbuild-out/p/t.txt  ", ("cat", "p/a.txt"), "posbuild-out/p/t.txt"),
    ("tool --level=3 -o out.bin in.csv", ("tool", "--level=3", "-o", "out.bin", "in.csv"), None),
    ("./bin/gen x,y:z@1%+ > o", ("./bin/gen", "x,y:z@1%+"), "o"),
    ("/usr/bin/sort data", ("/usr/bin/sort", "data"), None),
])
def test_plain_words_and_one_trailing_redirect_run_without_the_shell(command, argv, stdout) -> None:
    assert parse(command) == Direct(argv, stdout)


@pytest.mark.parametrize("command", [
    "", "   ", "cat a; cat b", "cat a && cat b", "cat a | wc", "cat a &", "cat 'a b'", 'cat "a"', "cat a\\ b",
    "cat $HOME", "cat `x`", "cat $(x)", "cat *.txt", "cat a?", "cat [ab]", "cat ~/a", "cat a # note",
    "cat a\ncat b", "cat a >> out", "cat a 2> err", "cat a>out", "cat a > out > other", "cat a > out b",
    "> out cat a", "cat < in", "cat a >& 2", "cat a >| out", "FOO=1 cat a", "x=1", "cat a > ", "cät a",
    "(cat a)", "{ cat a; }", "cat a > $@", "cat a > /tmp/fifo", "cat a > ../../fifo", "cat a > x/../../y",
])
def test_anything_with_shell_syntax_runs_under_the_shell(command) -> None:
    assert parse(command) is None


@pytest.mark.parametrize("word", ["echo", "printf", "test", "true", "false", "cd", "exec", "export", "set", ".",
                                  ":", "eval", "read", "kill", "pwd", "umask", "ulimit", "type", "command",
                                  "if", "for", "while", "case", "!", "source", "let", "local", "wait", "trap"])
def test_builtins_and_reserved_words_run_under_the_shell(word) -> None:
    """dash's `echo -e x` prints "-e x"; /usr/bin/echo would print "x": a builtin is never bypassed."""
    assert parse(f"{word} x > out") is None


def test_a_word_with_an_equals_sign_is_an_argument_after_the_first() -> None:
    assert parse("env A=1 tool") == Direct(("env", "A=1", "tool"), None)


def _executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_a_program_is_found_on_path_in_order_as_an_executable_regular_file(tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "tool").mkdir(parents=True)  # a folder named like the program does not count
    (second / "data").parent.mkdir(parents=True, exist_ok=True)
    (second / "data").write_text("not executable")
    found = _executable(second / "tool")
    _executable(tmp_path / "third/data")
    path = f"{tmp_path}/missing:{first}:{second}:{tmp_path}/third"
    assert find_program("tool", path, "/") == str(found)
    assert find_program("data", path, "/") == f"{tmp_path}/third/data"
    assert find_program("absent", path, "/") is None


def test_relative_names_and_path_entries_are_taken_from_the_working_folder(tmp_path) -> None:
    _executable(tmp_path / "bin/gen")
    _executable(tmp_path / "here")
    assert find_program("bin/gen", "/nowhere", str(tmp_path)) == f"{tmp_path}/bin/gen"
    assert find_program("./here", "/nowhere", str(tmp_path)) == f"{tmp_path}/./here"
    assert find_program("gen", "/nowhere:bin", str(tmp_path)) == f"{tmp_path}/bin/gen"
    assert find_program("here", "/nowhere:", str(tmp_path)) is not None  # an empty entry is the working folder
    assert find_program("here", "/nowhere", str(tmp_path)) is None
    assert find_program("/bin/sh", "", "/") == "/bin/sh"


def _status_of(argv: list[str]) -> int:
    process = subprocess.Popen(argv)
    _, status = os.waitpid(process.pid, 0)
    process.returncode = 0
    return status


def test_exit_codes_pass_through_and_signals_are_reported_as_the_shell_reports_them(tmp_path) -> None:
    assert shell_status(_status_of(["/bin/sh", "-c", "exit 3"])) == (3, b"")
    killed = _executable(tmp_path / "killed", "#!/bin/sh\nkill -TERM $$\n")
    assert shell_status(_status_of([str(killed)])) == (128 + signal.SIGTERM, b"Terminated\n")
    # the shell's own report for the same death, as a reference
    shell = subprocess.run(["/bin/sh", "-c", str(killed)], capture_output=True)
    assert (shell.returncode, shell.stderr) == shell_status(_status_of([str(killed)]))
    piped = _executable(tmp_path / "piped", "#!/bin/sh\nkill -PIPE $$\n")
    assert shell_status(_status_of([str(piped)])) == (128 + signal.SIGPIPE, b"")
