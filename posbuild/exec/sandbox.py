"""Layer 4: run one action's command in a folder that holds only its declared inputs.

Each action gets `<sandboxes>/<pid>-<n>/` with `exec/` (the working directory: declared inputs
at their workspace-relative paths, and `posbuild-out/<pkg>/` for its outputs) and `tmp/` (its
HOME and TMPDIR), made and removed by stage.py. The command runs under `/bin/bash` with
`set -euo pipefail` (shellfree.shell_argv) and a scrubbed environment: a fixed base (PATH,
LANG, TZ, HOME, TMPDIR, SOURCE_DATE_EPOCH) plus the action's declared variables, and nothing
else. A plain command (a program and plain words, redirecting its stdout or stderr to a file at
most: shellfree.py), or a line of them joined by `&&` and `;`, is run directly, each program as the
shell would have run it, without the shell's own start-up: that halves what a cheap action
costs. A line's first program starts with the action; `wait` runs the others in turn
(`_go_on`). The bubblewrap sandbox always runs the shell. A command posbuild starts itself
(not through a fork server) is started by one call into C (native.py: `posix_spawn`, as
`subprocess` would start it), or by `subprocess` where that cannot be compiled.

Sandboxes live on a memory file system (`/dev/shm`) when the machine has one: a sandbox is a
dozen directory and file creations and deletions, which cost ~10 µs each there and ~250 µs on a
journalled disk — more than a cheap command itself. An action whose inputs and last outputs
would not fit there runs in a sandbox on disk instead (`disk_base`, placement.py);
`[build] sandbox_base` moves every sandbox to disk.

The command's stdout and stderr go to anonymous memory files (`memfd_create`; files in the
sandbox where the system has none), read back whole when it ends.

When the command has ended, its declared outputs are opened without following any link
(nofollow.py) and everything after (hashing, storing, installing) goes through those
descriptors: the sandbox is the action's, and a link it left there must not take posbuild,
which sees the whole file system, anywhere else.

The command runs in its own session (process group); when it ends, or on timeout or cancel,
the whole group is killed, so no stray background process outlives its action.

A command posbuild forks itself shares posbuild's memory until it execs, and the kernel counts
that memory in its peak (`_own_peak_kb`): such a peak, when no higher than posbuild's own, is
reported as unknown. So an action whose memory is checked (`mem_mb`) has its command started,
in the folder sandbox too, by a small fork server (below, without namespaces or rules), where
its peak is its own (`_measured`).

Namespaces (`[sandbox] mode`). "auto" (the default) and "landlock": where Landlock ABI 6 and a C
compiler are there, the command is started by the spawner's fork server (forkserver.py, a small
compiled launcher: landlock.py) inside the user, mount, PID, network, IPC and UTS namespaces made
once per build (held while a spawner is open), as posbuild's own child; it drops every
capability and restricts itself with Landlock: everything but the workspace, the store, the
sandbox base, /tmp, /dev and /run (and the secrets file) is readable, only the sandbox folder is
writable, TCP is denied without the network tag. The folder and its staging are the folder
sandbox's (inputs are copies); so is the shell-free start of plain commands, through the fork
server. "namespace", and "auto" where Landlock cannot run: the same folder inside
bubblewrap's own mount, PID, IPC, UTS and network namespaces (namespaces.py): the workspace and the
host's /tmp and /dev/shm are invisible, the system is read-only, the declared inputs are bound
read-only, and only the sandbox folder and a private /tmp are writable. Large inputs are bound
read-only from the workspace instead of being copied (staged as a symlink first, which
`_namespaced` turns into the bind). The process posbuild waits for is then bwrap's: killing its
group ends the command too, and its rusage includes the command's. Under bwrap
a command killed by signal N inside reports exit code 128+N (bwrap passes the status on as a shell
does); under Landlock the command is posbuild's own child, so its status is its own, as in the
folder sandbox. `choose_isolation`
decides once per build, before anything runs.

Processors: an action that declares cpu=N (N >= 1; the default is 1) runs pinned to N of the
processors posbuild may use: the N least used by this build's running actions, so with the
scheduler keeping the declared sum within `[resources] cpu` (at most the processors there are,
by default) running actions get disjoint sets. Among equally used ones the processor the
spawning thread runs on comes first (host/processor.py), then the lowest number: the kernel
placed the thread with the whole machine in view, so two builds side by side spread over the
processors instead of both running every command on processor 0, each at half speed. The mask is
set on the spawning thread just before the fork (a forked child inherits its thread's mask),
which has no race with the command starting threads of its own; `taskset` would cost an extra
exec per action and `preexec_fn` is unsafe with threads. A worker thread keeps the mask
afterwards: its next action usually gets the same processors, and then no system call is made
(freed between actions, it was moved between processors: 3-5% slower on a cold build); the main
thread gets posbuild's whole mask back. Under Landlock the fork server sets the mask in the
command's own process, from the request. cpu=0 leaves the action unpinned. On systems without
`sched_setaffinity` nothing is pinned. The thread-count variables (OMP_NUM_THREADS ...) come
with the action's env (analysis.declared_resources). This module knows nothing of keys or the
store: it takes an Action and returns a SpawnResult.

Kills: no command outlives posbuild, even one killed by SIGKILL — the PID namespace whose PID 1
ends with posbuild under Landlock, bwrap's `--die-with-parent` under bwrap, a guard process in
the folder sandbox (orphans.py). Each process that
makes sandboxes holds `<base>/<pid>.owner` locked while it does; `clear_stale` (the next build)
and fsck sweep only sandboxes whose mark no live process holds (owners.py).

Perturbation (`posbuild verify`)
--------------------------------
`run(..., perturbation=Perturbation(...))` varies what a hermetic action must not depend on; with
no perturbation a run is exactly the build's. What can be varied, and where:

* sandbox folder name and path length — always (`name_suffix` lengthens the folder name);
* order of the environment variables handed to the command — always; a plain command's program
  gets them in that order, but a shell passes its own variables on to the commands it starts in
  an order of its own (dash: hash order), so behind a shell only programs that read their initial
  environment in order see the difference;
* TZ — always, unless the action declares TZ itself (then TZ is a declared input);
* umask — always (set in the child just before exec, so it is safe with parallel runs);
* directory listing order (`reverse_staging`) — only where readdir follows creation order. Measured
  on Linux 6.x: tmpfs (`/dev/shm`, where sandboxes live by default) lists the newest entry first,
  so staging inputs in reverse reverses every listing; ext4 with `dir_index` (the default) lists in
  name-hash order whatever the creation order, so there it cannot be varied.
  `listing_follows_creation(folder)` measures it for a given file system;
* wall-clock time (`clock_shift`) — only when libfaketime is installed (`find_libfaketime()`):
  `LD_PRELOAD` it with `FAKETIME=<shift>`. It reaches dynamically linked programs only, not
  static binaries (Go) or setuid ones. Monotonic clocks are left alone (`DONT_FAKE_MONOTONIC`), so
  timeouts and sleeps behave.
"""

