"""The build server of one workspace, started by the client (client.SERVER_MAIN) with its root.

Bazel keeps a server so that a build does not start a JVM; posbuild keeps one so that a build
does not start Python, import the engine, read the graph cache and the up-to-date state, and
`stat()` every file to learn that nothing changed. The client (posbuild/client.py) connects to
`.posbuild/server.sock`, sends its arguments, working folder, environment, umask and file
descriptors 0-2, and this process runs the ordinary command-line build with them, in its main
thread, its output going straight to the client's terminal or pipes. A ChangeFeed
(engine/changefeed.py) watches the workspace, so that a build whose files did not change needs
no `stat()` of them.

Threads: the main thread runs one build at a time (a second client waits, told so as by the
workspace lock), sending each client TURN when its build comes and taking its descriptors with
its GO; one thread accepts connections and greets each client (ACCEPTED at once, or DECLINED
for another posbuild installation, another mount namespace or limits, or `[build] server =
false`); one sends
every waiting or building client a HEARTBEAT four times a second, so that a client can tell a
long build from a hung server; one per build reads the client's signals and notices when it
goes away (then the build stops as a one-shot build does on SIGHUP).

The server stops when it has been idle for `[build] server_idle` seconds, on `posbuild
shutdown` or SIGTERM, when its socket is removed or replaced (`clean --all`), when posbuild's
own files change (an upgrade), and after a build during which its watch could not be trusted (an
inotify queue overflow, the watch limit): that build checks every file by `stat()` and says so.
When the watch limit is the reason, it leaves `.posbuild/server.off` so that clients build
one-shot for an hour instead of starting a server that cannot watch.
"""

from __future__ import annotations

import fcntl
import functools
import gc
import io
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from posbuild.client import (ACCEPTED, DECLINED, DISABLED, ELSEWHERE, EXITED, GO, HEARTBEAT,
                             OUTDATED, QUIT, REQUEST, SIGNAL, TURN, context, identity,
                             message)
from posbuild.core.layout import SERVER_LOCK, SERVER_LOG, SERVER_OFF, SERVER_SOCKET, STATE_DIR
from posbuild.engine.changefeed import ChangeFeed
from posbuild.host.owned import open_own_file
from posbuild.workspace.config import Config, load_config

HEARTBEAT_S = 0.25
TICK_S = 1.0  # how often an idle server looks at its socket, its code and the clock
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Request:
    """One client's build: its connection, descriptors and what it asked for."""

    conn: socket.socket
    fds: list[int]  # the client's 0, 1 and 2, from its GO
    identity: str  # the client's installation (client.identity)
    context: str  # the client's namespace, groups and limits (client.context)
    cwd: str
    umask: int
    encoding: str
    args: list[str]
    env: dict[str, str]
    lock: threading.Lock = field(default_factory=threading.Lock)  # one writer on `conn`

    def send(self, kind: bytes, number: int = 0) -> bool:
        """Send one message; False when the client is gone."""
        with self.lock:
            try:
                self.conn.sendall(message(kind, number))
                return True
            except OSError:
                return False

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.conn.close()


