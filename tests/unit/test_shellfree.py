"""shellfree: the strict bash that runs commands, which commands may skip it, in what order bash
runs a line of them, where their program is found, what bash adds to its environment, and how a
signal is reported as bash would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from posbuild.exec.shellfree import (Direct, Script, execable, find_program, parse, shell_argv,
                                     shell_free, shell_status, shell_variables)


def _one(command: str) -> Direct | None:
    """The one simple command of `command`, or None when it is not one."""
    script = parse(command)
    return script.lists[0][0] if script is not None and script.single else None


@pytest.mark.parametrize("command, argv, stdout", [
    ("cat a b > out", ("cat", "a", "b"), "out"),
    ("cat a b >out", ("cat", "a", "b"), "out"),
    ("  cat\tp/a.txt  >  posbuild-out/p/t.txt  ", ("cat", "p/a.txt"), "posbuild-out/p/t.txt"),
    ("tool --level=3 -o out.bin in.csv", ("tool", "--level=3", "-o", "out.bin", "in.csv"), None),
    ("./bin/gen x,y:z@1%+ > o", ("./bin/gen", "x,y:z@1%+"), "o"),
    ("/usr/bin/sort data", ("/usr/bin/sort", "data"), None),
])
def test_plain_words_and_one_trailing_redirect_run_without_the_shell(command, argv, stdout) -> None:
    assert parse(command) == Script(((Direct(argv, stdout),),))


@pytest.mark.parametrize("command, lists", [
    ("cat a && cat b", ((Direct(("cat", "a"), None), Direct(("cat", "b"), None)),)),
    ("cat a; cat b;", ((Direct(("cat", "a"), None),), (Direct(("cat", "b"), None),))),
    ("sleep 1&&cat a > o ;cat b >> log", ((Direct(("sleep", "1"), None), Direct(("cat", "a"), "o")),
                                          (Direct(("cat", "b"), "log", append=True),))),
    ("date >> stamps", ((Direct(("date",), "stamps", append=True),),)),
    ("bwa index x 2> /dev/null && samtools faidx x",
     ((Direct(("bwa", "index", "x"), None, stderr="/dev/null", stderr_first=True),
       Direct(("samtools", "faidx", "x"), None)),)),
    ("tool 2>>log >out", ((Direct(("tool",), "out", stderr="log", stderr_append=True,
                                  stderr_first=True),),)),
    ("tool > /dev/null 2> e", ((Direct(("tool",), "/dev/null", stderr="e"),),)),
    ("tool 2 > out", ((Direct(("tool", "2"), "out"),),)),  # a word 2, then a redirect
])
def test_lines_of_commands_joined_by_and_and_semicolons_run_without_the_shell(command,
                                                                               lists) -> None:
    assert parse(command) == Script(lists)


@pytest.mark.parametrize("command", [
    "", "   ", "cat a | wc", "cat a &", "cat 'a b'", 'cat "a"',
    "cat a;; cat b", "; cat a", "cat a &&", "cat a && && cat b", "cat a || cat b", "cat a & cat b",
    "cat a; echo b", "cat a && x=1", "cat a; ;", "cat a >>> out", "cat a >> /tmp/log",
    "cat a\\ b",
    "cat $HOME", "cat `x`", "cat $(x)", "cat *.txt", "cat a?", "cat [ab]", "cat ~/a",
    "cat a # note",
    "cat a\ncat b", "cat a 2>&1", "cat a 2> e 2> f", "cat a > o >> p", "cat a 2> /tmp/log",
    "cat a2>e", "cat a 12> e", "cat a > /dev/zero/x", "cat a > /dev/nullx", "cat a>out",
    "cat a > out > other",
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
    assert parse(f"cat a && {word} x") is None  # in any command of a line


def test_a_word_with_an_equals_sign_is_an_argument_after_the_first() -> None:
    assert _one("env A=1 tool") == Direct(("env", "A=1", "tool"), None)


# every line of up to three `&&` lists of up to two commands, each ending with 0 or 1
_SHAPES = [[[a], [b, c]] for a in (0, 1) for b in (0, 1) for c in (0, 1)] + \
    [[[a, b], [c]] for a in (0, 1) for b in (0, 1) for c in (0, 1)] + \
    [[[a, b]] for a in (0, 1) for b in (0, 1)] + [[[a], [b], [c]] for a in (0, 1)
                                                  for b in (0, 1) for c in (0, 1)]


@pytest.mark.parametrize("shape", _SHAPES, ids=str)
def test_a_line_runs_its_commands_in_the_order_and_with_the_status_of_bash_e(tmp_path,
                                                                            shape) -> None:
    """`-e` ends the line at a failure, except of a command followed by `&&`, which skips the
    rest of its list only: the marks bash's run leaves and its status are Script.after's."""
    _executable(tmp_path / "mark", '#!/bin/sh\necho "$1" >> marks\nexit "$2"\n')
    names = iter("ABCDEFG")
    lists = [[(next(names), status) for status in joined] for joined in shape]
    command = "; ".join(" && ".join(f"./mark {name} {status}" for name, status in joined)
                        for joined in lists)
    bash = subprocess.run(shell_argv(command), cwd=tmp_path, capture_output=True)
    ran = (tmp_path / "marks").read_text().split()
    script = parse(command)
    assert script is not None
    step: tuple[int, int] | None = (0, 0)
    simulated, status = [], 0
    while step is not None:
        name, status = lists[step[0]][step[1]]
        simulated.append(name)
        step = script.after(step, status)
    assert (simulated, status) == (ran, bash.returncode)


def test_bash_execs_only_the_last_command_of_a_line_when_it_stands_alone() -> None:
    def execs(command: str) -> list[bool]:
        script = parse(command)
        assert script is not None
        return [script.execs((i, j)) for i, joined in enumerate(script.lists)
                for j in range(len(joined))]
    assert execs("cat a") == [True]
    assert execs("cat a > o") == [False]
    assert execs("cat a; cat b") == [False, True]
    assert execs("cat a; cat b;") == [False, True]
    assert execs("cat a && cat b") == [False, True]
    assert execs("cat a && cat b && cat c") == [False, False, True]
    assert execs("cat a && cat b; cat c") == [False, False, True]
    assert execs("cat a; cat b && cat c") == [False, False, False]
    assert execs("cat a; cat b >> o") == [False, False]
    assert execs("cat a; cat b 2> e") == [False, False]


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


@pytest.mark.parametrize("command, shown", [
    ("tool", "tool"), ("tool a > out", "tool a > out; cat out"),
    ("/bin/true; tool", "/bin/true; tool"), ("/bin/true && tool", "/bin/true && tool"),
    ("tool >> out; /bin/true", "tool >> out; /bin/true; cat out"),
    ("/bin/true && /bin/true && tool", "/bin/true && /bin/true && tool"),
    ("/bin/true; /bin/true && tool", "/bin/true; /bin/true && tool"),
    ("/bin/true && /bin/true; tool", "/bin/true && /bin/true; tool"),
    ("/bin/true; /bin/true; tool;", "/bin/true; /bin/true; tool;"),
    ("tool && /bin/true", "tool && /bin/true"),
])
def test_the_variables_bash_adds_are_those_bash_gives_the_program(tmp_path, command,
                                                                  shown) -> None:
    _executable(tmp_path / "bin/tool", "#!/bin/sh\necho \"SHLVL=$SHLVL\"\necho \"_=$_\"\n")
    env = {"PATH": "/usr/bin:/bin:bin"}
    script = parse(command)
    assert script is not None and shell_free(env)
    step = next((i, j) for i, joined in enumerate(script.lists) for j, d in enumerate(joined)
                if d.argv[0] == "tool")
    program = find_program("tool", env["PATH"], str(tmp_path))
    assert program is not None
    added = shell_variables(program, not script.execs(step))
    bash = subprocess.run(shell_argv(shown), env=env, cwd=tmp_path, capture_output=True,
                          text=True)
    assert bash.returncode == 0, bash.stderr
    assert bash.stdout == f"SHLVL={added['SHLVL']}\n_={added['_']}\n"


@pytest.mark.parametrize("name", ["BASH_ENV", "SHELLOPTS", "BASHOPTS", "SHLVL", "BASH_FUNC_cat%%"])
def test_a_variable_that_changes_how_bash_starts_leaves_the_command_to_bash(name) -> None:
    assert not shell_free({"PATH": "/bin", name: "x"})
    assert shell_free({"PATH": "/bin", "OTHER": "x"})


def test_a_program_is_execable_as_it_is_only_as_an_elf_file_or_with_an_interpreter_line(
        tmp_path) -> None:
    assert execable("/bin/cat")
    assert execable(str(_executable(tmp_path / "script", "#!/bin/sh\ntrue\n")))
    assert not execable(str(_executable(tmp_path / "plain", "true\n")))
    assert not execable(str(tmp_path / "absent"))


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
    assert shell_status(status, Direct(("tool",), "out"), 1, True) == (3, b"")
    killed = str(_executable(tmp_path / "killed", f"#!/bin/sh\nkill -{name} $$\n"))
    status, pid = _status_of([killed])
    alone = Direct((killed,), None)  # bash execs a lone command: its status is bash's own
    assert shell_status(status, alone, pid, False) == (-getattr(signal, f"SIG{name}"), b"")
    shell = subprocess.run(shell_argv(killed), capture_output=True)
    assert (shell.returncode, shell.stderr) == (-getattr(signal, f"SIG{name}"), b"")
    redirected = Direct((killed,), "out")  # with a redirect bash forks and reports the signal
    shell = subprocess.run(shell_argv(f"{killed} >out"), capture_output=True, cwd=tmp_path)
    code, note = shell_status(status, redirected, pid, True)
    assert code == shell.returncode == 128 + getattr(signal, f"SIG{name}")
    assert note == re.sub(rb"(?<=line 1: ) *[0-9]+ ", f"{pid:5d} ".encode(), shell.stderr, count=1)