from __future__ import annotations

import glob
import itertools
import os
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from posbuild.core.action import Action
from posbuild.workspace.config import BASE_PATH, Config
from posbuild.core.layout import NETWORK_TAG
from posbuild.exec.orphans import NO_GUARD, ORPHANS
from posbuild.exec.owners import OWNER_SUFFIX, hold_mark, release_mark, sweep_dead
from posbuild.exec.placement import in_memory, memory_free, needs_disk, weigh_from
from posbuild.exec.spawner import Perturbation, Spawner, SpawnResult
from posbuild.exec.stage import Made, remove_tree, stage, stage_reversed
from posbuild.exec.namespaces import Isolation, choose, command, input_binds
from posbuild.exec import landlock, native
from posbuild.exec.landlock import Landlocked
from posbuild.exec.forkserver import Answer, ForkServer, ServerGone
from posbuild.exec.native import Spawned
from posbuild.host.nofollow import open_outputs, read_upto, write_all
from posbuild.host.owned import SANDBOXES, claim, holds_only_sandboxes
from posbuild.host.processor import current_processor
from posbuild.core.records import ResourceUsage
from posbuild.exec.shellfree import (Direct, Script, Step, execable, find_program, not_run,
                                     parse, redirect_failure, shell_argv, shell_free,
                                     shell_status, shell_variables)

FAKETIME_GLOBS = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
)


def find_libfaketime() -> str | None:
    """The path of libfaketime.so.1 if it is installed, else None."""
    for pattern in FAKETIME_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def listing_follows_creation(folder: Path) -> bool:
    """Whether `os.listdir` in `folder`'s file system depends on the order entries were created
    in."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix="readdir-probe-", dir=folder))
    try:
        listings = []
        for order in ("abcdefgh", "hgfedcba"):
            (probe / order).mkdir()
            for name in order:
                (probe / order / name).touch()
            listings.append(os.listdir(probe / order))
        return listings[0] != listings[1]
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Running:
    """A command `LocalSpawner.start` started: what `LocalSpawner.wait` needs to finish the run."""

    sandbox: str
    outputs: tuple[str, ...]
    # capture descriptors, closed by `wait` (stdout -1: redirected to a file, nothing to capture)
    stdout: int
    stderr: int
    started: float  # time.monotonic()
    # its Popen or Spawned (native.py) when posbuild started it (a Popen is kept: one dropped
    # whose returncode is unset would be reaped by subprocess's own cleanup, before `wait` gets
    # to it), or the fork server's answer when that made it (a child of posbuild's all the
    # same); `.pid` of each is its process group too. None: cancelled before it started.
    process: subprocess.Popen[bytes] | Spawned | Answer | None
    processors: tuple[int, ...]
    deadline: float | None = None  # time.monotonic() when its `timeout` expires
    # run without the shell (shellfree.py): its end is reported as bash would, as a program bash
    # would have forked (`forked`) or exec'd
    direct: Direct | None = None
    out_dirs: tuple[str, ...] = ()  # the outputs that are folders
    forked: bool = False
    rest: _Rest | None = None  # the first command of a Script: what its later ones need


class _Between:
    """A line of commands between two of them (`LocalSpawner._go_on`): running, with no process
    of its own for a cancel to kill, and counted once in what the cancel stopped."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _Rest:
    """What the later commands of a line posbuild runs without the shell need (`_go_on`)."""

    action: Action
    script: Script
    env: dict[str, str]  # without the variables bash adds to each program's
    programs: dict[Step, str]  # each command's program, as bash would have found it
    umask: int