class Server:
    """The server's state, shared by its threads."""

    def __init__(self, config: Config, listener: socket.socket, feed: ChangeFeed) -> None:
        self.config = config
        self.listener = listener
        self.feed = feed
        self.requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()  # None: wake up
        self.quitters: list[socket.socket] = []  # `posbuild shutdown`s waiting for the end
        self.waiting: list[Request] = []  # queued or building: they get heartbeats
        self.current: Request | None = None
        self.guard = threading.Lock()  # current, waiting, stopping
        self.stopping = ""  # why the server stops ("" while it runs)
        self.socket_inode = _inode(_socket_path(config.root))
        self.code = _code_stamp()
        self.folders = _folders_stamp()
        self.context = context()
        self.last_build = time.monotonic()
        self.collected = True

    # ---- the main thread ----------------------------------------------------------------------

    def run(self) -> None:
        """Serve builds until a reason to stop."""
        threading.Thread(target=self._accept, daemon=True, name="accept").start()
        threading.Thread(target=self._heartbeat, daemon=True, name="heartbeat").start()
        _idle_signals(self)
        while not self.stopping:
            try:
                request = self.requests.get(timeout=TICK_S)
            except queue.Empty:
                self._tick()
                continue
            except KeyboardInterrupt:  # a client's signal that came just after its build
                continue
            if request is not None:
                self._serve(request)
        _log(f"stopping: {self.stopping}")
        while True:  # the clients still waiting start a server of their own
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                request.send(DECLINED, OUTDATED)
                request.close()

    def _tick(self) -> None:
        if not self.collected:  # a full collection takes milliseconds: not between two builds
            gc.collect()
            self.collected = True
        if time.monotonic() - self.last_build > self.config.server_idle:
            self.stop(f"idle for {self.config.server_idle} s")
        elif _inode(_socket_path(self.config.root)) != self.socket_inode:
            self.stop("its socket was removed")
        elif _code_stamp() != self.code:
            self.stop("posbuild's own files changed")

    def _serve(self, request: Request) -> None:
        """Run one request once its client says go; tell it the exit code."""
        try:
            if not _go(request):
                return
            if _folders_stamp() != self.folders:
                self.stop("posbuild's own files changed")
                request.send(DECLINED, OUTDATED)
                return
            with self.guard:
                self.current = request
            threading.Thread(target=self._listen, args=(request,), daemon=True,
                             name="client").start()
            try:
                code = self._build(request)
            except KeyboardInterrupt as late:  # the client's signal, after the build's end
                code = getattr(late, "exit_code", 130)
            except Exception:  # noqa: BLE001 - e.g. its folder is gone: the client builds
                _log("a build could not start here:\n" + traceback.format_exc())
                code = -1
            with self.guard:
                self.current = None
            _idle_signals(self)
            if code >= 0:
                request.send(EXITED, code)
            else:
                request.send(DECLINED, ELSEWHERE)
        except KeyboardInterrupt:
            pass
        finally:
            with self.guard:
                if request in self.waiting:
                    self.waiting.remove(request)
            request.close()
            self.last_build = time.monotonic()
            self.collected = False
        self.feed.confirm()

    def _build(self, request: Request) -> int:
        """The command-line build, in this process, with the client's world around it."""
        saved = [os.dup(fd) for fd in (0, 1, 2)]
        saved_env = dict(os.environ)
        saved_streams = (sys.stdout, sys.stderr)
        try:
            config = load_config(self.config.root)
        except Exception:  # noqa: BLE001 - the one-shot build will report it, word for word
            config = self.config
        self.config = config
        if not config.server:
            self.stop("[build] server = false")
        trouble = self.feed.trouble
        try:
            for target, fd in enumerate(request.fds):
                os.dup2(fd, target)
            os.chdir(request.cwd)
            os.umask(request.umask)
            os.environ.clear()
            os.environ.update(request.env)
            sys.stdout = _stream(1, request.encoding, "strict")
            sys.stderr = _stream(2, request.encoding, "backslashreplace")
            if trouble:
                sys.stderr.write(f"posbuild: the build server cannot trust its watch of the "
                                 f"workspace ({trouble}); this build checks every file, and "
                                 f"the server stops after it\n")
                self.stop(trouble)
            return _main(request.args, None if trouble else self.feed)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            sys.stdout, sys.stderr = saved_streams
            for target, fd in enumerate(saved):
                os.dup2(fd, target)
                os.close(fd)
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(self.config.root)
            os.umask(0o022)
            gc.enable()
            if self.feed.trouble and not self.stopping:
                self.stop(self.feed.trouble)
            if self.feed.limit_reached:
                _write_off(self.config.root, self.feed.trouble)

    def stop(self, why: str) -> None:
        with self.guard:
            self.stopping = self.stopping or why

    # ---- the other threads --------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._greet, args=(conn,), daemon=True,
                             name="greet").start()

    def _greet(self, conn: socket.socket) -> None:
        """Read a client's request and answer at once: accepted, declined, or stopping."""
        try:
            request = _read_request(conn)
        except (OSError, ValueError):
            conn.close()
            return
        if request is None:  # QUIT: `posbuild shutdown`, answered by closing once stopped
            with self.guard:
                self.quitters.append(conn)
            self.stop("posbuild shutdown")
            self.requests.put(None)  # wake the main thread now
            return
        declined = OUTDATED if request.identity != identity() else \
            DISABLED if not self.config.server else \
            ELSEWHERE if request.context != self.context else 0
        if declined:
            request.send(DECLINED, declined)
            request.close()
            if declined == OUTDATED:
                self.stop("a client of another posbuild installation")
            return
        with self.guard:
            if self.stopping:
                request.send(DECLINED, OUTDATED)
                request.close()
                return
            busy = self.current is not None or bool(self.waiting)
            self.waiting.append(request)
        if request.send(ACCEPTED, int(busy)):
            self.requests.put(request)

    def _heartbeat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self.guard:
                waiting = list(self.waiting)
            for request in waiting:
                request.send(HEARTBEAT)

    def _listen(self, request: Request) -> None:
        """Pass the client's signals to the build; a client that goes away stops it (SIGHUP)."""
        while True:
            try:
                data = request.conn.recv(1)
                if data == SIGNAL:
                    data += request.conn.recv(1)
            except OSError:
                data = b""
            if len(data) == 2 and data[1] in FORWARDED:
                signum = data[1]
            elif not data:
                signum = signal.SIGHUP
            else:
                continue
            with self.guard:
                if self.current is not request:
                    return
                signal.pthread_kill(threading.main_thread().ident or 0, signum)
            if not data:
                return


