"""shellfree: the strict bash that runs commands, which commands may skip it, where their program
is found, what bash adds to its environment, and how a signal is reported as bash would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from posbuild.exec.shellfree import (Direct, find_program, parse, shell_argv, shell_status,
                                shell_variables)


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
    "", "   ", "cat a; cat b", "cat a && cat b", "cat a | wc", "cat a &", "cat 'a b'", 'cat "a"',
    "cat a\\ b",
    "cat $HOME", "cat `x`", "cat $(x)", "cat *.txt", "cat a?", "cat [ab]", "cat ~/a",
    "cat a # note",
    "cat a\ncat b", "cat a >> out", "cat a 2> err", "cat a>out", "cat a > out > other",
    "cat a > out b",
    "> out cat a", "cat < in", "cat a >& 2", "cat a >| out", "FOO=1 cat a", "x=1", "cat a > ",
    "cät a",
    "(cat a)", "{ cat a; }", "cat a > $@", "cat a > /tmp/fifo", "cat a > ../../fifo",
    "cat a > x/../../y",
])
def test_anything_with_shell_syntax_runs_under_the_shell(command) -> None:
    assert parse(command) is None


@pytest.mark.parametrize("word", ["echo", "printf", "test", "true", "false", "cd", "exec", "export",
                                  "set", ".",
                                  ":", "eval", "read", "kill", "pwd", "umask", "ulimit", "type",
                                  "command",
                                  "if", "for", "while", "case", "!", "source", "let", "local",
                                  "wait", "trap",
                                  "compopt", "shopt", "mapfile", "coproc", "select", "time",
                                  "enable"])
def test_builtins_and_reserved_words_run_under_the_shell(word) -> None:
    """bash's `echo -e x` prints "x", dash's "-e x": a builtin is never bypassed for a program."""
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


def test_relative_names_and_path_entries_are_named_as_bash_names_them(tmp_path) -> None:
    """The path is the one bash execs and puts in `_`, looked up from the working folder."""
    _executable(tmp_path / "bin/gen")
    _executable(tmp_path / "here")
    assert find_program("bin/gen", "/nowhere", str(tmp_path)) == "bin/gen"
    assert find_program("./here", "/nowhere", str(tmp_path)) == "./here"
    assert find_program("gen", "/nowhere:bin", str(tmp_path)) == "bin/gen"
    # an empty entry is the working folder
    assert find_program("here", "/nowhere:", str(tmp_path)) == "./here"
    assert find_program("here", "/nowhere", str(tmp_path)) is None
    assert find_program("/bin/sh", "", "/") == "/bin/sh"


@pytest.mark.parametrize("command", ["tool", "tool a > out"])
def test_the_variables_bash_adds_are_those_bash_gives_the_program(tmp_path, command) -> None:
    _executable(tmp_path / "bin/tool", "#!/bin/sh\necho \"SHLVL=$SHLVL\"\necho \"_=$_\"\n")
    env = {"PATH": "/usr/bin:/bin:bin"}
    direct = parse(command)
    assert direct is not None
    program = find_program("tool", env["PATH"], str(tmp_path))
    assert program is not None
    added = shell_variables(env, direct, program)
    bash = subprocess.run(shell_argv(f"{command} && cat out" if direct.stdout else command),
                          env=env, cwd=tmp_path, capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr
    assert bash.stdout == f"SHLVL={added['SHLVL']}\n_={added['_']}\n"


@pytest.mark.parametrize("name", ["BASH_ENV", "SHELLOPTS", "BASHOPTS", "SHLVL", "BASH_FUNC_cat%%"])
def test_a_variable_that_changes_how_bash_starts_leaves_the_command_to_bash(name) -> None:
    assert shell_variables({"PATH": "/bin", name: "x"}, Direct(("cat", "a"), None),
                           "/bin/cat") is None


def test_commands_run_under_bash_in_strict_mode(tmp_path) -> None:
    def run(command: str) -> int:
        return subprocess.run(shell_argv(command), cwd=tmp_path, capture_output=True).returncode
    assert run("false | cat") == 1  # pipefail
    assert run("echo $UNSET_ANYWHERE") == 1  # nounset
    assert run("false; true") == 1  # errexit
    assert run("false | cat || true") == 0
    assert run("set +o pipefail; false | cat") == 0
    assert run("echo ${UNSET_ANYWHERE:-}") == 0
    assert shell_argv("true")[0] == "/bin/bash"


def _status_of(argv: list[str]) -> tuple[int, int]:
    process = subprocess.Popen(argv)
    _, status = os.waitpid(process.pid, 0)
    process.returncode = 0
    return status, process.pid


@pytest.mark.parametrize("name", ["TERM", "PIPE", "INT", "SEGV", "HUP", "XFSZ"])
def test_exit_codes_pass_through_and_signals_are_reported_as_bash_reports_them(tmp_path,
                                                                               name) -> None:
    status, _ = _status_of(["/bin/sh", "-c", "exit 3"])
    assert shell_status(status, Direct(("tool",), "out"), 1) == (3, b"")
    killed = str(_executable(tmp_path / "killed", f"#!/bin/sh\nkill -{name} $$\n"))
    status, pid = _status_of([killed])
    alone = Direct((killed,), None)  # bash execs a lone command: its status is bash's own
    assert shell_status(status, alone, pid) == (-getattr(signal, f"SIG{name}"), b"")
    shell = subprocess.run(shell_argv(killed), capture_output=True)
    assert (shell.returncode, shell.stderr) == (-getattr(signal, f"SIG{name}"), b"")
    redirected = Direct((killed,), "out")  # with a redirect bash forks and reports the signal
    shell = subprocess.run(shell_argv(f"{killed} >out"), capture_output=True, cwd=tmp_path)
    code, note = shell_status(status, redirected, pid)
    assert code == shell.returncode == 128 + getattr(signal, f"SIG{name}")
    assert note == re.sub(rb"(?<=line 1: ) *[0-9]+ ", f"{pid:5d} ".encode(), shell.stderr, count=1)
