"""spawn.c through spawn.py: a command started pinned, in its own session, with exactly the
descriptors, folder, umask and environment asked, and the calling thread left where it was."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from posbuild.exec import spawn
from posbuild.exec.spawn import Spawn

SPAWN = spawn.load()
pytestmark = pytest.mark.skipif(SPAWN is None, reason="no C compiler here")
ALL = sorted(os.sched_getaffinity(0))


def _run(script: str, tmp_path: Path, processors: tuple[int, ...] = (), umask: int = -1,
         env: dict[str, str] | None = None) -> tuple[str, int]:
    """Run `sh -c script` in tmp_path; (what it printed, its pid)."""
    assert isinstance(SPAWN, Spawn)
    read, write = os.pipe()
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        child = SPAWN.start("/bin/sh", ["sh", "-c", script],
                            env if env is not None else {"PATH": "/usr/bin:/bin"},
                            str(tmp_path), null, write, write, umask, processors)
    finally:
        os.close(write)
        os.close(null)
    output = b""
    while chunk := os.read(read, 65536):
        output += chunk
    os.close(read)
    _, status = os.waitpid(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return output.decode(), child.pid


@pytest.mark.skipif(len(ALL) < 2, reason="needs two processors")
def test_the_command_and_what_it_starts_at_once_are_pinned_the_thread_is_not(
        tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    output, _ = _run("grep Cpus_allowed_list /proc/self/status & wait; "
                     "grep Cpus_allowed_list /proc/$$/status", tmp_path, (ALL[1],))
    assert output.split() == ["Cpus_allowed_list:", str(ALL[1])] * 2
    assert os.sched_getaffinity(0) == before  # the calling thread was never confined


def test_a_session_folder_umask_and_environment_of_its_own(tmp_path: Path) -> None:
    output, pid = _run('echo "$(ps -o sid= -p $$) $$"; pwd; umask; env | sort', tmp_path,
                       umask=0o027, env={"PATH": "/usr/bin:/bin", "ONLY": "this"})
    session, own, folder, mask, *env = output.split()
    assert session == own == str(pid)
    assert (folder, mask) == (str(tmp_path), "0027")
    assert [line for line in env if not line.startswith(("PWD=", "SHLVL=", "_="))] \
        == ["ONLY=this", "PATH=/usr/bin:/bin"]


def test_only_the_three_descriptors_are_passed_on(tmp_path: Path) -> None:
    kept = os.open("/dev/null", os.O_RDONLY)  # not close-on-exec: closed all the same
    try:
        output, _ = _run("ls /proc/$$/fd", tmp_path)
    finally:
        os.close(kept)
    assert output.split() == ["0", "1", "2"]


def test_signals_python_ignores_are_default_again(tmp_path: Path) -> None:
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's own
    output, _ = _run("grep SigIgn /proc/$$/status", tmp_path)
    ignored = int(output.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


def test_what_cannot_start_raises_as_popen_does_naming_the_file(tmp_path: Path) -> None:
    assert isinstance(SPAWN, Spawn)
    script = tmp_path / "script"
    script.write_text("no interpreter line\n")  # exec'able by nobody: mode 0644
    cases = [("/no/such/program", str(tmp_path), FileNotFoundError, "/no/such/program"),
             ("/bin/true", str(tmp_path / "gone"), FileNotFoundError, str(tmp_path / "gone")),
             (str(script), str(tmp_path), PermissionError, str(script))]
    for program, cwd, kind, named in cases:
        with pytest.raises(kind) as raised:
            SPAWN.start(program, ["x"], {}, cwd, 0, 1, 2)
        assert raised.value.filename == named
    with pytest.raises(ValueError, match="embedded null byte"):
        SPAWN.start("/bin/true", ["true", "a\0b"], {}, str(tmp_path), 0, 1, 2)
