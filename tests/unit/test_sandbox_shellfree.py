"""The local spawner runs plain commands without bash (shellfree.py), and the command cannot tell:
outputs, captures, environment, exit codes and error messages are those of the same command
under bash."""

from __future__ import annotations

import os
import re
import signal
import stat
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from posbuild.core.action import Action
from posbuild.exec.sandbox import LocalSpawner
from posbuild.exec.spawner import Perturbation, SpawnResult

OUT = "posbuild-out/pkg/out.txt"


def _action(command: str, inputs: tuple[str, ...] = ("pkg/a.txt", "pkg/b.txt"), timeout: float = 0,
            env: tuple[tuple[str, str], ...] = ()) -> Action:
    return Action(label="//pkg:probe", kind="genrule", command=command, inputs=inputs, tools=(),
                  outputs=(OUT,),
                  env=env, versions=(), timeout=timeout, tags=(), def_hash=b"\0" * 32, deps=(),
                  sources=inputs, resources=(1, 0, 0))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg/a.txt").write_text("a\n")
    (root / "pkg/b.txt").write_text("b\n")
    return root


def _script(root: Path, name: str, text: str) -> str:
    path = root / "pkg" / name
    path.write_text(text)
    path.chmod(0o755)
    return f"pkg/{name}"


def _run(root: Path, action: Action, shell_free: bool = True,
         perturbation: Perturbation | None = None,
         ) -> tuple[SpawnResult, bytes | None, int | None]:
    """Run in a fresh sandbox base: (result, the output's bytes or None, the output's mode or
    None)."""
    # the same paths both ways
    sandboxes = LocalSpawner(root, root.parent / "sandboxes", shell_free=shell_free)
    result = sandboxes.run(action, perturbation=perturbation)
    out = result.exec_root / OUT
    content = out.read_bytes() if out.exists() else None
    mode = stat.S_IMODE(out.stat().st_mode) if out.exists() else None
    sandboxes.remove(result)
    return result, content, mode


def _same_both_ways(root: Path, action: Action,
                    perturbation: Perturbation | None = None) -> SpawnResult:
    direct, direct_out, direct_mode = _run(root, action, True, perturbation)
    shell, shell_out, shell_mode = _run(root, action, False, perturbation)
    assert (direct.exit_code, direct.stdout, _pid_free(direct.stderr), direct.missing, direct_out,
            direct_mode) == \
        (shell.exit_code, shell.stdout, _pid_free(shell.stderr), shell.missing, shell_out,
         shell_mode)
    return direct


def _pid_free(stderr: bytes) -> bytes:
    """bash names a killed program by its process id, which differs from run to run."""
    return re.sub(rb"^(/bin/bash: line 1: ) *[0-9]+ ", rb"\1<pid> ", stderr)


def test_a_plain_command_runs_without_a_shell_between_posbuild_and_the_program(workspace) -> None:
    probe = _script(workspace, "parent", "#!/bin/sh\nreadlink /proc/$PPID/exe\n")
    action = _action(f"{probe} > {OUT}", inputs=("pkg/a.txt", probe))
    _, direct, _ = _run(workspace, action)
    _, shell, _ = _run(workspace, action, shell_free=False)
    assert direct == os.path.realpath(sys.executable).encode() + b"\n"
    assert shell is not None and shell != direct  # the shell's own executable


@pytest.mark.parametrize("command", [
    f"cat pkg/a.txt pkg/b.txt > {OUT}",
    f"cat pkg/a.txt pkg/b.txt >{OUT}",
    "cat pkg/b.txt pkg/a.txt",  # no redirect: stdout is captured
    f"cp pkg/a.txt {OUT}",
    f"env > {OUT}",  # compared as sets below
    "env",  # bash execs it: SHLVL=0
])
def test_outputs_captures_and_modes_are_those_of_the_shell(workspace, command) -> None:
    action = _action(command, env=(("DECLARED", "yes"),))
    direct, direct_out, direct_mode = _run(workspace, action)
    shell, shell_out, shell_mode = _run(workspace, action, shell_free=False)
    if command.startswith("env"):  # bash passes variables on in an order of its own
        direct_env, shell_env = (direct_out, shell_out) if ">" in command \
            else (direct.stdout, shell.stdout)
        assert direct_env is not None and shell_env is not None
        assert sorted(direct_env.splitlines()) == sorted(shell_env.splitlines())
        assert b"DECLARED=yes" in direct_env.splitlines() \
                and b"_=/usr/bin/env" in direct_env.splitlines()
        direct_out, direct = shell_out, replace(direct, stdout=shell.stdout)
    assert (direct.exit_code, direct.stdout, direct.stderr, direct_out, direct_mode) == \
        (shell.exit_code, shell.stdout, shell.stderr, shell_out, shell_mode)
    assert direct.exit_code == 0 and (direct_out or direct.stdout)


