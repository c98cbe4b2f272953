"""Layer 0: the orphan guard — a small process that kills the folder sandbox's commands when
posbuild dies, however it dies.

A mechanism of its own (a process, a pipe, a tiny program), apart from the sandbox that uses it
(sandbox.py); the namespace sandbox needs none (bwrap's `--die-with-parent`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

# The guard: a small process of its own that kills the process groups posbuild names to it when
# posbuild's end closes its pipe, however posbuild ends. Its lines: "<group>" started, "-<group>"
# reaped (a pipe holds thousands while it sleeps). It ignores the signals a terminal or `timeout`
# sends to posbuild's group.
_GUARD = """\
import os, signal, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
groups, rest = set(), b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    time.sleep(0.02)  # let lines gather: one wake-up per 20 ms, not two per action
    *lines, rest = (rest + chunk).split(b"\\n")
    for line in lines:
        if line.startswith(b"-"):
            groups.discard(int(line[1:]))
        elif line:
            groups.add(int(line))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


class OrphanGuard:
    """Makes sure no command of the folder sandbox outlives posbuild, even one killed by SIGKILL.

    Commands run in sessions of their own (so a terminal's Ctrl-C reaches posbuild, which stops
    them itself), so nothing the kernel does on posbuild's death reaches them. PR_SET_PDEATHSIG
    would, but it must be set in the child between fork and exec (`preexec_fn`: unsafe with
    threads, and it costs the fast spawn path), and it fires when the *thread* that forked ends.
    Instead one guard process per posbuild process, started with its first command, holds the
    read end of a pipe; posbuild writes each command's group to it (one small write per start and
    per end). When posbuild dies the pipe closes, and the guard kills every group still named.
    """

    def __init__(self) -> None:
        self._fd = -1  # the pipe's write end; -2: no guard could be started
        self._pid = 0  # the process that started the guard (a forked child starts its own)
        # held: a Popen dropped while its process runs is polled by every later Popen
        # (subprocess's own clean-up), one wait4() per command started
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def watch(self, group: int) -> None:
        with self._lock:
            if self._pid != os.getpid():
                (self._fd, self._process), self._pid = self._start(), os.getpid()
            self._send(b"%d\n" % group)

    def forget(self, group: int) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._send(b"-%d\n" % group)

    def _send(self, line: bytes) -> None:
        """Tell the guard; if it is gone (someone killed it), commands go on unguarded."""
        if self._fd >= 0:
            try:
                os.write(self._fd, line)
            except OSError:
                os.close(self._fd)
                self._fd = -2

    @staticmethod
    def _start() -> tuple[int, subprocess.Popen[bytes] | None]:
        """Start the guard: the write end of its pipe (-2: none could be started), and its
        process."""
        read, write = os.pipe()
        try:
            # isolated (-I): started in the workspace, whose own `signal.py` must not be imported
            process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD], stdin=read,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True, close_fds=True)
        except OSError:
            os.close(write)
            return -2, None
        finally:
            os.close(read)
        return write, process


class NoGuard(OrphanGuard):
    """The guard of commands that need none (bwrap's --die-with-parent kills them)."""

    def watch(self, group: int) -> None:
        pass

    def forget(self, group: int) -> None:
        pass


ORPHANS = OrphanGuard()  # one guard per process, shared by its spawners
NO_GUARD = NoGuard()
