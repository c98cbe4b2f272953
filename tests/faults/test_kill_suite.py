"""Kills at 32 instants (SIGKILL and SIGTERM), in both sandboxes, cold and incremental.

DESIGN invariant 3: after a kill at any instant `posbuild fsck` passes WITHOUT `--repair`, and
the next build leaves `posbuild-out/` byte for byte what a clean build in a fresh workspace makes,
and correct by the oracle (tests/oracle.py): the store holds the result of every action's key.
Beyond that, a kill should cost no finished work: every command appends its name to a log
outside the sandbox once its output is written; an action is *lost* when the log says its
command finished in the killed build and the next build executes it again. The total is
printed (`pytest -s`). Results are committed before their outputs appear, so a kill can only
cost the actions in flight at its instant (a command killed after it logged, a result between
its command's exit and its commit: milliseconds); before that, up to a commit group of 32.

Kill instants are chosen by observation — after K progress lines, after K commands finished
(log lines) — and by random short delays, with a fixed seed so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from chain_workspace import chain_files, outputs
from conftest import POSBUILD, Workspace, bwrap_problem
from oracle import assert_correct_build

PACKAGES = 4
PER_PACKAGE = 45  # 180 actions
KILLS_PER_MODE = 16
# What a kill may still cost: commands that logged but had not exited, or whose result was not
# yet committed, at that instant. With -j2 each worker may conclude one action while the next
# one it started runs (the scheduler's early start), so at most four.
IN_FLIGHT = 4


def _files(version: int, log: Path, mode: str) -> dict[str, str]:
    """Four interlinked chains of tiny actions; `version` changes the seeds of two packages; each
    command logs its name once its output is written."""
    return {"posbuild.toml": f'[sandbox]\nmode = "{mode}"\n',
            **chain_files(version, PACKAGES, PER_PACKAGE, changed=2,
                          after=f"; echo {{n}} >> {log}")}


def _take_log(log: Path) -> list[str]:
    """The names the commands logged since the last call (the log starts afresh)."""
    try:
        names = log.read_text().split()
    except FileNotFoundError:
        return []
    log.unlink()
    return names


def _start(ws: Workspace) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*POSBUILD, "build", "-j2", "//..."], cwd=ws.root,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _kill(proc: subprocess.Popen[bytes], sig: int, trigger: str, amount: float, log: Path) -> None:
    """Send `sig` to posbuild alone (as `kill` would) once `trigger` says: after `amount` progress
    lines ("lines"), logged commands ("markers"), or seconds ("delay")."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    if trigger == "lines":
        for _ in range(int(amount)):
            if not proc.stdout.readline():
                break
    elif trigger == "markers":
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and len(log.read_bytes().split()) >= amount:
                break
            time.sleep(0.002)
    else:
        time.sleep(amount)
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, bytes]]:
    """What a clean build of each version leaves in `posbuild-out/`."""
    base = tmp_path_factory.mktemp("kill-reference")
    found = {}
    for version in (0, 1):
        ws = Workspace(base / f"v{version}")
        ws.root.mkdir()
        ws.write(_files(version, base / "log", "folder"))
        ws.ok("-j2", "-q", "//...")
        found[version] = outputs(ws.root)
    return found


LOST: dict[str, int] = {}


@pytest.mark.parametrize("mode", ["folder", "namespace"])
def test_kills_at_16_instants_leave_no_partial_state_and_lose_no_finished_action(
    tmp_path, references, mode):
    if mode == "namespace" and bwrap_problem() is not None:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_problem()}")
    rng = random.Random(14 + len(mode))
    log = tmp_path / "commands.log"
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    failures: list[str] = []
    lost_total = 0
    version = 0
    for kill in range(KILLS_PER_MODE):
        cold = kill % 4 == 0
        sig = signal.SIGTERM if kill % 3 == 1 else signal.SIGKILL
        trigger = ("lines", "markers", "delay")[kill % 3]
        if cold and (ws.root / ".posbuild").exists():
            assert ws.run("clean", "--all").returncode == 0
        version = 1 - version
        ws.write(_files(version, log, mode))
        _take_log(log)
        amount = {"lines": rng.randint(1, 60), "markers": rng.randint(1, 60),
                  "delay": rng.uniform(0.0, 1.5)}[trigger]
        _kill(_start(ws), sig, trigger, amount, log)
        time.sleep(0.05)  # a command that outlived posbuild would log now
        finished = set(_take_log(log))
        where = f"{mode} kill {kill} ({signal.Signals(sig).name} after {trigger} {amount:.2f}, " \
                f"{'cold' if cold else 'incremental'})"
        check = ws.run("fsck")
        if check.returncode != 0:
            failures.append(
                f"{where}: fsck failed ({check.returncode}): "
                f"{check.stdout[-600:]}{check.stderr[-600:]}")
        rebuilt = ws.build("-j2", "-q", "//...")
        if rebuilt.returncode != 0:
            failures.append(f"{where}: the next build failed: {rebuilt.stderr[-600:]}")
        elif outputs(ws.root) != references[version]:
            failures.append(f"{where}: posbuild-out/ differs from a clean build")
        else:
            try:
                assert_correct_build(ws)
            except AssertionError as error:
                failures.append(f"{where}: the next build is not correct: {error}")
        again = set(_take_log(log))
        lost = len(finished & again)
        lost_total += lost
        if lost > IN_FLIGHT:
            failures.append(f"{where}: {lost} of {len(finished)} finished action(s) executed again")
    LOST[mode] = lost_total
    print(f"\n{mode} sandbox: {KILLS_PER_MODE} kills, {lost_total} finished action(s) lost "
          f"(all kills so far: {sum(LOST.values())})")
    assert not failures, "\n".join(failures)


def test_every_output_a_killed_build_installed_is_committed(tmp_path):
    """The issue's case: SIGKILL while cheap actions finish; every output already in posbuild-out/
    at the kill must be settled from the store by the next build, never executed again (results
    used to be committed 32 at a time, after their outputs were installed)."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.write({"posbuild.toml": '[sandbox]\nmode = "folder"\n', "g/BUILD": "\n".join(
        f'genrule(name = "a{i}", outs = ["a{i}.txt"], cmd = "echo {i} > $@")'
        for i in range(60)) + "\n"})
    out = ws.root / "posbuild-out/g"
    for attempt in range(5):
        proc = _start(ws)
        while proc.poll() is None \
                and not (out.is_dir() and len(os.listdir(out)) >= 15 + 5 * attempt):
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        present = {f"//g:{name[:-4]}" for name in os.listdir(out)} if out.is_dir() else set()
        if 0 < len(present) < 60:
            break
        assert ws.run("clean", "--all").returncode == 0
    else:
        pytest.fail("never caught the build with part of its outputs installed")
    check = ws.run("fsck")
    assert check.returncode == 0, check.stdout + check.stderr
    rebuilt = ws.ok("//...")
    assert_correct_build(ws)
    again = {line.split("] ", 1)[1] for line in rebuilt.stdout.splitlines() if line.startswith("[")}
    assert not present & again, (
        f"{len(present & again)} of {len(present)} installed outputs were executed again")