def _ends_by(pid: int, deadline: float) -> bool:
    """Whether child `pid` ends before `deadline` (it is not reaped). Waited for on a pidfd by
    the thread that reaps it: a timer thread per action could fail to start (a thread limit, no
    memory), and with it the timeout was gone."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # a kernel before 5.3: look every 10 ms
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(0.01)
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))
    finally:
        os.close(fd)


def base_environment(sandbox: str | Path, search_path: str = BASE_PATH) -> dict[str, str]:
    """The fixed variables every action sees, whatever the caller's environment holds;
    `search_path` is the sandbox PATH (envfp.sandbox_path)."""
    return {
        "PATH": search_path,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": f"{sandbox}/tmp",
        "TMPDIR": f"{sandbox}/tmp",
        "PWD": f"{sandbox}/exec",
        "SOURCE_DATE_EPOCH": "0",
    }


def choose_isolation(config: Config, writable: Sequence[str] = (),
                     masked: Sequence[str] = (),
                     programs: Callable[[], Sequence[str]] = tuple,
                     ) -> tuple[Isolation | Landlocked | None, str]:
    """`[sandbox] mode` for this build: (how actions are isolated — Landlock, bubblewrap, or None
    for the folder sandbox; a notice for the user, or ""). Raises SandboxUnavailable when the mode
    named cannot run. Probes (a few ms) once per process. `writable`:
    folders left visible and writable (namespaces.writable_paths). `masked`: files no action may
    read (the secrets file), covered with /dev/null. `programs`: folders and files the actions'
    programs need (envfp.Environments.visible), asked only when a namespace sandbox may run:
    a build in the folder sandbox pays for none of this.

    Hidden: the workspace, the store and the sandbox base (other actions' sandboxes). Shown again,
    read-only: the Python running posbuild and the workspace's (`[python] interpreter`: py_task
    actions run it; it may live in a venv inside the workspace or under /tmp), the actions'
    programs, libfaketime (`posbuild verify`), and absolute `[env] tools`.
    """
    if config.sandbox_mode == "folder":
        return None, ""
    # both are made before any action runs anyway; hidden, they must exist
    for folder in (config.store_dir, config.sandbox_dir):
        folder.mkdir(parents=True, exist_ok=True)
    visible = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
               os.path.realpath(sys.executable)]
    visible += [tool for tool in config.env_tools if tool.startswith("/")]
    visible += programs()
    faketime = find_libfaketime()
    if faketime is not None:
        visible.append(faketime)
    return choose(config.sandbox_mode, hidden_folders(config), visible, writable, masked)


def hidden_folders(config: Config) -> tuple[str, str, str]:
    """What the namespace sandbox hides of the workspace: the workspace itself, the store and the
    sandbox base (other actions' sandboxes)."""
    return (str(config.root), str(config.store_dir), str(config.sandbox_dir))


class LocalSpawner:
    """Creates, runs and removes per-action sandbox folders under `base`.

    Paths are plain strings here: this is the per-action hot path, and pathlib's objects cost
    more than the file-system calls they wrap. With `isolation` (choose_isolation), commands run
    under bubblewrap in their own namespaces; without, in the folder sandbox alone, where plain
    commands skip the shell (shellfree.py) unless `shell_free` is False.
    """

    def __init__(self, root: Path, base: Path, isolation: Isolation | Landlocked | None = None,
                 shell_free: bool = True, search_path: str = BASE_PATH,
                 disk_base: Path | None = None) -> None:
        self._root = str(root) + "/"
        self._base = base
        self._search_path = search_path
        # where an action too large for a memory `base` runs (placement.py); None: never moved
        self._disk_base = disk_base
        self._expect: Callable[[Action], int] | None = None  # set by `expect_sizes`
        self._memory: bool | None = None  # whether `base` is memory, looked up when first needed
        self._disk_claimed = False
        self._isolation = isolation
        # bwrap: its argv holds the bind of each large input, staged as a link (`_namespaced`)
        self._bwrap = isinstance(isolation, Isolation)
        # False: every command runs under the shell
        self._shell_free = shell_free and not self._bwrap
        # (name, PATH) → where it was found, for absolute PATHs
        self._programs: dict[tuple[str, str], str] = {}
        self._execables: dict[str, bool] = {}  # program found by absolute path → exec'able
        self._counter = itertools.count()
        self._pid = os.getpid()
        # sandbox folder → what `stage` made there (for `remove`)
        self._staged: dict[str, Made] = {}
        # what a cancel kills: each running command's process, or a line between two commands
        self._running: set[subprocess.Popen[bytes] | Spawned | Answer | _Between] = set()
        self._lock = threading.Lock()
        self._cancelled = False
        self.stopped = 0  # commands a cancel killed
        self._faketime: str | None | bool = False  # False: not looked up yet
        try:
            self._processors: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))
        except AttributeError:  # no affinity support: nothing is pinned
            self._processors = ()
        # processor → running actions pinned to it
        self._pinned = dict.fromkeys(self._processors, 0)
        self._masks = threading.local()  # `current`: the mask this spawner last gave the thread
        # whether `clear_stale` claimed the base for this process (`<pid>.owner`)
        self._claimed = False
        # bwrap --die-with-parent does it there, and the Landlock sandbox's PID namespace
        self._guard = ORPHANS if isolation is None else NO_GUARD
        self._landlock = isinstance(isolation, Landlocked)
        # a share of the Landlock sandbox's namespaces: `close` ends them with the build
        self._leased = self._landlock
        if self._leased:
            landlock.HOLDER.lease()
        # Landlock: the fork server that starts every command in the build's namespaces, started
        # with the first (forkserver.py); the folder sandbox: the one that starts the commands
        # of actions whose memory is checked (`_measured`)
        self._server: ForkServer | None = None
        self._launcher: str | None = None  # the folder sandbox's compiled launcher; "": none
        self._own_peak = 0  # posbuild's peak memory (KiB) when last read (`_under_own_peak`)

    @property
    def namespaced(self) -> bool:
        """Whether commands run in their own namespaces (Landlock or bubblewrap), not in the
        folder alone."""
        return self._isolation is not None

    def clear_stale(self) -> None:
        """Sweep the sandboxes of dead posbuild processes and claim this one's (`sweep_dead`); the
        folder is this user's alone (0700: a running action's captured output may hold what its
        secrets redact later)."""
        # never another's folder
        claim(self._base, SANDBOXES, holds_only_sandboxes, " ([build] sandbox_base)")
        os.chmod(self._base, 0o700)  # PermissionError if another user made it first
        sweep_dead(self._base)
        if self._disk_base is not None and os.path.isdir(self._disk_base):
            sweep_dead(self._disk_base)  # what a killed build left there (placement.py)
        if not self._claimed:
            hold_mark(f"{self._base}/{self._pid}{OWNER_SUFFIX}")
            self._claimed = True

    def close(self) -> None:
        """Give up this one's share of the process's claim on the base (its sandboxes are gone)
        and of the Landlock sandbox's namespaces (the last spawner's close ends them, and with
        them whatever its commands left running)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._leased:
            landlock.HOLDER.release()
            self._leased = False
        if self._claimed:
            release_mark(f"{self._base}/{self._pid}{OWNER_SUFFIX}")
            self._claimed = False
        if self._disk_claimed:
            release_mark(f"{self._disk_base}/{self._pid}{OWNER_SUFFIX}")
            self._disk_claimed = False

    def expect_sizes(self, expected: Callable[[Action], int]) -> None:
        """Give the bytes each action is expected to move (its inputs' sizes and its outputs' at
        their last run, known before staging), so that a large one runs on disk (placement.py).
        Without a disk base there is nowhere to move to, and nothing is weighed."""
        if self._disk_base is not None:
            self._expect = expected
            self._weigh_from = weigh_from(str(self._base))

    def _place(self, action: Action) -> Path:
        """The base of `action`'s sandbox: the usual one, or the disk base when the action's
        expected bytes would not fit in a memory base (a `statvfs`, for large actions only)."""
        assert self._expect is not None and self._disk_base is not None
        expected = self._expect(action)
        if expected < self._weigh_from:
            return self._base
        if self._memory is None:
            self._memory = in_memory(str(self._base))
        if not self._memory or not needs_disk(expected, memory_free(str(self._base))):
            return self._base
        with self._lock:
            if not self._disk_claimed:
                claim(self._disk_base, SANDBOXES, holds_only_sandboxes, " (sandboxes on disk)")
                os.chmod(self._disk_base, 0o700)
                sweep_dead(self._disk_base)
                hold_mark(f"{self._disk_base}/{self._pid}{OWNER_SUFFIX}")
                self._disk_claimed = True
        return self._disk_base

    def run(self, action: Action, extra_env: Sequence[tuple[str, str]] = (),
            perturbation: Perturbation | None = None) -> SpawnResult:
        """Stage inputs, run the command, and report; the caller must `remove()` the sandbox.

        If staging or starting the command fails, the sandbox is removed before the error
        propagates.
        """
        return self.wait(self.start(action, extra_env, perturbation))

    def start(self, action: Action, extra_env: Sequence[tuple[str, str]] = (),
              perturbation: Perturbation | None = None) -> Running:
        """`run` in two halves: stage the sandbox and start the command, returning at once; `wait`
        for it. The calling thread is free meanwhile (the scheduler wraps up the previous
        action)."""
        base = self._base if self._expect is None else self._place(action)
        sandbox = f"{base}/{self._pid}-{next(self._counter)}"
        if perturbation is not None:
            sandbox += perturbation.name_suffix
        exec_root = sandbox + "/exec"
        out = err = -1
        try:
            if perturbation is not None and perturbation.reverse_staging:
                stage_reversed(self._root, action, sandbox, self._bwrap)
            else:
                self._staged[sandbox] = stage(self._root, action, sandbox, self._bwrap)
            env = base_environment(sandbox, self._search_path)
            env.update(action.env)
            env.update(extra_env)
            umask = -1
            if perturbation is not None:
                env = self._perturbed_env(env, perturbation, {*dict(action.env), *dict(extra_env)})
                umask = -1 if perturbation.umask is None else perturbation.umask
            err = _capture_file(sandbox, "stderr")
            if self._shell_free:
                running = self._launch_direct(action, sandbox, env, err, umask)
                if running is not None:
                    return running
            if not self._bwrap:
                argv = shell_argv(action.command)
            else:
                argv = self._namespaced(action, sandbox, exec_root)
                if "LD_PRELOAD" in env:
                    # for the command, not for bwrap: a preloaded libfaketime would make its
                    # semaphore in the host's /dev/shm, which the command, under a fresh /dev,
                    # then fails to open
                    argv[1:1] = ["--setenv", "LD_PRELOAD", env.pop("LD_PRELOAD")]
            out = _capture_file(sandbox, "stdout")
            return self._launch(action, argv, sandbox, env, out, err, umask)
        except BaseException:
            for fd in (out, err):
                if fd >= 0:
                    os.close(fd)
            self._remove_sandbox(sandbox)
            raise

    def wait(self, running: Running) -> SpawnResult:
        """Wait for a command `start` started, and report how it ended (see `run`)."""
        try:
            try:
                line = _Between() if running.rest is not None else None
                exit_code, timed_out, usage, note = self._reap(running, line)
                if line is not None:
                    exit_code, timed_out, usage = self._go_on(running, line, exit_code,
                                                              timed_out, usage, note)
                    note = b""
                stdout = _read_all(running.stdout) if running.stdout >= 0 else b""
                stderr = _read_all(running.stderr) + note
            finally:
                if running.stdout >= 0:
                    os.close(running.stdout)
                os.close(running.stderr)
        except BaseException:
            self._remove_sandbox(running.sandbox)
            raise
        elapsed = time.monotonic() - running.started
        exec_root = running.sandbox + "/exec"
        found = open_outputs(exec_root, running.outputs, running.out_dirs)
        return SpawnResult(exit_code, timed_out, Path(exec_root), tuple(found.missing), stdout,
                           stderr, elapsed,
                           usage, irregular=tuple(found.irregular), why=found.why, files=found)

    def _namespaced(self, action: Action, sandbox: str, exec_root: str) -> list[str]:
        """The bwrap argv for `action`, whose inputs are staged in `exec_root`.

        Inputs are bound read-only (by folder where possible, namespaces.input_binds). A large
        input, staged as a symlink into the workspace, becomes an empty file with the workspace
        file bound read-only onto it: the link's target is hidden inside.
        """
        assert isinstance(self._isolation, Isolation)
        linked: dict[str, str] = {}
        for path in action.inputs:
            target = f"{exec_root}/{path}"
            if os.path.islink(target):
                linked[target] = os.readlink(target)
                os.unlink(target)
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
        binds = [(f"{exec_root}/{rel}",) * 2 for rel in input_binds(action.inputs, action.outputs)]
        if linked:
            binds = [bind for bind in binds if bind[0] not in linked] + [(s, t)
                                                                         for t, s in linked.items()]
        return command(self._isolation, sandbox, exec_root, binds, NETWORK_TAG in action.tags,
                       shell_argv(action.command))

    def _perturbed_env(self, env: dict[str, str], perturbation: Perturbation,
                       declared: set[str]) -> dict[str, str]:
        if perturbation.tz is not None and "TZ" not in declared:
            env["TZ"] = perturbation.tz
        if perturbation.clock_shift is not None:
            library = self.faketime
            if library is not None:
                preload = env.get("LD_PRELOAD")
                env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
                env["FAKETIME"] = perturbation.clock_shift
                env["DONT_FAKE_MONOTONIC"] = "1"
        if perturbation.reverse_env_order:
            env = dict(reversed(env.items()))
        return env

    @property
    def faketime(self) -> str | None:
        """libfaketime's path (looked up once per spawner), or None when it is not installed."""
        if self._faketime is False:
            self._faketime = find_libfaketime()
        return self._faketime if isinstance(self._faketime, str) else None

    def remove(self, result: SpawnResult) -> None:
        """Remove a run's sandbox: what staging made and the command was declared to make, by name,
        and the whole tree by walking it only when something else is there (or a name changed
        kind)."""
        if result.files is not None:
            result.files.close()
        self._remove_sandbox(os.path.dirname(result.exec_root))

    def keep(self, result: SpawnResult, action: Action,
             passed_env: Sequence[tuple[str, str]] = ()) -> tuple[str, ...]:
        """`--keep-sandbox`: close the result's descriptors but leave its sandbox where it is
        (until a later build sweeps it: its owner is gone by then); returns lines saying where it
        is and how to run the command again in it, with the environment it had (secrets left
        out)."""
        if result.files is not None:
            result.files.close()
        sandbox = os.path.dirname(result.exec_root)
        self._staged.pop(sandbox, None)
        env = {**base_environment(sandbox, self._search_path), **dict(action.env),
               **dict(passed_env)}
        assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in env.items())
        lines = [f"sandbox kept (until the next build): {sandbox}",
                 f"run it again: cd {shlex.quote(str(result.exec_root))} && env -i {assignments} "
                 f"/bin/sh -c {shlex.quote(action.command)}"]
        if self._isolation is not None:
            lines.append("(that runs it without the namespace sandbox, which also hid the host's "
                         "files and network)")
        return tuple(lines)

    def _remove_sandbox(self, sandbox: str) -> None:
        """Remove a sandbox folder by what staging made there (see `remove_tree`), whatever stage
        the run reached: after it, or when staging or the command failed."""
        remove_tree(sandbox, self._staged.pop(sandbox, None))

    def cancel(self) -> None:
        """Kill every running action's process group (a signal, a critical error elsewhere);
        `stopped` counts them, and any command that was starting meanwhile."""
        with self._lock:
            self._cancelled = True
            running = list(self._running)
            self.stopped += len(running)
        for process in running:
            if isinstance(process, _Between):  # its next command will not start
                continue
            try:
                _kill_group(process.pid)  # a fork server's answer may come only now
            except OSError:  # it never started
                pass

    def _launch_direct(self, action: Action, sandbox: str, env: dict[str, str], err: int,
                       umask: int) -> Running | None:
        """Start the command without the shell when the shell would only run its programs
        (shellfree.py); None when it must run under the shell: other syntax, a program not found
        or not exec'able as it is (a script without `#!`), a first redirect target that cannot
        be opened. A line of several commands starts with its first (`_go_on` runs the others)."""
        script = parse(action.command)
        # PATH is always set (base_environment); without it the shell has a default of its own
        path = env.get("PATH")
        if script is None or path is None or not shell_free(env):
            return None
        exec_root = sandbox + "/exec"
        programs: dict[Step, str] = {}
        for joined, commands in enumerate(script.lists):
            for at, later in enumerate(commands):
                program = self._program(later.argv[0], path, exec_root)
                # once the first has run, the shell can no longer take over: the others must
                # exec as they are (the first's own failure to exec is seen below)
                if program is None or (programs and not self._execable(program, exec_root)):
                    return None
                programs[joined, at] = program
        direct, forked = script.command((0, 0)), not script.execs((0, 0))
        first = {**env, **shell_variables(programs[0, 0], forked)}  # a copy, for the shell
        capture = -1
        try:
            if direct.stdout is None or not script.single:
                capture = _capture_file(sandbox, "stdout")
            out, to = _redirected(direct, exec_root, umask, capture, err)
        except OSError:
            if capture >= 0:
                os.close(capture)
            return None
        opened = {out, to} - {capture, err}
        try:
            running = self._launch(action, list(direct.argv), sandbox, first, out, to, umask,
                                   programs[0, 0], direct, forked)
        except BaseException as error:
            for fd in opened | {capture} - {-1}:
                os.close(fd)
            # the program could not be exec'd: the shell runs and reports it
            if isinstance(error, OSError):
                return None
            raise
        for fd in opened:
            os.close(fd)  # the command has the files
        if not script.single:  # bash's own lines go to `err`, the programs' output to `capture`
            return replace(running, stdout=capture, stderr=err,
                           rest=_Rest(action, script, env, programs, umask))
        if direct.redirected:  # nothing to read back from a redirect target
            return replace(running, stdout=capture, stderr=err)
        return running

    def _execable(self, program: str, exec_root: str) -> bool:
        """shellfree.execable, remembered for programs found by absolute path."""
        if not program.startswith("/"):
            return execable(f"{exec_root}/{program}")
        known = self._execables.get(program)
        if known is None:
            known = self._execables[program] = execable(program)
        return known

    def _go_on(self, running: Running, line: _Between, code: int, timed_out: bool,
               usage: ResourceUsage | None, note: bytes) -> tuple[int, bool, ResourceUsage | None]:
        """Run the rest of a line after its first command ended with `code`, as `bash -e` would
        (Script.after): each command after the last, in its own session, with the line's
        deadline, its stdout captured or redirected, bash's lines about it written to stderr as
        bash would have written them. The process groups are killed when the line ends, not
        between its commands (under bash they all share bash's). Between two commands `line`
        stands for them in what a cancel stops, which then ends the line as if it had killed
        it. Returns the line's exit code, whether it timed out, and the usage of all its
        programs."""
        rest = running.rest
        assert rest is not None
        if running.process is None:  # cancelled before it started
            return code, timed_out, usage
        groups = [running.process.pid]
        step: Step = (0, 0)
        try:
            while True:
                if note:
                    write_all(running.stderr, note)
                following = rest.script.after(step, code)
                if timed_out or following is None:
                    return code, timed_out, usage
                if self._cancelled:  # stopped between two commands: as if killed
                    return -signal.SIGKILL, False, usage
                step = following
                direct, forked = rest.script.command(step), not rest.script.execs(step)
                program = rest.programs[step]
                try:
                    out, to = _redirected(direct, f"{running.sandbox}/exec", rest.umask,
                                          running.stdout, running.stderr)
                except _Unopened as unopened:
                    code, note = 1, redirect_failure(unopened.target, unopened.error)
                    continue
                try:
                    started = self._launch(
                        rest.action, list(direct.argv), running.sandbox,
                        {**rest.env, **shell_variables(program, forked)}, out, to,
                        rest.umask, program, direct, forked, fallback=False, line=line)
                except OSError as error:  # gone or changed since the line started
                    code, note = not_run(direct, error)
                    continue
                finally:
                    for fd in {out, to} - {running.stdout, running.stderr}:
                        os.close(fd)
                if started.process is None:  # cancelled meanwhile
                    return -signal.SIGTERM, False, usage
                groups.append(started.process.pid)
                code, timed_out, more, note = self._reap(
                    replace(started, deadline=running.deadline), line)
                usage = _together(usage, more)
        finally:
            with self._lock:
                self._running.discard(line)
            for group in groups:
                _kill_group(group)
                self._guard.forget(group)

    def _program(self, name: str, path: str, exec_root: str) -> str | None:
        """`find_program`, remembered for names looked up on a PATH of absolute folders only."""
        key = (name, path)
        found = self._programs.get(key)
        if found is None:
            found = find_program(name, path, exec_root)
            if found is not None and "/" not in name \
                    and all(f.startswith("/") for f in path.split(":")):
                self._programs[key] = found
        return found

    def _launch(self, action: Action, argv: list[str], sandbox: str, env: dict[str, str], out: int,
                err: int,
                umask: int = -1, program: str | None = None,
                direct: Direct | None = None, forked: bool = False,
                fallback: bool = True, line: _Between | None = None) -> Running:
        """Start `argv` in its own session, in the sandbox's `exec/`, on the processors it is given;
        `program`: the file to exec when `argv` runs without the shell, as `direct` says (a
        program bash would have `forked`); `line`: the line it continues (`_go_on`). Under
        Landlock the fork server starts it (and, with `fallback`, the shell, should a plain
        command's program not be exec'able as it is)."""
        started = time.monotonic()
        with self._lock:
            if self._cancelled:
                return Running(sandbox, action.outputs, out, err, started, None, (),
                               out_dirs=action.out_dirs, forked=forked)
            processors = self._pin(action.resources[0])
        process: subprocess.Popen[bytes] | Spawned | Answer
        try:
            if self._landlock or self._measured(action):
                process = self._serve(action, argv, sandbox, env, out, err, umask, processors,
                                      program, direct is not None and fallback)
                if not self._landlock:
                    self._guard.watch(process.pid)
            else:
                self._confine(processors)
                process = self._spawn(argv, program, sandbox + "/exec", env, out, err, umask)
                self._guard.watch(process.pid)
        except BaseException:
            with self._lock:
                self._unpin(processors)
            raise
        finally:
            if threading.current_thread() is threading.main_thread():
                self._confine(())  # only worker threads keep the mask of their last action
        # a cancel that came during the spawn did not see this process: kill it here (or in
        # `_reap`, when the fork server's answer is read)
        with self._lock:
            self._running.add(process)
            if line is not None:  # the line's next command runs: it is this process now
                self._running.discard(line)
            cancelled = self._cancelled
            self.stopped += cancelled and line is None  # else the cancel counted the line
        if cancelled and not isinstance(process, Answer):
            _kill_group(process.pid)
        deadline = started + action.timeout if action.timeout else None
        return Running(sandbox, action.outputs, out, err, started, process, processors,
                       deadline, direct, out_dirs=action.out_dirs, forked=forked)

    @staticmethod
    def _spawn(argv: list[str], program: str | None, cwd: str, env: dict[str, str], out: int,
               err: int, umask: int) -> subprocess.Popen[bytes] | Spawned:
        """Start a command in a session of its own: in one call into C where it can
        (native.py), else with `subprocess` (also for a umask of its own, or a program to look
        up on PATH)."""
        executable = program or argv[0]
        if umask < 0 and (program is not None or executable.startswith("/")):
            spawned = native.spawn(executable, argv, env, cwd, _devnull(), out, err)
            if spawned is not None:
                return spawned
        return subprocess.Popen(argv, executable=program, cwd=cwd, env=env, stdin=_devnull(),
                                stdout=out, stderr=err, start_new_session=True, umask=umask)

    def _measured(self, action: Action) -> bool:
        """Whether the folder sandbox starts `action`'s command through a fork server: when its
        memory is checked (`mem_mb`). A command posbuild starts itself is charged with
        posbuild's memory (`_own_peak_kb`), one the small server starts with next to nothing, so
        its peak is its own. Not where the launcher cannot be compiled (no C compiler): its peak
        may then be unknown."""
        if not action.resources[1] or self._isolation is not None:
            return False
        if self._launcher is None:  # two workers may both compile it, once: the same file
            try:
                self._launcher = landlock.compiled()
            except OSError:
                self._launcher = ""
        return bool(self._launcher)

    def _serve(self, action: Action, argv: list[str], sandbox: str, env: dict[str, str], out: int,
               err: int, umask: int, processors: tuple[int, ...], program: str | None,
               fallback: bool) -> Answer:
        """Start a command through the build's fork server (started with the first, and again
        should it be gone, killed from outside): under Landlock, with the shared rules and its
        own sandbox writable; in the folder sandbox, as `subprocess` would start it. `fallback`:
        the shell runs the action's command should `program` not be exec'able as it is."""
        rules = self._isolation.shared(NETWORK_TAG in action.tags).writing(sandbox) \
            if isinstance(self._isolation, Landlocked) else None
        request = (program or argv[0], argv, env, sandbox + "/exec", out, err, umask, processors,
                   action.command if fallback else None, rules)
        server = self._server or self._serving(None)
        try:
            return server.spawn(*request)
        except ServerGone:
            return self._serving(server).spawn(*request)

    def _serving(self, gone: ForkServer | None) -> ForkServer:
        """The fork server, started when there is none or when it is still the one `gone`: in
        the build's namespaces under Landlock, in none for the folder sandbox."""
        with self._lock:
            if self._server is gone:
                if gone is not None:
                    gone.close()
                if isinstance(self._isolation, Landlocked):
                    launcher = self._isolation.launcher
                    self._server = ForkServer(launcher, landlock.HOLDER.pid(launcher))
                else:
                    assert self._launcher
                    self._confine(())  # it keeps the mask it starts with: all of posbuild's
                    self._server = ForkServer(self._launcher)
            assert self._server is not None
            return self._server

    def _reap(self, running: Running,
              line: _Between | None = None) -> tuple[int, bool, ResourceUsage | None, bytes]:
        """Wait for a launched command: its exit code, whether it timed out, its usage, and what
        the shell would have added to its stderr (a command run without it that a signal killed).
        Its process group is killed once it ended, unless it is a command of a `line` (`_go_on`
        kills them all when the line ends); the line then counts as running in its place, for a
        cancel."""
        process = running.process
        if process is None:  # cancelled before it started
            return -signal.SIGTERM, False, None, b""
        try:
            pid = process.pid  # the fork server's answer is read here
        except OSError:
            with self._lock:
                self._running.discard(process)
                self._unpin(running.processors)
            raise
        if self._cancelled:  # a cancel may have come before the answer
            _kill_group(pid)
        timed_out = False
        try:
            if running.deadline is not None and not _ends_by(pid, running.deadline):
                timed_out = True
                _kill_group(pid)
            _, status, rusage = os.wait4(pid, 0)  # wait4, not wait: the rusage of the whole tree
        finally:
            with self._lock:
                self._running.discard(process)
                if line is not None:
                    self._running.add(line)
                self._unpin(running.processors)
            if line is None or timed_out or self._cancelled:
                _kill_group(pid)
            if line is None:
                self._guard.forget(pid)
        peak: int | None = rusage.ru_maxrss
        if not isinstance(process, Answer) and self._under_own_peak(rusage.ru_maxrss):
            peak = None  # posbuild's own memory, which the command was charged with (vfork)
        usage = ResourceUsage(rusage.ru_utime, rusage.ru_stime, peak,
                              rusage.ru_inblock * 512, rusage.ru_oublock * 512)
        code = os.waitstatus_to_exitcode(status)
        if isinstance(process, subprocess.Popen):
            process.returncode = code
        # posbuild's kills hit the shell too
        if running.direct is not None and not (timed_out or self._cancelled):
            code, note = shell_status(status, running.direct, pid, running.forked)
            return code, timed_out, usage, note
        return code, timed_out, usage, b""

    def _under_own_peak(self, peak_kb: int) -> bool:
        """Whether a command's peak is no higher than posbuild's own (`_own_peak_kb`). The
        kernel is asked only for a peak above the figure last read: posbuild's never falls, so
        a command of a build rarely costs a system call for it."""
        if peak_kb <= self._own_peak:
            return True
        self._own_peak = _own_peak_kb()
        return peak_kb <= self._own_peak

    def _pin(self, cpu: int) -> tuple[int, ...]:
        """Choose `cpu` processors for an action and count them as used (called under the lock):
        the least used, and among equals the one the spawning thread runs on first (asked only
        when equals compete for the last place)."""
        if cpu < 1 or not self._processors:
            return ()
        pinned = self._pinned
        ranked = sorted(self._processors, key=pinned.__getitem__)
        if cpu < len(ranked) and pinned[ranked[cpu - 1]] == pinned[ranked[cpu]]:
            here = current_processor()
            ranked.sort(key=lambda p: (pinned[p], p != here))
        chosen = tuple(sorted(ranked[:cpu]))
        for processor in chosen:
            self._pinned[processor] += 1
        return chosen

    def _confine(self, processors: tuple[int, ...]) -> None:
        """Give the calling thread the mask its next command inherits: `processors`, or all of
        posbuild's when empty. A system call only when the thread's mask differs, which for a
        worker running one action after another is rarely the case."""
        wanted = processors or self._processors
        if wanted and getattr(self._masks, "current", self._processors) != wanted:
            os.sched_setaffinity(0, wanted)
            self._masks.current = wanted

    def _unpin(self, processors: tuple[int, ...]) -> None:
        for processor in processors:
            self._pinned[processor] -= 1


