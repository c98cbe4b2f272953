"""The fork server (posbuild/exec/forkserver.py, `launcher serve`): what a command it starts gets
(its argv, environment, folder, umask, processors, session, descriptors), that posbuild waits for
it as for its own child, the Landlock rules it applies, and what happens when the server is gone.
Real processes throughout, through the compiled launcher."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Iterator

import pytest

from posbuild.exec import landlock
from posbuild.exec.forkserver import ForkServer

NEEDS_LANDLOCK = pytest.mark.skipif(landlock.abi() < landlock.MIN_ABI,
                                    reason="needs Landlock ABI 6 (kernel 6.12)")


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> str:
    try:
        return landlock.compiled(tmp_path_factory.mktemp("cache"))
    except OSError as error:
        pytest.skip(f"the launcher cannot be compiled here: {error}")


@pytest.fixture
def server(launcher: str) -> Iterator[ForkServer]:
    started = ForkServer(launcher)
    yield started
    started.close()


def _capture() -> tuple[int, int]:
    return os.memfd_create("out"), os.memfd_create("err")


def _text(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 1 << 16).decode()
    os.close(fd)
    return data


def test_a_command_gets_its_argv_environment_folder_and_umask_and_is_our_child(
        server: ForkServer, tmp_path: Path) -> None:
    out, err = _capture()
    script = 'printf "%s|%s|%s|" "$0" "$PWD" "$(umask)"; env | sort; echo oops >&2; exit 3'
    answer = server.spawn("/bin/sh", ["named", "-c", script], {"ONLY": "this", "PWD": "x"},
                          str(tmp_path), out, err, umask=0o027)
    pid, status, usage = os.wait4(answer.pid, 0)  # ours to wait for, with its usage
    assert pid == answer.pid and os.waitstatus_to_exitcode(status) == 3
    assert usage.ru_maxrss > 0
    said = _text(out).split("|")
    assert said[0] == "sh" or said[0] == "named"  # argv[0] as given, or as the shell names it
    assert os.path.realpath(said[1]) == os.path.realpath(tmp_path) and said[2] == "0027"
    # exactly the environment given (the shell adds its own few: PWD, SHLVL, _)
    variables = {line.split("=", 1)[0] for line in said[3].splitlines()}
    assert "ONLY" in variables and "PATH" not in variables and "HOME" not in variables
    assert _text(err) == "oops\n"


def test_a_command_runs_in_a_session_of_its_own_on_the_processors_given(
        server: ForkServer, tmp_path: Path) -> None:
    processors = sorted(os.sched_getaffinity(0))
    out, err = _capture()
    answer = server.spawn("/bin/sh", ["sh", "-c", "sleep 5"], {}, str(tmp_path), out, err,
                          processors=processors[-1:])
    try:
        assert os.getsid(answer.pid) == answer.pid and os.getpgid(answer.pid) == answer.pid
        assert os.sched_getaffinity(answer.pid) == {processors[-1]}
    finally:
        os.killpg(answer.pid, signal.SIGKILL)  # its group, as posbuild kills it
        _, status, _ = os.wait4(answer.pid, 0)
    assert os.WTERMSIG(status) == signal.SIGKILL
    os.close(out), os.close(err)


def test_stdin_is_empty_and_signals_posbuild_ignores_are_the_commands_default_pipe(
        server: ForkServer, tmp_path: Path) -> None:
    out, err = _capture()
    # a closed pipe kills the writer with SIGPIPE, as in a shell: `yes | head -1` ends
    answer = server.spawn("/bin/sh", ["sh", "-c", "cat; yes | head -1"], {"PATH": "/usr/bin:/bin"},
                          str(tmp_path), out, err)
    _, status, _ = os.wait4(answer.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and _text(out) == "y\n" and _text(err) == ""


def test_a_program_without_a_shebang_runs_under_bash_and_a_missing_one_exits_127(
        server: ForkServer, tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("echo from the script\n")
    tool.chmod(0o755)
    out, err = _capture()
    answer = server.spawn(str(tool), ["./tool"], {}, str(tmp_path), out, err,
                          script="echo from the fallback")
    _, status, _ = os.wait4(answer.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and _text(out) == "from the fallback\n"
    out, err = _capture()
    answer = server.spawn(str(tmp_path / "missing"), ["missing"], {}, str(tmp_path), out, err,
                          script="missing")
    _, status, _ = os.wait4(answer.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 127
    assert "missing: No such file or directory" in _text(err)
    os.close(out)


def test_a_request_larger_than_a_message_still_starts_its_command(server: ForkServer,
                                                                    tmp_path: Path) -> None:
    """A command of hundreds of KiB (write_file's content, a long generated command line) is
    more than one socket message holds: it goes in a file."""
    words = ["a" * 100_000, "b" * 100_000, "c" * 100_000]
    out, err = _capture()
    answer = server.spawn("/bin/sh", ["sh", "-c", 'echo $# ${#1} ${#3} ${#BIG}', "sh", *words],
                          {"BIG": "d" * 120_000}, str(tmp_path), out, err)
    _, status, _ = os.wait4(answer.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, _text(err)
    assert _text(out) == "3 100000 100000 120000\n"


def test_a_server_killed_from_outside_is_an_error_not_a_hang(launcher: str,
                                                             tmp_path: Path) -> None:
    server = ForkServer(launcher)
    os.kill(server._process.pid, signal.SIGKILL)
    server._process.wait()
    out, err = _capture()
    with pytest.raises(OSError):
        server.spawn("/bin/true", ["true"], {}, str(tmp_path), out, err).pid
    server.close()
    os.close(out), os.close(err)


def test_closing_ends_the_server(launcher: str) -> None:
    server = ForkServer(launcher)
    process = server._process
    server.close()
    assert process.returncode == 0
    server.close()  # twice is harmless


@NEEDS_LANDLOCK
def test_under_landlock_a_command_writes_only_its_sandbox_and_reads_nothing_hidden(
        launcher: str, tmp_path: Path) -> None:
    hidden = tmp_path / "workspace"
    hidden.mkdir()
    (hidden / "secret.txt").write_text("hidden\n")
    sandbox = tmp_path / "sandbox"
    (sandbox / "exec").mkdir(parents=True)
    shared = landlock.landlocked(launcher, (str(hidden),), (sys.prefix, sys.base_prefix))
    server = ForkServer(launcher, landlock.HOLDER.pid(launcher))
    try:
        for network in (False, True):
            rules = shared.shared(network)
            out, err = _capture()
            script = (f"cat {hidden}/secret.txt || echo denied; echo made > made.txt; "
                      f"echo x > {hidden}/new.txt || echo refused; echo $$; "
                      "tail -n +3 /proc/net/dev | wc -l")
            answer = server.spawn("/bin/sh", ["sh", "-c", script], {"PATH": "/usr/bin:/bin"},
                                  str(sandbox / "exec"), out, err,
                                  rules=rules.writing(str(sandbox)))
            _, status, _ = os.wait4(answer.pid, 0)
            said = _text(out).split()
            assert os.waitstatus_to_exitcode(status) == 0
            assert said[:2] == ["denied", "refused"] and "hidden" not in said
            assert int(said[2]) < 100  # in the build's PID namespace
            # without the network tag, in the build's network namespace: a loopback alone
            host = len(Path("/proc/net/dev").read_text().splitlines()) - 2
            assert int(said[3]) == (host if network else 1)
            assert (sandbox / "exec/made.txt").read_text() == "made\n"
            assert not (hidden / "new.txt").exists()
            os.close(err)
    finally:
        server.close()
        landlock.HOLDER.close()