@pytest.mark.parametrize("command, code, message", [
    # the shell's message, not posbuild's
    (f"no-such-program pkg/a.txt > {OUT}", 127, b"not found"),
    ("cat pkg/a.txt > missing/folder/out", 1, b"missing/folder/out: No such file or directory"),
    (f"cat pkg/absent.txt > {OUT}", 1, b"No such file"),
    (f"echo -e x > {OUT}", 0, b""),  # a builtin: bash's, never a program of the same name
    ("set -o", 0, b""),  # a builtin: bash's options, strict mode on
])
def test_failures_and_builtins_read_exactly_as_under_the_shell(workspace, command, code,
                                                               message) -> None:
    result = _same_both_ways(workspace, _action(command))
    assert result.exit_code == code and message in result.stderr


def test_a_command_that_falls_back_to_the_shell_gets_only_the_shells_variables(workspace) -> None:
    """bash runs a script that cannot be exec'd; the SHLVL it sees is bash's, not one added for a
    direct run."""
    script = _script(workspace, "level", "echo \"SHLVL=$SHLVL\"\n")
    _same_both_ways(workspace, _action(f"{script} > {OUT}", inputs=(script,)))
    _, content, _ = _run(workspace, _action(f"{script} > {OUT}", inputs=(script,)))
    assert content == b"SHLVL=2\n"  # bash forks (SHLVL 1) and runs the script in a fresh bash


def test_a_script_without_an_interpreter_line_is_run_by_the_shell(workspace) -> None:
    script = _script(workspace, "plain", "printf 'from %s\\n' script\n")  # exec fails with ENOEXEC
    _same_both_ways(workspace, _action(f"{script} > {OUT}", inputs=(script,)))
    _, content, _ = _run(workspace, _action(f"{script} > {OUT}", inputs=(script,)))
    assert content == b"from script\n"


@pytest.mark.parametrize("signal_name, code, message", [
    ("SEGV", 139,
     b"/bin/bash: line 1: <pid> Segmentation fault      pkg/die > posbuild-out/pkg/out.txt\n"),
    ("TERM", 143, b"Terminated\n"), ("PIPE", 141, b"")])
def test_a_program_killed_by_a_signal_is_reported_as_the_shell_reports_it(workspace, signal_name,
                                                                          code, message) -> None:
    script = _script(workspace, "die", f"#!/bin/sh\nkill -{signal_name} $$\n")
    result = _same_both_ways(workspace, _action(f"{script} > {OUT}", inputs=(script,)))
    assert (result.exit_code, _pid_free(result.stderr)) == (code, message)
    # bash execs it: the signal itself
    alone = _same_both_ways(workspace, _action(script, inputs=(script,)))
    assert (alone.exit_code, alone.stderr) == (-getattr(signal, f"SIG{signal_name}"), b"")


def test_a_timeout_and_a_cancel_kill_the_program_as_they_killed_the_shell(workspace) -> None:
    timed = _same_both_ways(workspace, _action("sleep 30", timeout=0.3))
    assert timed.timed_out and timed.exit_code == -9 and timed.stderr == b""
    sandboxes = LocalSpawner(workspace, workspace.parent / "cancelled")
    running = sandboxes.start(_action("sleep 30"))
    threading.Timer(0.3, sandboxes.cancel).start()
    began = time.monotonic()
    result = sandboxes.wait(running)
    assert time.monotonic() - began < 10 and result.exit_code == -9 and result.stderr == b""
    sandboxes.remove(result)


@pytest.mark.parametrize("umask", [0o077, 0o002])
def test_a_perturbed_umask_gives_the_redirect_target_the_mode_the_shell_gives_it(
    workspace, umask) -> None:
    perturbation = Perturbation(umask=umask)
    _same_both_ways(workspace, _action(f"cat pkg/a.txt > {OUT}"), perturbation)
    _, _, mode = _run(workspace, _action(f"cat pkg/a.txt > {OUT}"), perturbation=perturbation)
    assert mode == 0o666 & ~umask