_null: int | None = None  # /dev/null, opened once per process for every command's stdin


def _devnull() -> int:
    """A descriptor of /dev/null (`subprocess.DEVNULL` would open and close one per command)."""
    global _null
    if _null is None:
        _null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _null


class _Unopened(OSError):
    """A redirect target that could not be opened, and why."""

    def __init__(self, target: str, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.target, self.error = target, error


def _redirected(direct: Direct, exec_root: str, umask: int, stdout: int,
                stderr: int) -> tuple[int, int]:
    """The stdout and stderr of `direct`'s program: its redirect targets, opened in the order
    written as bash opens them, else `stdout` and `stderr`. Raises _Unopened (having closed
    what it opened) for a target that cannot be opened."""
    opened = {1: stdout, 2: stderr}
    try:
        for fd, target, append in direct.redirects:
            path = target if target.startswith("/") else f"{exec_root}/{target}"
            try:
                opened[fd] = _open_redirect(path, umask, append)
            except OSError as error:
                raise _Unopened(target, error) from None
    except BaseException:
        for fd in {opened[1], opened[2]} - {stdout, stderr}:
            os.close(fd)
        raise
    return opened[1], opened[2]


def _open_redirect(path: str, umask: int, append: bool = False) -> int:
    """Open a `> path` target as the shell does (created 0666 less the umask, else truncated;
    appended to for `>>`). `umask` >= 0: the command's umask differs from posbuild's, so a new
    file gets its mode from it."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | os.O_CLOEXEC
    if umask < 0:
        return os.open(path, flags, 0o666)
    try:
        fd = os.open(path, flags | os.O_EXCL, 0o600)
    except FileExistsError:
        return os.open(path, flags, 0o666)
    os.fchmod(fd, 0o666 & ~umask)
    return fd


def _capture_file(sandbox: str, name: str) -> int:
    """Where the command's stdout or stderr goes: an anonymous memory file where the system has
    them (nothing to create or remove in the sandbox; the bytes are read into memory anyway),
    else a file in the sandbox."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name, os.MFD_CLOEXEC)
    return os.open(f"{sandbox}/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _read_all(fd: int) -> bytes:
    """Everything written to a capture file (its offset is wherever the command left it)."""
    return read_upto(fd, os.fstat(fd).st_size)


def _own_peak_kb() -> int:
    """posbuild's own peak memory (KiB). A command it starts shares its memory until the exec
    (vfork), and the kernel counts that memory in the command's peak (`ru_maxrss`): a figure no
    higher than this one says only that the command took no more. A command the fork server
    starts (Landlock, `_measured`) is charged with that small process's memory alone."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _together(usage: ResourceUsage | None, more: ResourceUsage | None) -> ResourceUsage | None:
    """The usage of two programs run one after the other (a peak left unknown is below
    posbuild's own, so below any peak that is known)."""
    if usage is None or more is None:
        return usage or more
    peaks = [peak for peak in (usage.max_rss_kb, more.max_rss_kb) if peak is not None]
    return ResourceUsage(usage.user_s + more.user_s, usage.system_s + more.system_s,
                         max(peaks) if peaks else None,
                         usage.read_bytes + more.read_bytes,
                         usage.written_bytes + more.written_bytes)


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_: type[Spawner[Running]] = LocalSpawner  # mypy checks that it keeps the engine's contract
