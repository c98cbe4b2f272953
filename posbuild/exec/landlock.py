"""Layer 1: the Landlock sandbox — each action's command exec'd through a small C launcher.

One bwrap per action costs ~6 ms, most of it the kernel making and tearing down namespaces
(docs/sandboxes.md, "Cost of the namespace sandbox"). Here the namespaces are made once per
build and each command only joins them, and the file system is closed by Landlock rules
instead of mounts: together under 1 ms per action more than the folder sandbox.

The launcher (launcher.c, shipped beside this module) is compiled on first use with the
system's C compiler into the user's cache (compiled.py). Python cannot run between fork and exec
without costing milliseconds: so a program of its own.

Per build, `launcher hold` makes a user, mount (the host's, with a /proc of its own), PID,
network (loopback only), IPC and UTS namespace, whose PID 1 lives until posbuild closes the pipe
it reads: when the build's spawners close (`Holder`), or when posbuild ends, however it ends.
The kernel then kills every process in them, one that left its process group (`setsid`)
included. The build's fork server (forkserver.py, `launcher serve`) joins them once and makes
every command in the PID namespace, as posbuild's child; a command joins the network namespace
unless the action is tagged `network`. (`launcher -N`, a launcher exec'd per action that joins
them, forks the command and passes its status on, is what `probe` runs.) The command's process
drops every capability, sets no_new_privs and restricts itself with Landlock:

* read and run: everything but the hidden paths (the workspace, the store, the sandbox base,
  `/tmp`, `/dev` but its common devices, `/run` without the network tag, the secrets
  file), as rules on the entries of their parent folders (`readable`); and the `visible` paths
  (the interpreter ...);
* read and write: the action's sandbox folder, the `writable` folders, /dev/null and the like;
* TCP bind and connect denied unless tagged `network`; no signal to and no abstract Unix socket
  of a process outside the action (Landlock ABI 6).

What it does not hide, against bwrap: `stat` of a hidden path still says it exists (and its size
and times); a folder above a hidden one can still be walked through but not listed;
/proc shows the build's other processes (their command lines; not their environment or files),
not the host's (the build's mount namespace mounts its PID namespace's /proc). The
inputs are copies in a writable folder, not read-only binds. A command's process that left its
process group ends with the build, not with its action: a PID namespace
per action, nested, costs 0.3-0.5 ms more (docs/sandboxes.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from posbuild.exec.compiled import compile_cached, compiled_path
from posbuild.host.paths import within

MIN_ABI = 6  # signal and abstract Unix socket scopes
SOURCE = Path(__file__).with_name("launcher.c")
PROBE_TIMEOUT = 20.0
# the devices a command may write, and what else of /dev it may read (bwrap's fresh /dev has
# the same): a rule per device of the host would cost a system call each per action
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
DEVICE_LINKS = ("/dev/fd", "/dev/pts", "/dev/ptmx")
# hidden from every action: the host's temporary files, its devices (but those above)
HIDDEN = ("/tmp", "/dev")
RUN = "/run"  # hidden too, unless the action is tagged `network`

_CREATE, _VERSION_FLAG = 444, 1


@dataclass(frozen=True, slots=True)
class Rules:
    """What a command under Landlock may do (a part of a fork server's request): the paths it
    may read and run, those it may also write, and whether it may use TCP (then it keeps the
    host's network)."""

    read: tuple[str, ...]
    write: tuple[str, ...]
    tcp: bool

    def writing(self, folder: str) -> Rules:
        """These rules with `folder` writable too (an action's own sandbox)."""
        return Rules(self.read, (*self.write, folder), self.tcp)


@dataclass(frozen=True, slots=True)
class Landlocked:
    """What every action under Landlock shares: the launcher and the rules every command gets
    before its own sandbox is added (the build's namespaces, which may be made anew between
    builds, are joined when a command starts).

    `rules` join the build's network namespace and deny TCP; `rules_network` keep the host's
    network and `/run` (an action tagged `network`).
    """

    launcher: str
    rules: Rules
    rules_network: Rules

    def shared(self, network: bool) -> Rules:
        """The shared rules of an action, tagged `network` or not."""
        return self.rules_network if network else self.rules


def abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or it is disabled)."""
    import ctypes  # imported here: only a build that runs actions asks

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(int(libc.syscall(_CREATE, None, 0, _VERSION_FLAG)), 0)


def launcher_path(folder: Path | None = None) -> Path:
    """The compiled launcher of this source: its name carries the source's digest."""
    return compiled_path(SOURCE, "launcher", folder)


def compiled(folder: Path | None = None) -> str:
    """The launcher's path, compiling it first when it is missing or does not match its digest
    file (compiled.py). Raises OSError with the reason when it cannot be had (no compiler, it
    failed ...)."""
    # static starts faster; not every system can link it
    return compile_cached(SOURCE, "launcher", (["-static"], []), folder)


class Holder:
    """The process holding the build's namespaces (`launcher hold`'s PID 1): started by the first
    action that needs it, it ends when posbuild closes (or loses) the pipe it reads — when the
    last spawner using it closes (`lease`, `release`: the end of a build, also in a long-lived
    process), or when posbuild ends, however it ends."""

    def __init__(self) -> None:
        self._pid = 0  # the process that made it; a forked child makes its own
        self._holder = ""
        self._pipe = -1
        self._leases = 0
        self._lock = threading.Lock()

    def pid(self, launcher: str) -> str:
        """The holder's pid (as text, for the launcher's argv), started when needed. Raises
        OSError when the namespaces cannot be made here."""
        if self._pid == os.getpid() and self._holder:  # the per-action path: no lock
            return self._holder
        with self._lock:
            if self._pid != os.getpid() or not self._holder:
                self._start(launcher)
            return self._holder

    def _start(self, launcher: str) -> None:
        read, write = os.pipe()
        try:
            done = subprocess.run([launcher, "hold"], stdin=read, capture_output=True,
                                  start_new_session=True, timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.close(write)
            raise OSError("the launcher did not make its namespaces in time") from None
        except OSError:
            os.close(write)
            raise
        finally:
            os.close(read)
        holder = done.stdout.decode().strip()
        if done.returncode != 0 or not holder.isdigit():
            os.close(write)
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise OSError(lines[-1] if lines else f"launcher hold exited with {done.returncode}")
        if self._pid != os.getpid():
            self._leases = 0  # a forked child's own
        self._pid, self._holder, self._pipe = os.getpid(), holder, write

    def lease(self) -> None:
        """A spawner will run actions in the namespaces (until its `release`)."""
        with self._lock:
            self._leases += 1

    def release(self) -> None:
        """A spawner is done: the last one ends the namespaces, and what still runs in them."""
        with self._lock:
            self._leases = max(0, self._leases - 1)
            if self._leases == 0:
                self._close()

    def close(self) -> None:
        """End the namespaces (and whatever still runs in them) now."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._pid == os.getpid() and self._pipe >= 0:
            os.close(self._pipe)
        self._pipe, self._holder = -1, ""


HOLDER = Holder()  # one per process, shared by its spawners


def readable(hidden: Iterable[str]) -> list[str]:
    """What may be read so that everything but `hidden` may: each entry of every folder above a
    hidden path, except the hidden ones and those above them (Landlock rules only grant, so a
    folder above a hidden path gets no rule: it can be walked through, not listed). Entries are
    resolved (a rule on a link is a rule on its target), and one resolving into or above a
    hidden path is left out."""
    resolved = sorted({os.path.realpath(h) for h in hidden})
    shut = [h for h in resolved if not any(within(h, o) and h != o for o in resolved)]
    above = {os.path.dirname(h) for h in shut}
    for folder in list(above):
        while folder != "/":
            folder = os.path.dirname(folder)
            above.add(folder)
    granted: list[str] = []
    for folder in sorted(above):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real in above or any(within(real, h) or within(h, real) for h in shut):
                continue
            granted.append(path)  # resolved by the launcher (`/dev/fd` is its own)
    return granted


def landlocked(launcher: str, hidden: Iterable[str], visible: Iterable[str],
               writable: Iterable[str] = (), masked: Iterable[str] = ()) -> Landlocked:
    """The rules every action shares.

    `hidden`: folders no action may read (the workspace, the store, the sandbox base); `HIDDEN`
    and `RUN` come on top. `visible`: files and folders readable even inside a hidden one (the
    interpreter, tools). `writable`: folders readable and writable whole, a hidden folder inside
    one included (WRITABLE_VARIABLE: Landlock cannot take back a right inside a folder it
    granted). `masked`: files no action may read (the secrets file).
    """
    hidden = [*hidden, *HIDDEN, *masked]
    opened = sorted({os.path.abspath(w) for w in writable if w.startswith("/")})
    shown = sorted({os.path.realpath(v) for v in visible if os.path.exists(v)})
    write = (*DEVICES, *opened)

    def rules(hidden: list[str], tcp: bool) -> Rules:
        return Rules((*readable(hidden), *DEVICE_LINKS, *shown), write, tcp)
    return Landlocked(launcher, rules([*hidden, RUN], False), rules(hidden, True))


def command(landlocked: Landlocked, sandbox: str, network: bool, file: str,
            argv: Sequence[str], script: str | None = None,
            preload: str | None = None) -> list[str]:
    """The argv of the launcher exec'd for one command (what `probe` runs; the build's commands
    are started by the fork server instead): it execs `file` (with `argv`, argv[0] as the shell
    would give it) with `sandbox` writable. `script`: what bash runs when `file` cannot be
    exec'd (a plain command's program without `#!`). `preload`: LD_PRELOAD for the command
    alone (libfaketime). The build's namespaces are started here when none are held (`HOLDER`)."""
    rules = landlocked.shared(network).writing(sandbox)
    head = [landlocked.launcher, "-N", HOLDER.pid(landlocked.launcher)]
    head += [*(("-t",) if rules.tcp else ()), "-r", *rules.read, "-w", *rules.write]
    if script is not None:
        head += ["-c", script]
    if preload is not None:
        head += ["-L", preload]
    return [*head, "--", file, *argv]


def probe(landlocked: Landlocked) -> str | None:
    """Run `true` through the launcher once: None when it works, else the reason in a few
    words."""
    true = shutil.which("true", path="/usr/bin:/bin") or "/bin/true"
    try:
        done = subprocess.run(command(landlocked, "/dev/null", False, true, ["true"]),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=PROBE_TIMEOUT, start_new_session=True)
    except (OSError, subprocess.SubprocessError) as error:
        return f"the launcher: {getattr(error, 'strerror', None) or error}"
    if done.returncode == 0:
        return None
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return f"the launcher exited with {done.returncode}" + (f": {lines[-1]}" if lines else "")