def _go(request: Request) -> bool:
    """Tell the client its build's turn has come, and take its GO and descriptors 0-2 (it may
    have given up waiting: then nothing runs)."""
    if not request.send(TURN):
        return False
    request.conn.settimeout(1.0)
    try:
        data, ancillary, _, _ = request.conn.recvmsg(1, socket.CMSG_SPACE(3 * 4))
    except OSError:
        return False
    finally:
        request.conn.settimeout(None)
    request.fds = _descriptors(ancillary)
    return data == GO and len(request.fds) == 3


def _main(args: list[str], feed: ChangeFeed | None) -> int:
    """Run the command line as `posbuild ARGS` would, returning its exit code."""
    from posbuild import cli

    cli.server_vouch = feed
    try:
        cli.main(args)
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else 0 if code is None else 1
    except KeyboardInterrupt:  # a client's signal after the build had handled its own
        raise
    except BaseException:  # noqa: BLE001 - a defect: shown as a one-shot build would show it
        traceback.print_exc()
        return 1
    finally:
        cli.server_vouch = None
    return 0


def _read_request(conn: socket.socket) -> Request | None:
    """The client's request (None for QUIT)."""
    data = conn.recv(65536)
    if data[:1] == QUIT:
        return None
    if data[:1] != REQUEST or len(data) < 5:
        raise ValueError("not a request")
    (length,) = struct.unpack("!I", data[1:5])
    while len(data) < length + 5:
        more = conn.recv(length + 5 - len(data))
        if not more:
            raise ValueError("a request cut short")
        data += more
    fields = [os.fsdecode(part) for part in data[5:].split(b"\0")]
    who, where, cwd, umask, encoding, count = fields[:6]
    args = fields[6:6 + int(count)]
    env = dict(item.split("=", 1) for item in fields[6 + int(count):] if "=" in item)
    return Request(conn, [], who, where, cwd, int(umask), encoding, args, env)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors an SCM_RIGHTS message brought (all of them: closed if unused)."""
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4])
    return fds


def _stream(fd: int, encoding: str, errors: str) -> io.TextIOWrapper:
    """A text stream on the client's descriptor, buffered as Python buffers its own."""
    tty = os.isatty(fd)
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=encoding,
                            errors=errors, line_buffering=tty or fd == 2)


