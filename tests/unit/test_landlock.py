"""The Landlock sandbox's pieces (posbuild/exec/landlock.py and launcher.c): the rules, the
compiled launcher and its cache, and each guarantee on real processes run through it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posbuild.exec import compiled, landlock
from posbuild.exec.landlock import Rules

NEEDS_LANDLOCK = pytest.mark.skipif(landlock.abi() < landlock.MIN_ABI,
                                    reason="needs Landlock ABI 6 (kernel 6.12)")


# ---- the rules -----------------------------------------------------------------------------------

def test_everything_but_the_hidden_paths_is_readable(tmp_path: Path) -> None:
    for name in ("ws", "tool", "other"):
        (tmp_path / "home" / name).mkdir(parents=True)
    (tmp_path / "home/.profile").write_text("")
    (tmp_path / "home/link").symlink_to(tmp_path / "home/ws")
    (tmp_path / "home/inside").symlink_to(tmp_path / "home/ws/pkg")
    granted = landlock.readable([str(tmp_path / "home/ws")])
    home = str(tmp_path / "home")
    assert sorted(p for p in granted if p.startswith(home + "/")) == [
        f"{home}/.profile", f"{home}/other", f"{home}/tool"]  # links into ws left out
    assert home not in granted and str(tmp_path) not in granted and "/" not in granted
    assert "/usr" in granted or os.path.realpath("/usr") in granted


def test_a_hidden_path_inside_another_adds_nothing(tmp_path: Path) -> None:
    (tmp_path / "a/b/c").mkdir(parents=True)
    (tmp_path / "a/x").mkdir()
    assert landlock.readable([str(tmp_path / "a"), str(tmp_path / "a/b/c")]) == \
        landlock.readable([str(tmp_path / "a")])


def test_the_command_line_of_one_action(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(landlock.HOLDER, "pid", lambda launcher: "1")
    shared = landlock.Landlocked("/l", Rules(("/usr",), ("/dev/null",), False),
                                 Rules(("/usr", "/run"), ("/dev/null",), True))
    assert landlock.command(shared, "/s/1", False, "/bin/bash", ["/bin/bash", "-c", "x"]) == [
        "/l", "-N", "1", "-r", "/usr", "-w", "/dev/null", "/s/1", "--", "/bin/bash", "/bin/bash",
        "-c", "x"]
    assert landlock.command(shared, "/s/1", True, "/usr/bin/cat", ["cat", "a"], script="cat a",
                            preload="/f.so") == [
        "/l", "-N", "1", "-t", "-r", "/usr", "/run", "-w", "/dev/null", "/s/1", "-c", "cat a",
        "-L", "/f.so", "--", "/usr/bin/cat", "cat", "a"]


def test_the_network_tag_keeps_run_and_tcp(tmp_path: Path) -> None:
    shared = landlock.landlocked("/l", (str(tmp_path),), ())
    assert not shared.shared(False).tcp and shared.shared(True).tcp
    assert "/run" not in shared.shared(False).read and "/run" in shared.shared(True).read
    assert shared.shared(False).write == shared.shared(True).write


# ---- the compiled launcher -----------------------------------------------------------------------

def test_the_launcher_is_compiled_once_and_again_when_damaged_or_missing(tmp_path: Path) -> None:
    first = Path(landlock.compiled(tmp_path))
    assert first == landlock.launcher_path(tmp_path) and os.access(first, os.X_OK)
    inode = first.stat().st_ino
    assert Path(landlock.compiled(tmp_path)).stat().st_ino == inode  # kept
    first.write_bytes(first.read_bytes()[:100])
    assert Path(landlock.compiled(tmp_path)).stat().st_size > 100  # damaged: compiled again
    first.unlink()
    assert Path(landlock.compiled(tmp_path)).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, first.name + ".sha256"]


def test_no_compiler_is_an_error_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OSError, match=r"no C compiler \(cc\) on PATH"):
        landlock.compiled(tmp_path / "cache")


def test_the_cache_follows_xdg_cache_home() -> None:
    assert compiled.cache_folder({"XDG_CACHE_HOME": "/c"}) == Path("/c/posbuild")
    assert compiled.cache_folder({}) == Path(os.path.expanduser("~/.cache/posbuild"))


# ---- each guarantee, on real processes -----------------------------------------------------------

def _run(tmp_path: Path, script: str, network: bool = False,
         hidden: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir(exist_ok=True)
    shared = landlock.landlocked(landlock.compiled(tmp_path / "cache"),
                                 (str(tmp_path), *hidden), (sys.prefix, sys.base_prefix))
    argv = landlock.command(shared, str(sandbox), network, "/bin/sh", ["/bin/sh", "-c", script])
    return subprocess.run(argv, cwd=sandbox, capture_output=True, text=True,
                          start_new_session=True)


@NEEDS_LANDLOCK
def test_a_hidden_file_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("hidden\n")
    done = _run(tmp_path, f"cat {tmp_path}/secret.txt")
    assert done.returncode != 0 and "hidden" not in done.stdout
    assert "Permission denied" in done.stderr


@NEEDS_LANDLOCK
def test_writes_land_in_the_sandbox_and_nowhere_else(tmp_path: Path) -> None:
    done = _run(tmp_path, f"echo ok > out; echo leak > {tmp_path}/leak")
    assert (tmp_path / "sandbox" / "out").read_text() == "ok\n"
    assert not (tmp_path / "leak").exists() and done.returncode != 0


@NEEDS_LANDLOCK
def test_no_capabilities_remain(tmp_path: Path) -> None:
    done = _run(tmp_path, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status")
    values = [line.split()[1] for line in done.stdout.splitlines()]
    assert len(values) == 5 and set(values) == {"0000000000000000"}


@NEEDS_LANDLOCK
@pytest.mark.parametrize("network", [False, True])
def test_tcp_is_denied_without_the_network_tag(tmp_path: Path, network: bool) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = (f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5);"
                " print('connected')")
        done = _run(tmp_path, f"{sys.executable} -c \"{code}\"", network)
    if network:
        assert done.stdout == "connected\n", done.stderr
    else:
        assert "connected" not in done.stdout and "PermissionError" in done.stderr


@NEEDS_LANDLOCK
def test_exit_codes_and_signals_pass_on(tmp_path: Path) -> None:
    assert _run(tmp_path, "exit 9").returncode == 9
    assert _run(tmp_path, "kill -TERM $$").returncode == -15


@NEEDS_LANDLOCK
def test_a_program_without_a_shebang_runs_under_bash(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "tool").write_text("echo from-the-script\n")
    (sandbox / "tool").chmod(0o755)
    shared = landlock.landlocked(landlock.compiled(tmp_path / "cache"), (str(tmp_path),), ())
    argv = landlock.command(shared, str(sandbox), False, "./tool", ["./tool"], script="./tool")
    done = subprocess.run(argv, cwd=sandbox, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "from-the-script\n", done.stderr


@NEEDS_LANDLOCK
def test_proc_shows_the_builds_processes_alone(tmp_path: Path) -> None:
    """/proc is the build's PID namespace's: $$ agrees with it, and posbuild (whose environment
    holds the secrets) and the host's other processes are not in it."""
    done = _run(tmp_path, f"cat /proc/$$/status | grep -c Pid; cat /proc/{os.getpid()}/environ")
    assert done.stdout.split()[0] != "0" and "No such file" in done.stderr
    listed = _run(tmp_path, "ls /proc").stdout.split()
    assert str(os.getpid()) not in listed and len([p for p in listed if p.isdigit()]) < 10


