"""The Spawner contract, written once: what the engine relies on of every place a command runs.

`SpawnerContract` is a base class of test methods (doit's mixin style); each implementation's
test class derives from it and supplies the `rig` fixture: a fresh spawner, a workspace holding
`pkg/in.txt`, and a folder the command may write to. A case an implementation cannot honour is
overridden in its subclass with an explicit skip saying why, never dropped silently.

Each case runs a real command, and tells the fake (tests/fake_spawner.py), which runs nothing,
what that command would do (`scripted`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from fake_spawner import Script
from posbuild.core.action import Action
from posbuild.exec.spawner import Spawner, SpawnResult

INPUT = b"input\n"
OUT = "posbuild-out/pkg/out.txt"
BIN = "posbuild-out/pkg/sub/b.bin"
SLOW = 30  # seconds a command sleeps that must be cut short
PATIENCE = 60.0  # seconds to wait for something that takes well under one on an idle machine


@dataclass(frozen=True)
class Rig:
    spawner: Spawner[Any]
    root: Path  # the workspace: holds pkg/in.txt
    probe: Path  # a folder the command may write to and the test read
    base: Path | None  # the sandbox base, where clear_stale sweeps (None: a private one)


def make_workspace(folder: Path) -> Path:
    """A workspace whose one source is `pkg/in.txt`."""
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg/in.txt").write_bytes(INPUT)
    return folder


def action(name: str, command: str, outputs: Sequence[str] = (OUT,), timeout: int = 0) -> Action:
    inputs = ("pkg/in.txt",)
    return Action(label=f"//pkg:{name}", kind="genrule", command=command, inputs=inputs,
                  tools=(), outputs=tuple(outputs), env=(), versions=(), timeout=timeout,
                  tags=(), def_hash=b"\0" * 32, deps=(), sources=inputs, resources=(1, 0, 0))


def read(result: SpawnResult, path: str) -> bytes:
    """A declared output's bytes, read as the engine reads them: through `output(path)`."""
    with result.output(path).reading() as fd:
        return os.read(fd, 1 << 20)


