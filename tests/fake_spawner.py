"""A Spawner that runs nothing, for tests of the engine without processes (Ninja's dry-run runner).

It records each action started (label, command, extra env) and ends each run as scripted for its
label: by default exit 0 with every declared output written, its bytes derived from the action
(`default_bytes`). Outputs are really written, in a private temporary folder, and collected
exactly as the local sandboxes collect them (opened without following links), so the engine reads
a fake result as it reads a real one. tests/spawner_contract.py holds it to the same contract as
the real spawners.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from posbuild.core.action import Action
from posbuild.exec.spawner import Spawner, SpawnResult
from posbuild.host.nofollow import open_outputs

POLL = 0.005  # seconds between looks at a run's end, its timeout and a cancel


@dataclass(frozen=True)
class Script:
    """How the command of one label ends, as if it had run."""

    exit_code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    # path → bytes written; None: every declared output (`default_bytes`) when the run succeeds,
    # none when it fails
    outputs: Mapping[str, bytes] | None = None
    timed_out: bool = False  # end at once as a run its timeout killed
    delay: float = 0.0  # seconds the command takes (cut short by `action.timeout` and `cancel`)
    until: threading.Event | None = None  # the command runs until this is set (or a cancel)


@dataclass(frozen=True)
class Spawned:
    """One `start`, as recorded."""

    label: str
    command: str
    extra_env: tuple[tuple[str, str], ...]


@dataclass(frozen=True, eq=False)
class FakeRun:
    """The handle `start` returns."""

    action: Action
    script: Script
    folder: str  # the run's sandbox: `exec/` holds its outputs
    started: float  # time.monotonic()
    cancelled: bool  # started after a cancel: runs nothing
    ended: threading.Event = field(default_factory=threading.Event, compare=False)


def default_bytes(action: Action, path: str) -> bytes:
    """What a scripted-by-default run writes to declared output `path`: the same for the same
    label, command and path."""
    return f"{action.label}\n{action.command}\n{path}\n".encode()


class FakeSpawner:
    """Runs nothing; `scripts` says how each label's run ends, `spawned` what was started."""

    def __init__(self, scripts: Mapping[str, Script] | None = None) -> None:
        self.scripts: dict[str, Script] = dict(scripts or {})
        self.spawned: list[Spawned] = []
        self.stopped = 0
        self._base = tempfile.mkdtemp(prefix="posbuild-fake-spawner-")
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._running: set[FakeRun] = set()
        self._cancel = threading.Event()

    def clear_stale(self) -> None:
        """Nothing to sweep: the folder is new and this spawner's own."""

    def start(self, action: Action, extra_env: Sequence[tuple[str, str]] = ()) -> FakeRun:
        with self._lock:
            self.spawned.append(Spawned(action.label, action.command, tuple(extra_env)))
            folder = f"{self._base}/{next(self._counter)}"
            run = FakeRun(action, self.scripts.get(action.label, Script()), folder,
                          time.monotonic(), self._cancel.is_set())
            os.makedirs(f"{folder}/exec")
            if not run.cancelled:
                self._running.add(run)
        return run

    def wait(self, run: FakeRun) -> SpawnResult:
        script, action = run.script, run.action
        code, timed_out, ran = self._end(run)
        with self._lock:
            self._running.discard(run)
        exec_root = f"{run.folder}/exec"
        if ran:
            outputs = script.outputs
            if outputs is None:
                ok = script.exit_code == 0 and not script.timed_out
                outputs = {p: default_bytes(action, p) for p in action.outputs} if ok else {}
            for path, data in outputs.items():
                os.makedirs(os.path.dirname(f"{exec_root}/{path}"), exist_ok=True)
                Path(exec_root, path).write_bytes(data)
        found = open_outputs(exec_root, action.outputs)
        return SpawnResult(code, timed_out, Path(exec_root), tuple(found.missing),
                           script.stdout if ran else b"", script.stderr if ran else b"",
                           time.monotonic() - run.started, irregular=tuple(found.irregular),
                           why=found.why, files=found)

    def _end(self, run: FakeRun) -> tuple[int, bool, bool]:
        """Wait as long as the command would run: (exit code, timed out, whether it ended on its
        own). A timeout or a cancel kills it (SIGKILL, as the local sandboxes do)."""
        if run.cancelled:
            return -signal.SIGTERM, False, False
        script = run.script
        if script.timed_out:
            return -signal.SIGKILL, True, False
        end = run.started + script.delay
        deadline = run.started + run.action.timeout if run.action.timeout else None
        while True:
            now = time.monotonic()
            if self._cancel.is_set():
                return -signal.SIGKILL, False, False
            if now >= end and (script.until is None or script.until.is_set()):
                run.ended.set()
                return script.exit_code, False, True
            if deadline is not None and now >= deadline:
                return -signal.SIGKILL, True, False
            time.sleep(POLL)

    def remove(self, result: SpawnResult) -> None:
        if result.files is not None:
            result.files.close()
        shutil.rmtree(result.exec_root.parent, ignore_errors=True)

    def cancel(self) -> None:
        """Kill every run whose command has not ended; `stopped` counts them."""
        with self._lock:
            self._cancel.set()
            self.stopped += sum(1 for run in self._running if not self._over(run))

    @staticmethod
    def _over(run: FakeRun) -> bool:
        """Whether the command has ended by now, on its own or by its timeout."""
        script, now = run.script, time.monotonic()
        timeout = run.action.timeout
        return run.ended.is_set() or script.timed_out \
            or bool(timeout and now >= run.started + timeout) \
            or (now >= run.started + script.delay
                and (script.until is None or script.until.is_set()))

    def close(self) -> None:
        shutil.rmtree(self._base, ignore_errors=True)


_: type[Spawner[FakeRun]] = FakeSpawner  # mypy: the fake keeps the engine's contract