def test_a_cache_that_cannot_be_written_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=f"cannot write in {tmp_path}/file/sub"):
        landlock.compiled(tmp_path / "file" / "sub")


@NEEDS_LANDLOCK
def test_closing_the_holder_ends_every_process_in_its_namespaces(tmp_path: Path) -> None:
    """What posbuild's end does (its pipe closes), even to a process that left its session."""
    holder = landlock.Holder()
    pid = holder.pid(landlock.compiled(tmp_path / "cache"))
    marker = f"{97 + (os.getpid() % 1000) / 1000:.3f}"
    argv = [landlock.compiled(tmp_path / "cache"), "-N", pid, "-r", "/", "-w", str(tmp_path),
            "--", "/bin/sh", "sh", "-c",
            f"setsid sleep {marker} & sleep {marker}"]
    started = subprocess.Popen(argv, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(_sleeping(marker)) < 2:
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.02)
        holder.close()
        assert started.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _sleeping(marker):
            assert time.monotonic() < deadline, "a process outlived the namespaces"
            time.sleep(0.05)
    finally:
        holder.close()
        if started.poll() is None:
            started.kill()
            started.wait()


def _sleeping(marker: str) -> list[str]:
    needle = f"sleep\0{marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if needle in handle.read():
                    found.append(entry)
        except OSError:
            pass
    return found