def _idle_signals(server: Server) -> None:
    """Between builds: SIGTERM stops the server; SIGINT and SIGHUP, which only a client's
    Ctrl-C or hang-up just before or after its build can bring (the server has no terminal),
    do nothing (handled, not ignored: a build leaves an ignored signal ignored, as `nohup`)."""
    def stop(signum: int, frame: object) -> None:
        server.stop(signal.Signals(signum).name)
        server.requests.put(None)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    signal.signal(signal.SIGHUP, lambda signum, frame: None)


def _code_stamp() -> tuple[tuple[str, int, int], ...]:
    """The stat of every module of posbuild: an upgrade, or an edit, changes it."""
    package = Path(__file__).resolve().parent.parent
    stamp = []
    for folder, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                info = os.stat(os.path.join(folder, name))
                stamp.append((name, info.st_mtime_ns, info.st_ino))
    return tuple(stamp)


def _folders_stamp() -> tuple[int, ...]:
    """The mtimes of posbuild's folders: an upgrade replaces their files (checked per build;
    the idle server checks every file, `_code_stamp`)."""
    stamp = []
    for folder in _posbuild_folders():
        try:
            stamp.append(os.stat(folder).st_mtime_ns)
        except OSError:  # removed by an upgrade
            stamp.append(-1)
    return tuple(stamp)


@functools.cache
def _posbuild_folders() -> tuple[str, ...]:
    """posbuild's package folder and its subpackages', listed once: a folder added or removed
    changes the package folder's own mtime, which `_folders_stamp` reads."""
    package = Path(__file__).resolve().parent.parent
    return (str(package), *(str(p) for p in package.iterdir() if (p / "__init__.py").is_file()))


def _socket_path(root: Path) -> str:
    return str(root / STATE_DIR / SERVER_SOCKET)


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1


def _write_off(root: Path, why: str) -> None:
    try:
        with os.fdopen(open_own_file(root / STATE_DIR / SERVER_OFF, os.O_WRONLY | os.O_TRUNC),
                       "w") as off:
            off.write(why + "\n")
    except OSError:
        pass


def _log(line: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {line}\n")
    sys.stderr.flush()


def _bind(root: Path) -> socket.socket:
    """Listen on `.posbuild/server.sock` (a stale one, whose server died, is replaced)."""
    path = _socket_path(root)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # only this user may connect
    try:
        if len(path.encode()) < 100:
            listener.bind(path)
        else:
            folder = os.open(os.path.dirname(path), os.O_PATH)
            try:
                listener.bind(f"/proc/self/fd/{folder}/{SERVER_SOCKET}")
            finally:
                os.close(folder)
    finally:
        os.umask(old)
    listener.listen(16)
    return listener


def serve(root: Path) -> int:
    """Be the server of the workspace at `root` until a reason to stop; 0 when another server
    already is."""
    from posbuild.engine.locking import claim_state_dir
    from posbuild.errors import PosbuildError

    try:
        config = load_config(root)
        if not config.server:
            return 0
        claim_state_dir(config)
    except PosbuildError:
        return 1  # the build, run one-shot, says what is wrong
    state = root / STATE_DIR
    try:
        log = open_own_file(state / SERVER_LOG, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return 1  # a link planted where the log belongs: the build runs one-shot
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    import faulthandler

    faulthandler.register(signal.SIGUSR2, all_threads=True)  # `kill -USR2`: stacks to the log
    try:
        lock = os.fdopen(open_own_file(state / SERVER_LOCK), "a+")
    except OSError as error:
        _log(f"cannot serve: {error}")
        return 1
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another server of this workspace is starting or running
    feed = ChangeFeed.of(config, dict(os.environ))
    feed.start()
    listener = _bind(root)
    os.chdir(root)
    _log(f"serving {root}")
    server = Server(config, listener, feed)
    try:
        server.run()
    finally:
        if _inode(_socket_path(root)) == server.socket_inode:
            os.unlink(_socket_path(root))
        listener.close()
        feed.stop()
        for conn in server.quitters:
            conn.close()
    return 0


def main() -> None:
    """Serve the workspace whose root is the last argument (client.SERVER_MAIN starts it so)."""
    sys.exit(serve(Path(sys.argv[-1])))


if __name__ == "__main__":
    main()