@pytest.mark.parametrize("command", [
    f"cat pkg/a.txt > {OUT} && cat pkg/b.txt >> {OUT}",
    f"cat pkg/a.txt; cat pkg/b.txt > {OUT}; cat {OUT}",
    f"sleep 0 && cat pkg/a.txt pkg/b.txt > {OUT}",
    f"cat pkg/a.txt >> {OUT}; cat pkg/b.txt >> {OUT};",
    f"cat pkg/absent.txt && cat pkg/a.txt; cat pkg/b.txt > {OUT}",  # `&&` spares the line
    f"cat pkg/a.txt > {OUT} && cat pkg/absent.txt; cat pkg/b.txt",  # -e ends it
    f"cat pkg/a.txt; cat pkg/absent.txt > {OUT}; cat pkg/b.txt",
    f"cat pkg/a.txt && cat pkg/b.txt > missing/folder/out; cat pkg/b.txt > {OUT}",
    f"cat pkg/a.txt; no-such-program; cat pkg/b.txt > {OUT}",  # the shell runs it: not found
    f"env > {OUT}; cat pkg/a.txt",
    f"cat pkg/absent.txt 2> {OUT}; cat pkg/a.txt",  # what it says goes to the file
    f"cat pkg/a.txt pkg/absent.txt > {OUT} 2>> {OUT}.err && cat pkg/b.txt",
    f"cat pkg/absent.txt 2> /dev/null && cat pkg/a.txt; cat pkg/b.txt > {OUT}",
    f"cat pkg/a.txt > /dev/null && cat pkg/b.txt > {OUT}",
    f"cat pkg/a.txt && cat pkg/b.txt 2> missing/err; cat pkg/b.txt > {OUT}",
    f"env 2> {OUT}.err > {OUT}",
    "cat pkg/a.txt 2> missing/err",  # the shell says it (nothing ran yet)
])
def test_a_line_of_commands_runs_as_under_the_shell(workspace, command) -> None:
    """Outputs, captures (in order), stderr, exit codes, and each program's environment."""
    direct, direct_out, direct_mode = _run(workspace, _action(command))
    shell, shell_out, shell_mode = _run(workspace, _action(command), shell_free=False)
    if command.startswith("env"):  # bash passes variables on in an order of its own
        assert direct_out is not None and shell_out is not None
        assert sorted(direct_out.splitlines()) == sorted(shell_out.splitlines())
        assert b"SHLVL=1" in direct_out.splitlines()
        direct_out = shell_out
    if command.endswith("missing/err"):
        assert direct.stderr.startswith(b"/bin/bash: line 1: missing/err: ")
    assert (direct.exit_code, direct.stdout, direct.stderr, direct_out, direct_mode) == \
        (shell.exit_code, shell.stdout, shell.stderr, shell_out, shell_mode)


def test_no_shell_runs_between_posbuild_and_the_programs_of_a_line(workspace) -> None:
    probe = _script(workspace, "parent", "#!/bin/sh\nreadlink /proc/$PPID/exe\n")
    for command in (f"{probe} > {OUT} && {probe} >> {OUT}",
                    f"{probe} > {OUT} 2> /dev/null; {probe} 2>> err >> {OUT}"):
        _, direct, _ = _run(workspace, _action(command, inputs=("pkg/a.txt", probe)))
        assert direct == (os.path.realpath(sys.executable).encode() + b"\n") * 2, command


def test_a_later_program_that_cannot_be_execd_as_it_is_leaves_the_line_to_the_shell(
        workspace) -> None:
    """Once the first command has run, posbuild could no longer hand the line to bash: every
    program must be exec'able when it starts."""
    script = _script(workspace, "plain", "printf 'from %s\\n' script\n")  # no `#!`
    action = _action(f"cat pkg/a.txt > {OUT} && {script} >> {OUT}", inputs=("pkg/a.txt", script))
    result = _same_both_ways(workspace, action)
    _, content, _ = _run(workspace, action)
    assert result.exit_code == 0 and content == b"a\nfrom script\n"


