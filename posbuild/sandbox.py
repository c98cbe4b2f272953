"""Layer 6: run one action's command in a folder that holds only its declared inputs.

Each action gets `<sandboxes>/<n>/` with `exec/` (the working directory: declared inputs at their
workspace-relative paths, and `posbuild-out/<pkg>/` for its outputs) and `tmp/` (its HOME and
TMPDIR). The command runs under `/bin/sh -c` with a scrubbed environment: a fixed base (PATH, LANG,
TZ, HOME, TMPDIR, SOURCE_DATE_EPOCH) plus the action's declared variables, and nothing else.

Sandboxes live on a memory file system (`/dev/shm`) when the machine has one: a sandbox is a
dozen directory and file creations and deletions, which cost ~10 µs each there and ~250 µs on a
journalled disk — more than a cheap command itself. `[build] sandbox_base` moves them to disk
for actions whose outputs or temporary files would not fit in memory.

Inputs are copied, so an action that writes to an input changes only its own copy. Inputs of
`LINK_LIMIT` bytes or more are symlinked instead, to keep large data sets cheap to stage; the
rebuilder's re-stat after the run still catches an action that wrote through such a link.

The command runs in its own session (process group); when it ends, or on timeout or cancel,
the whole group is killed, so no stray background process outlives its action. (If posbuild
itself is killed with SIGKILL, commands already running finish on their own; their sandboxes
are removed by the next build, and nothing they produce is ever collected.) This module knows
nothing of keys or the store: it takes an Action and returns a SpawnResult.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from posbuild.analysis import Action

LINK_LIMIT = 16 * 1024 * 1024
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class SpawnResult:
    """How a command ended and where its declared outputs are (those that exist)."""

    exit_code: int
    timed_out: bool
    exec_root: Path
    missing: tuple[str, ...]
    stdout: bytes = field(repr=False)
    stderr: bytes = field(repr=False)
    elapsed: float = field(default=0.0, compare=False)


def base_environment(sandbox: Path) -> dict[str, str]:
    """The fixed variables every action sees, whatever the caller's environment holds."""
    return {
        "PATH": BASE_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": str(sandbox / "tmp"),
        "TMPDIR": str(sandbox / "tmp"),
        "PWD": str(sandbox / "exec"),
        "SOURCE_DATE_EPOCH": "0",
    }


class Sandboxes:
    """Creates, runs and removes per-action sandbox folders under `base`.

    Paths are plain strings here: this is the per-action hot path, and pathlib's objects cost
    more than the file-system calls they wrap.
    """

    def __init__(self, root: Path, base: Path) -> None:
        self._root = str(root) + "/"
        self._base = base
        self._counter = itertools.count()
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self._cancelled = False

    def clear_stale(self) -> None:
        """Remove sandboxes left by an interrupted earlier build."""
        shutil.rmtree(self._base, ignore_errors=True)
        self._base.mkdir(parents=True, exist_ok=True)

    def run(self, action: Action, extra_env: Sequence[tuple[str, str]] = ()) -> SpawnResult:
        """Stage inputs, run the command, and report; the caller must `remove()` the sandbox."""
        sandbox = f"{self._base}/{os.getpid()}-{next(self._counter)}"
        exec_root = sandbox + "/exec"
        self._stage(action, sandbox, exec_root)
        env = base_environment(Path(sandbox))
        env.update(action.env)
        env.update(extra_env)
        stdout_path, stderr_path = sandbox + "/stdout", sandbox + "/stderr"
        started = time.monotonic()
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            exit_code, timed_out = self._spawn(action, exec_root, env, out, err)
        elapsed = time.monotonic() - started
        missing = tuple(p for p in action.outputs if not os.path.isfile(f"{exec_root}/{p}"))
        with open(stdout_path, "rb") as out, open(stderr_path, "rb") as err:
            stdout, stderr = out.read(), err.read()
        return SpawnResult(exit_code, timed_out, Path(exec_root), missing, stdout, stderr, elapsed)

    def remove(self, result: SpawnResult) -> None:
        shutil.rmtree(os.path.dirname(result.exec_root), ignore_errors=True)

    def cancel(self) -> None:
        """Kill every running action's process group (Ctrl-C, a critical error elsewhere)."""
        with self._lock:
            self._cancelled = True
            groups = list(self._running)
        for group in groups:
            _kill_group(group)

    def _stage(self, action: Action, sandbox: str, exec_root: str) -> None:
        os.makedirs(sandbox + "/tmp")
        os.mkdir(exec_root)
        made = {""}
        for path in (*action.inputs, *action.outputs):
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(f"{exec_root}/{parent}", exist_ok=True)
                made.add(parent)
        for path in action.inputs:
            _stage_file(self._root + path, f"{exec_root}/{path}")

    def _spawn(self, action: Action, cwd: str, env: dict[str, str], out: object, err: object) -> tuple[int, bool]:
        with self._lock:
            if self._cancelled:
                return -signal.SIGTERM, False
            process = subprocess.Popen(
                ["/bin/sh", "-c", action.command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
            )
            self._running.add(process.pid)
        timed_out = False
        try:
            process.wait(timeout=action.timeout or None)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process.pid)
            process.wait()
        finally:
            with self._lock:
                self._running.discard(process.pid)
            _kill_group(process.pid)
        return process.returncode, timed_out


def _stage_file(source: str, target: str) -> None:
    """Copy one input into the sandbox (symlink it when large), keeping its executable bit.

    A plain open/sendfile/close: `shutil.copy` would add four `stat` calls and a `chmod`.
    """
    fd_in = os.open(source, os.O_RDONLY)
    try:
        info = os.fstat(fd_in)
        if info.st_size >= LINK_LIMIT:
            os.symlink(source, target)
            return
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, info.st_mode & 0o777)
        try:
            offset = 0
            while offset < info.st_size:
                sent = os.sendfile(fd_out, fd_in, offset, info.st_size - offset)
                if sent == 0:
                    break
                offset += sent
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