def descriptors_below(folder: Path) -> list[str]:
    """This process's open descriptors that point into `folder`."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the one listdir itself used, closed by now
            continue
        if target == str(folder) or target.startswith(f"{folder}/"):
            found.append(target)
    return found


class SpawnerContract:
    """The cases; subclasses supply `rig` and, for the fake, `scripted` and `until_running`."""

    @pytest.fixture
    def rig(self, tmp_path: Path) -> Iterator[Rig]:
        raise NotImplementedError("each implementation's test class supplies its rig")

    def scripted(self, rig: Rig, action: Action, script: Script) -> None:
        """Tell a spawner that runs nothing what `action`'s command would do; a real one runs
        it."""

    def until_running(self, rig: Rig, flag: Path) -> None:
        """Return once the command has started, which it says by creating `flag`."""
        deadline = time.monotonic() + PATIENCE
        while not flag.exists():
            assert time.monotonic() < deadline, f"the command never created {flag}"
            time.sleep(0.02)

    def run(self, rig: Rig, action: Action, script: Script,
            extra_env: Sequence[tuple[str, str]] = ()) -> SpawnResult:
        self.scripted(rig, action, script)
        return rig.spawner.wait(rig.spawner.start(action, extra_env))

    # -- the cases

    def test_exit_0_with_every_declared_output_readable_with_exact_bytes(self, rig: Rig) -> None:
        done = action("ok", f"cat pkg/in.txt > {OUT}; mkdir -p posbuild-out/pkg/sub; "
                            f"printf '\\000\\377bin' > {BIN}", outputs=(OUT, BIN))
        result = self.run(rig, done, Script(outputs={OUT: INPUT, BIN: b"\0\xffbin"}))
        try:
            assert (result.exit_code, result.timed_out, result.missing) == (0, False, ())
            assert (read(result, OUT), read(result, BIN)) == (INPUT, b"\0\xffbin")
        finally:
            rig.spawner.remove(result)

    def test_a_non_zero_exit_code_is_reported_as_such(self, rig: Rig) -> None:
        result = self.run(rig, action("fails", "exit 3"), Script(exit_code=3))
        try:
            assert (result.exit_code, result.timed_out) == (3, False)
        finally:
            rig.spawner.remove(result)

    def test_a_declared_output_not_made_is_missing(self, rig: Rig) -> None:
        half = action("half", f"printf made > {OUT}", outputs=(OUT, BIN))
        result = self.run(rig, half, Script(outputs={OUT: b"made"}))
        try:
            assert (result.exit_code, result.missing) == (0, (BIN,))
            assert read(result, OUT) == b"made"
            with pytest.raises(KeyError):
                result.output(BIN)
        finally:
            rig.spawner.remove(result)

    def test_stdout_and_stderr_are_captured_apart(self, rig: Rig) -> None:
        talks = action("talks", f"printf to-out; printf to-err >&2; touch {OUT}")
        result = self.run(rig, talks, Script(stdout=b"to-out", stderr=b"to-err"))
        try:
            assert (result.stdout, result.stderr) == (b"to-out", b"to-err")
        finally:
            rig.spawner.remove(result)

    def test_the_extra_env_reaches_the_command(self, rig: Rig) -> None:
        greets = action("greets", f'printf %s "$GREETING" > {OUT}')
        result = self.run(rig, greets, Script(outputs={OUT: b"hello there"}),
                          [("GREETING", "hello there")])
        try:
            assert read(result, OUT) == b"hello there"
        finally:
            rig.spawner.remove(result)

    def test_a_command_past_its_timeout_is_killed_and_reported_timed_out(self, rig: Rig) -> None:
        slow = action("slow", f"sleep {SLOW}; touch {OUT}", timeout=1)
        began = time.monotonic()
        result = self.run(rig, slow, Script(delay=SLOW))
        try:
            assert time.monotonic() - began < SLOW / 2
            assert result.timed_out and result.exit_code != 0
            assert result.missing == (OUT,)
        finally:
            rig.spawner.remove(result)

    @pytest.mark.parametrize("command", [
        f"mkdir -p junk/deep && touch junk/deep/x {OUT} && ln -s / posbuild-out/pkg/root",
        "chmod 500 pkg; exit 1",
    ])
    def test_remove_leaves_nothing_behind(self, rig: Rig, command: str) -> None:
        messy = action("messy", command)
        result = self.run(rig, messy, Script(exit_code=1 if "exit 1" in command else 0))
        sandbox = result.exec_root.parent
        rig.spawner.remove(result)
        assert not sandbox.exists() and not sandbox.is_symlink()
        assert descriptors_below(sandbox) == []
        with pytest.raises(KeyError):
            result.output(OUT)

    def test_cancel_from_another_thread_stops_a_running_command(self, rig: Rig) -> None:
        flag = rig.probe / "started"
        long = action("long", f"touch {flag}; sleep {SLOW}; touch {OUT}")
        self.scripted(rig, long, Script(delay=SLOW))
        running = rig.spawner.start(long)
        results: list[SpawnResult] = []
        waiter = threading.Thread(target=lambda: results.append(rig.spawner.wait(running)))
        waiter.start()
        try:
            self.until_running(rig, flag)
            began = time.monotonic()
            rig.spawner.cancel()
            waiter.join(PATIENCE)
            assert not waiter.is_alive(), "wait did not return after cancel"
            assert time.monotonic() - began < SLOW / 2
        finally:
            waiter.join()
        (result,) = results
        try:
            assert result.exit_code != 0 and not result.timed_out
            assert result.missing == (OUT,)
            assert rig.spawner.stopped == 1
        finally:
            rig.spawner.remove(result)

    def test_a_start_after_cancel_runs_nothing(self, rig: Rig) -> None:
        rig.spawner.cancel()
        flag = rig.probe / "ran"
        late = action("late", f"touch {flag} {OUT}")
        result = self.run(rig, late, Script())
        try:
            assert result.exit_code != 0 and result.missing == (OUT,)
            assert not flag.exists()
            assert rig.spawner.stopped == 0
        finally:
            rig.spawner.remove(result)

    def test_clear_stale_then_close_on_a_fresh_instance(self, rig: Rig) -> None:
        rig.spawner.clear_stale()
        rig.spawner.close()

    def test_clear_stale_leaves_the_runs_of_a_live_process_alone(self, rig: Rig) -> None:
        rig.spawner.clear_stale()
        kept = action("kept", f"printf kept > {OUT}")
        result = self.run(rig, kept, Script(outputs={OUT: b"kept"}))
        try:
            rig.spawner.clear_stale()  # as the next build of this process, or another's, would
            assert result.exec_root.is_dir()
            assert read(result, OUT) == b"kept"
        finally:
            rig.spawner.remove(result)

    def test_clear_stale_removes_what_a_dead_process_left(self, rig: Rig) -> None:
        assert rig.base is not None
        # a pid no process has (pid_max is at most 2**22) and no owner mark: a dead build's
        left = rig.base / f"{2 ** 22 + 7}-0"
        (left / "exec/pkg").mkdir(parents=True)
        (left / "exec/pkg/in.txt").write_bytes(INPUT)
        (left / "exec/pkg").chmod(0o500)  # a command's own chmod
        rig.spawner.clear_stale()
        try:
            assert not left.exists()
        finally:
            rig.spawner.close()