@pytest.mark.parametrize("where", ["first", "last", "alone at the end", "with stderr"])
def test_a_program_of_a_line_killed_by_a_signal_is_reported_as_the_shell_reports_it(workspace,
                                                                                   where) -> None:
    script = _script(workspace, "die", "#!/bin/sh\nkill -SEGV $$\n")
    command = {"first": f"{script} && cat pkg/a.txt",
               "last": f"cat pkg/a.txt && {script} >> {OUT}",
               "alone at the end": f"cat pkg/a.txt; {script}",
               "with stderr": f"cat pkg/a.txt; {script} 2> err >{OUT}"}[where]
    result = _same_both_ways(workspace, _action(command, inputs=("pkg/a.txt", script)))
    if where == "alone at the end":  # bash execs it: the signal itself
        assert (result.exit_code, result.stderr) == (-signal.SIGSEGV, b"")
    else:
        assert result.exit_code == 139 and b"Segmentation fault" in result.stderr


def test_a_timeout_covers_the_whole_line_and_a_cancel_ends_it(workspace) -> None:
    began = time.monotonic()
    timed = _same_both_ways(workspace, _action("sleep 0.2 && sleep 0.2 && sleep 30; sleep 30",
                                               timeout=0.8))
    assert timed.timed_out and timed.exit_code == -9 and time.monotonic() - began < 10
    sandboxes = LocalSpawner(workspace, workspace.parent / "cancelled")
    running = sandboxes.start(_action(f"cat pkg/a.txt > {OUT}; sleep 30; cat pkg/b.txt > {OUT}"))
    threading.Timer(0.3, sandboxes.cancel).start()
    began = time.monotonic()
    result = sandboxes.wait(running)
    assert time.monotonic() - began < 10 and result.exit_code != 0
    assert (result.exec_root / OUT).read_bytes() == b"a\n"  # the last command never ran
    sandboxes.remove(result)


def test_what_a_command_of_a_line_leaves_running_lives_until_the_line_ends(workspace) -> None:
    """Under bash the whole line is one process group, killed when it ends: a background process
    a program left may serve the commands after it, and is gone afterwards."""
    starter = _script(workspace, "starter", "#!/bin/sh\nsleep 30 &\necho $! > pkg/pid\n")
    checker = _script(workspace, "checker",
                      "#!/bin/sh\nkill -0 $(cat pkg/pid) && echo alive $(cat pkg/pid)\n")
    action = _action(f"{starter} && {checker} > {OUT}", inputs=(starter, checker))
    result, content, _ = _run(workspace, action)
    assert result.exit_code == 0 and content is not None and content.startswith(b"alive ")
    pid = int(content.split()[1])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() \
            and b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes():
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists() or \
        b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_a_line_cancelled_before_it_started_runs_none_of_its_commands(workspace) -> None:
    sandboxes = LocalSpawner(workspace, workspace.parent / "cancelled-first")
    sandboxes.cancel()
    result = sandboxes.run(_action(f"cat pkg/a.txt > {OUT} && cat pkg/b.txt >> {OUT}"))
    out = result.exec_root / OUT
    assert result.exit_code == -signal.SIGTERM
    assert not out.exists() or out.read_bytes() == b""  # neither command ran
    sandboxes.remove(result)


@pytest.mark.parametrize("when", ["after a command ended", "as the next command starts"])
def test_a_cancel_between_two_commands_of_a_line_stops_it_and_counts_it_once(workspace,
                                                                            monkeypatch,
                                                                            when) -> None:
    """Under bash a cancel kills the shell, wherever it is in the line: here no command may be
    running at that instant, and the line must still end as stopped, counted once."""
    sandboxes = LocalSpawner(workspace, workspace.parent / "between")
    if when == "after a command ended":
        reap = sandboxes._reap

        def reaped(*args, **kwargs):  # type: ignore[no-untyped-def]
            ended = reap(*args, **kwargs)
            sandboxes.cancel()
            return ended
        monkeypatch.setattr(sandboxes, "_reap", reaped)
    else:
        launch = sandboxes._launch

        def launched(*args, **kwargs):  # type: ignore[no-untyped-def]
            if kwargs.get("line") is not None:
                sandboxes.cancel()
            return launch(*args, **kwargs)
        monkeypatch.setattr(sandboxes, "_launch", launched)
    result = sandboxes.run(_action(f"cat pkg/a.txt > {OUT} && cat pkg/b.txt >> {OUT}"))
    assert result.exit_code < 0 and sandboxes.stopped == 1
    assert (result.exec_root / OUT).read_bytes() == b"a\n"  # the second command never ran
    sandboxes.remove(result)
