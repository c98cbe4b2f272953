"""Real signals to a real build: SIGTERM and SIGHUP stop it as Ctrl-C does (exit 128+N, one line,
nothing partial, fsck passes), in `build` and in `watch`; and no command outlives a posbuild
killed by SIGKILL, in either sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import POSBUILD, Workspace, bwrap_problem


def _workspace(tmp_path: Path, mode: str, started: Path) -> Workspace:
    """One quick action, then one that marks that it runs and sleeps for ever (its pid in
    `started`). `folder-mem`: the folder sandbox, the slow action declaring `mem_mb`, which
    starts its command through the small fork server (where a C compiler can build it)."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    memory = ', resources = {"mem_mb": 100}' if mode == "folder-mem" else ""
    mode = mode.removesuffix("-mem")
    ws.write({"posbuild.toml": f'[sandbox]\nmode = "{mode}"\n', "g/BUILD": (
        'genrule(name = "quick", outs = ["quick.txt"], cmd = "echo quick > $@")\n'
        f'genrule(name = "slow", srcs = [":quick"], outs = ["slow.txt"]{memory}, '
        f'cmd = "sleep 1000 & echo $! > {started}.tmp; mv {started}.tmp {started}; wait")\n')})
    return ws


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the slow action never started"
        time.sleep(0.02)
    return int(path.read_text())


def _sleeps() -> set[int]:
    """The pids of every `sleep 1000` on the machine (the namespace sandbox's own pids are not
    ours)."""
    found = subprocess.run(["pgrep", "-f", "^sleep 1000$"], capture_output=True, text=True).stdout
    return {int(pid) for pid in found.split()}


@pytest.fixture
def sleeps() -> Iterator[set[int]]:
    """The `sleep 1000`s there were before the test; any the test leaves are killed (by pid)."""
    before = _sleeps()
    yield before
    for pid in _sleeps() - before:
        os.kill(pid, signal.SIGKILL)


def _gone(before: set[int]) -> bool:
    """Whether the action's `sleep 1000` is gone (within 5 s)."""
    deadline = time.monotonic() + 5
    while _sleeps() - before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


MODES = ["folder", "namespace", "folder-mem"]


def _skip_without_bwrap(mode: str) -> None:
    if mode == "namespace" and bwrap_problem() is not None:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_problem()}")


@pytest.mark.parametrize("mode", MODES)
def test_a_command_does_not_outlive_a_posbuild_killed_by_sigkill(tmp_path, mode, sleeps):
    _skip_without_bwrap(mode)
    started = tmp_path / "started"
    ws = _workspace(tmp_path, mode, started)
    proc = subprocess.Popen([*POSBUILD, "build", "//..."], cwd=ws.root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(started, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _gone(sleeps), "the action's `sleep 1000` outlived the killed posbuild"
    check = ws.run("fsck")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
@pytest.mark.parametrize("mode", MODES)
def test_sigterm_and_sighup_stop_a_build_as_ctrl_c_does(tmp_path, mode, sig, sleeps):
    _skip_without_bwrap(mode)
    started = tmp_path / "started"
    ws = _workspace(tmp_path, mode, started)
    proc = subprocess.Popen([*POSBUILD, "build", "//..."], cwd=ws.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(started, proc)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=30)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err
    assert err.splitlines()[-1] == (
        f"posbuild: interrupted by {name}; 1 running action stopped, nothing partial kept")
    assert "Traceback" not in err
    assert _gone(sleeps), f"the action's `sleep 1000` outlived posbuild's {name}"
    check = ws.run("fsck")
    assert check.returncode == 0 and "swept" not in check.stdout, check.stdout + check.stderr
    assert not (ws.root / "posbuild-out/g/slow.txt").exists()
    result = ws.run("build", "//g:quick")
    # kept, committed
    assert result.returncode == 0 and "(0 executed, 1 cached" in result.stdout, result.stdout


def test_sigterm_stops_posbuild_watch_as_ctrl_c_does(tmp_path, sleeps):
    started = tmp_path / "started"
    ws = _workspace(tmp_path, "folder", started)
    proc = subprocess.Popen([*POSBUILD, "watch", "//..."], cwd=ws.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(started, proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == (
        "posbuild: interrupted by SIGTERM; 1 running action stopped, nothing partial kept")
    assert _gone(sleeps)
    check = ws.run("fsck")
    assert check.returncode == 0, check.stdout + check.stderr


def test_sigterm_stops_posbuild_verify_with_its_own_exit_code(tmp_path, sleeps):
    """`posbuild verify` said "interrupted" and exited 130 (SIGINT's code) whatever the signal."""
    started = tmp_path / "started"
    ws = _workspace(tmp_path, "folder", started)
    ws.write({"g/BUILD": 'genrule(name = "quick", outs = ["quick.txt"], cmd = "echo quick > $@")\n'
                         'genrule(name = "slow", srcs = [":quick"], outs = ["slow.txt"], cmd = '
                         f'"if [ -e {tmp_path}/built ]; then sleep 1000 & echo $! > {started}.tmp; '
                         f'mv {started}.tmp {started}; wait; fi; echo > $@")\n'})
    ws.ok("//...")
    (tmp_path / "built").touch()
    proc = subprocess.Popen([*POSBUILD, "verify", "//..."], cwd=ws.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(started, proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == (
        "posbuild: interrupted by SIGTERM; nothing was cached or written to posbuild-out/")
    assert _gone(sleeps)
    check = ws.run("fsck")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("gap", [0.0, 0.02])
def test_a_signal_repeated_at_once_is_one_request(tmp_path, gap, sleeps):
    """GNU `timeout` (without --foreground) sends SIGTERM to posbuild and then to its whole process
    group: the second copy is the same request, not a second Ctrl-C that cuts the wind-down off
    and ends posbuild without its line."""
    started = tmp_path / "started"
    ws = _workspace(tmp_path, "folder", started)
    proc = subprocess.Popen([*POSBUILD, "build", "//..."], cwd=ws.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(started, proc)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(gap)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == (
        "posbuild: interrupted by SIGTERM; 1 running action stopped, nothing partial kept")
    check = ws.run("fsck")
    assert check.returncode == 0 and "swept" not in check.stdout, check.stdout + check.stderr

