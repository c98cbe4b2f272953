"""Layer 2: the fork server — one small C process per build that starts every action's command.

Starting a command from Python costs more than the command itself when the command is cheap, and
under Landlock the launcher was exec'd on top of it: a second exec that joined six namespaces and
forked again (~0.5 ms per action, docs/sandboxes.md). Here the launcher (launcher.c, `launcher
serve`) runs once per spawner, joins the build's namespaces once (`-N`), gives up what every
command gives up (the capability bounding set, root's securebits, new privileges) once, opens
the rules every action shares once, and makes each command itself, as posix_spawn does (sharing
its memory until the exec: nothing is copied), on another processor than posbuild's; the command
then only drops its capabilities, applies its Landlock rules and execs.

Each command is made posbuild's own child (CLONE_PARENT): posbuild waits for it, with its usage,
and kills its process group exactly as for a command it forked itself, and is woken by the kernel
when it ends, not by another process. A request is one message on a SOCK_SEQPACKET socket
(launcher.c documents the bytes) with the command's stdout, its stderr and the write end of a
pipe of the request's own, on which the server writes the pid: each thread reads its own answer,
so nothing is demultiplexed. A request does not wait for its answer (`Answer`): on a busy machine
the server may wait a millisecond for a processor, and meanwhile posbuild's thread wraps up the
action before; the pid is read when it is first needed. The server reads its socket as fd 0 and
exits at its end, when posbuild closes it or dies, however it dies; the commands still running
then end with the build's PID namespace (landlock.py).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
from typing import Sequence

from posbuild.exec.landlock import Rules


LANDLOCK, TCP = 1, 2  # request flags
_HEAD = struct.Struct("<7i")
_PID = struct.Struct("<i")
# Larger requests go in a memory file: a socket's send buffer holds ~200 KiB, and the server
# reads messages into a buffer of 64 KiB.
MESSAGE_LIMIT = 1 << 16


class ServerGone(OSError):
    """The fork server ended (killed from outside) before it started the command."""


class Answer:
    """The pid of a command the server was asked to start, read from its answer pipe when first
    asked for (`pid`), once, by whichever thread asks first."""

    def __init__(self, pipe: int, file: str) -> None:
        self._pipe = pipe
        self._file = file
        self._pid = 0
        self._error: OSError | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """The command's pid (also its process group), once the server has made it; raises
        OSError (ServerGone) when it could not."""
        with self._lock:
            if not self._pid and self._error is None:
                try:
                    said = _read_exactly(self._pipe, _PID.size)
                finally:
                    os.close(self._pipe)
                pid = _PID.unpack(said)[0] if said is not None else 0
                if said is None:
                    self._error = ServerGone("the fork server ended before it said whether it "
                                             f"started {self._file}")
                elif pid < 0:
                    self._error = OSError(-pid, f"the fork server could not start {self._file}: "
                                                f"{os.strerror(-pid)}")
                self._pid = max(pid, 0)
            if self._error is not None:
                raise self._error
            return self._pid


class ForkServer:
    """One running `launcher serve`; `spawn` may be called from any thread."""

    def __init__(self, launcher: str, holder: str | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [launcher, "serve", *(("-N", holder) if holder else ())]
        try:
            # its own session: a terminal's Ctrl-C reaches posbuild, which cancels the commands
            self._process = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=subprocess.DEVNULL,
                                             start_new_session=True, close_fds=True)
        finally:
            theirs.close()
        self._socket = ours
        self._lock = threading.Lock()

    def spawn(self, file: str, argv: Sequence[str], env: dict[str, str], cwd: str, stdout: int,
              stderr: int, umask: int = -1, processors: Sequence[int] = (),
              script: str | None = None, rules: Rules | None = None) -> Answer:
        """Ask for `file` to be started with `argv` (argv[0] as given) and exactly `env`, in `cwd`,
        in a session of its own, as a child of this process (wait for it with os.wait4);
        returns at once. `script`: what bash runs when `file` cannot be exec'd as it is (a
        program without `#!`). Raises ServerGone when the server has ended."""
        flags = 0 if rules is None else LANDLOCK | (TCP if rules.tcp else 0)
        read, write = (rules.read, rules.write) if rules is not None else ((), ())
        strings = [file, script or "", cwd, *argv, *(f"{k}={v}" for k, v in env.items()),
                   *read, *write]
        message = _HEAD.pack(umask, flags, len(processors), len(argv), len(env), len(read),
                             len(write)) \
            + struct.pack(f"<{len(processors)}i", *processors) \
            + "\0".join(strings).encode("utf-8", "surrogateescape") + b"\0"
        fds = [stdout, stderr]
        if len(message) > MESSAGE_LIMIT:  # a command of hundreds of KiB: in a file instead
            held = os.memfd_create("request", os.MFD_CLOEXEC)
            try:
                os.write(held, message)
            except BaseException:
                os.close(held)
                raise
            message = b"F"  # not empty: an empty message reads as the socket's end
        else:
            held = -1
        answer, answering = os.pipe2(os.O_CLOEXEC)
        fds += [answering] + ([held] if held >= 0 else [])
        try:
            self._socket.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              struct.pack(f"{len(fds)}i", *fds))])
        except (BrokenPipeError, ConnectionError):
            os.close(answer)
            raise ServerGone(f"the fork server is gone; {file} was not started") from None
        except BaseException:
            os.close(answer)
            raise
        finally:
            os.close(answering)
            if held >= 0:
                os.close(held)
        return Answer(answer, file)

    def close(self) -> None:
        """End the server (it exits at the end of its socket)."""
        with self._lock:
            if self._socket.fileno() < 0:
                return
            self._socket.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _read_exactly(fd: int, size: int) -> bytes | None:
    """`size` bytes from an answer pipe (written at once, so read at once), or None at its end."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
