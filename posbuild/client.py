"""The `posbuild` command: hand a build to the workspace's build server, or run it here.

A build in a fresh process pays for Python's start-up, the imports, reading the graph cache and
the up-to-date state, and a `stat()` of every file, before it can say that nothing changed. The
build server (cli/server.py) keeps all of that in memory and watches the workspace, so this
module is all a build has to load: it imports only the standard library's C modules, finds the
workspace, and passes the arguments, the working folder, the environment, the umask and the
terminal itself (file descriptors 0, 1 and 2) to the server over a Unix socket in `.posbuild/`.
The server runs the ordinary command-line build with them, so the output, the exit codes and
the results are the one-shot build's.

Everything that is not a build, and every build that must not or cannot use a server, runs in
this process (`posbuild.cli.main`): `--no-server`, `POSBUILD_NO_SERVER=1`, `[build] server =
false`, no workspace, or a server that does not answer. A server that is gone or hangs costs at
most a second: the client then builds here (the workspace lock queues it behind whatever the
server still does). Ctrl-C, SIGTERM and SIGHUP are passed on to the server's build, which stops
as a one-shot build does; the second of them, as there, ends it at once.

The conversation: the client sends REQUEST (one frame: its length, then NUL-separated fields,
`_request`); the server answers ACCEPTED (its number 1 when a build runs already) or DECLINED
(the number says why); when the build's turn comes the server sends TURN, and the client GO with
its descriptors; then HEARTBEATs, four a second, until EXITED with the exit code. Messages from
the server are 5 bytes: a kind and a number (`message`).
"""

import _socket
import os
import sys
import time

from posbuild.core.layout import CONFIG_NAME, SERVER_OFF, SERVER_SOCKET, STATE_DIR

OFF_S = 3600.0  # SERVER_OFF keeps clients from starting a server for this long
BUSY = "another posbuild command is running in this workspace"
OFF_VARIABLE = "POSBUILD_NO_SERVER"
MESSAGE_SIZE = 5  # a kind (one byte) and a number (four, big-endian): `message`
ACCEPTED, TURN, HEARTBEAT, EXITED, DECLINED = b"A", b"T", b"H", b"E", b"D"  # from the server
REQUEST, GO, SIGNAL, QUIT = b"R", b"G", b"S", b"Q"  # from the client
# why a server declined: [build] server = false; another posbuild; another world (`context`)
DISABLED, OUTDATED, ELSEWHERE = 1, 2, 3
ANSWER_S = 1.0  # a server silent for this long is taken for hung (it sends HEARTBEAT 4x as often)
START_S = 10.0  # how long a starting server may take to listen
PACKAGE = os.path.dirname(os.path.abspath(__file__))
COMMANDS_THAT_BUILD = ("build",)


def message(kind: bytes, number: int = 0) -> bytes:
    """One message from the server (int.to_bytes: `struct` is 0.4 ms of every build's start)."""
    return kind + number.to_bytes(4, "big")


def identity() -> str:
    """Which posbuild this is: a server serves only clients of the same installation."""
    return f"{os.path.realpath(sys.executable)}\n{sys.prefix}\n{PACKAGE}"


def context() -> str:
    """What a build sees of its process besides its arguments and environment: the mount
    namespace (a client inside a container or `bwrap` sees other files), the groups and the
    resource limits (all of them, as the kernel lists them: reading the list costs less than
    importing `resource`). A server runs only the builds of clients in its own context."""
    with open("/proc/self/limits", "rb") as handle:
        limits = handle.read()
    return f"{os.readlink('/proc/self/ns/mnt')} {os.getegid()} {os.getgroups()} {limits!r}"


def main() -> None:
    """Entry point of the `posbuild` script and of `python -m posbuild`."""
    args = sys.argv[1:]
    try:
        code = _on_server(args) if _for_server(args) else None
    except KeyboardInterrupt:  # Ctrl-C before the build began: nothing to stop
        sys.stderr.write("posbuild: interrupted by SIGINT; 0 running actions stopped, nothing "
                         "partial kept\n")
        code = 130
    if code is None:
        from posbuild.cli import main as one_shot

        try:
            one_shot(args)
            code = 0
        except SystemExit as done:
            if done.code is not None and not isinstance(done.code, int):
                raise  # a message for Python to print
            code = done.code or 0
    _leave(code)


def _leave(code: int) -> None:
    """Exit without Python's own shutdown, which frees every object one by one: after a build of
    10,000 actions that takes 0.2 s, and everything that must outlive the process (the store,
    the outputs, the records) was closed by the command itself. Handlers registered with
    `atexit` still run."""
    import atexit

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: there is no one left to tell
            pass
    atexit._run_exitfuncs()
    os._exit(code)


def _on_server(args: list[str]) -> int | None:
    """The exit code of the build on the workspace's server, or None to build here (no
    workspace, or a working folder that is gone: the one-shot build says so)."""
    try:
        root = _workspace(os.getcwd())
    except OSError:
        return None
    return _through_server(root, args) if root is not None else None


def _for_server(args: list[str]) -> bool:
    """Whether these arguments ask for a build that may go to the server."""
    if os.environ.get(OFF_VARIABLE, "") not in ("", "0") or "--no-server" in args \
            or "_POSBUILD_COMPLETE" in os.environ:  # the shell asks for completions: click answers
        return False
    if "-h" in args or "--help" in args or not args:
        return False
    first = args[0]  # as cli._with_default_command: options or a pattern first mean `build`
    return first in COMMANDS_THAT_BUILD or first.startswith(("//", ":", "-")) and \
        first != "--version" or "/" in first


def _workspace(start: str) -> str | None:
    """The nearest folder at or above `start` holding posbuild.toml (as config.find_workspace)."""
    folder = start
    while True:
        if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def socket_path(root: str) -> str:
    """The server's socket: `.posbuild/server.sock` of the workspace."""
    return os.path.join(root, STATE_DIR, SERVER_SOCKET)


def connect(root: str) -> _socket.socket | None:
    """A connection to the workspace's server, or None when none listens. Only to a process of
    this user (SO_PEERCRED): the socket's name may be a link a checkout came with, to a socket
    another user of the machine listens on, and a build sends its server its environment and
    its terminal. Then the server started next replaces the link with its own socket."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _connect(sock, socket_path(root))
        credentials = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    except OSError:
        sock.close()
        return None
    if int.from_bytes(credentials[4:8], sys.byteorder) != os.geteuid():  # (pid, uid, gid)
        sock.close()
        return None
    return sock


def _connect(sock: _socket.socket, path: str) -> None:
    """connect(2) to `path`; a path too long for a socket address goes through its folder's
    descriptor (/proc/self/fd/N/NAME)."""
    if len(path.encode()) < 100:
        sock.connect(path)
        return
    folder = os.open(os.path.dirname(path), os.O_PATH)
    try:
        sock.connect(f"/proc/self/fd/{folder}/{os.path.basename(path)}")
    finally:
        os.close(folder)


def _through_server(root: str, args: list[str]) -> int | None:
    """Run the build on the server: its exit code, or None to build in this process."""
    started = False
    while True:
        sock = connect(root)
        if sock is None:
            if started or not _server_wanted(root) or not _start_server(root):
                return None
            started = True
            continue
        try:
            answer = _request(sock, root, args)
        except OSError:
            answer = None
        if answer is not None and answer[0] != DECLINED:
            if answer[1]:  # queued behind a build: say so, as the workspace lock does
                sys.stderr.write(f"posbuild: {BUSY}; waiting for it\n")
                sys.stderr.flush()
            answer = _follow(sock)
            if answer is not None and answer[0] == EXITED:
                return answer[1]
        sock.close()
        if answer is None or answer[0] != DECLINED or answer[1] != OUTDATED or started:
            return None  # turned down, gone or silent: build here
        _wait_gone(root)  # a server that stepped down (an older posbuild's): start one


def _request(sock: _socket.socket, root: str, args: list[str]) -> tuple[bytes, int] | None:
    """Send the request and read the server's first answer (None: none within ANSWER_S). The
    descriptors go only with GO, once the server is at the build: a server that hangs before
    then holds no pipe of the client's open (which would keep a reader waiting)."""
    umask = os.umask(0o022)
    os.umask(umask)
    fields = [identity(), context(), os.getcwd(), str(umask), sys.stdout.encoding or "utf-8",
              str(len(args)), *args, *(f"{k}={v}" for k, v in os.environ.items())]
    payload = b"\0".join(os.fsencode(field) for field in fields)
    sock.settimeout(ANSWER_S)
    sock.sendall(REQUEST + len(payload).to_bytes(4, "big") + payload)
    return _receive(sock)


def _receive(sock: _socket.socket) -> tuple[bytes, int] | None:
    """One message, or None when the connection ends or stays silent for ANSWER_S."""
    data = b""
    try:
        while len(data) < MESSAGE_SIZE:
            chunk = sock.recv(MESSAGE_SIZE - len(data))
            if not chunk:
                return None
            data += chunk
    except OSError:  # the timeout too
        return None
    return data[:1], int.from_bytes(data[1:], "big")


def _follow(sock: _socket.socket) -> tuple[bytes, int] | None:
    """Give the server the descriptors when the build's turn comes, pass signals on, and wait
    for the end: (EXITED, the exit code), or (DECLINED, why) when the server stopped before the
    build's turn. A server that stops or hangs mid-build is left: the build runs here (None),
    unless a signal asked the build to stop, which a stopped server has done."""
    import _signal  # type: ignore[import-not-found]  # not `signal`: its enums cost 5 ms

    signalled: list[int] = []

    def forward(signum: int, frame: object) -> None:
        signalled.append(signum)
        try:
            sock.send(SIGNAL + bytes((signum,)))
        except OSError:
            pass

    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        if _signal.getsignal(signum) != _signal.SIG_IGN:
            _signal.signal(signum, forward)
    try:
        while True:
            message = _receive(sock)
            if message is None:
                break
            if message[0] == TURN:
                sock.sendmsg([GO], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(
                    fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2)))])
            elif message[0] in (EXITED, DECLINED):
                return message
    except OSError:
        pass
    finally:
        sock.close()
    if signalled:
        return EXITED, 128 + signalled[0]
    sys.stderr.write("posbuild: the build server stopped answering; building in this process\n")
    sys.stderr.flush()
    return None


def _server_wanted(root: str) -> bool:
    """`[build] server` of posbuild.toml (default true); a file that does not parse is left to the
    one-shot build to report. No, for an hour after a server found it could not watch."""
    try:
        if time.time() - os.stat(os.path.join(root, STATE_DIR, SERVER_OFF)).st_mtime < OFF_S:
            return False
    except OSError:
        pass
    import tomllib

    try:
        with open(os.path.join(root, CONFIG_NAME), "rb") as handle:
            table = tomllib.load(handle)
    except (OSError, ValueError):
        return False
    build = table.get("build", {})
    return not isinstance(build, dict) or build.get("server", True) is not False


# The server imports the very posbuild this client is: from the folder this package is in, and
# never from the folder it starts in (`-P`), which may hold a `posbuild` of the workspace's own.
SERVER_MAIN = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "import posbuild.cli.server as server; server.main()")


def _start_server(root: str) -> bool:
    """Start the workspace's server in a session of its own and wait until it listens."""
    argv = [sys.executable, "-P", "-c", SERVER_MAIN, os.path.dirname(PACKAGE), root]
    try:  # it writes its own log into `.posbuild/`, once it has made and claimed the folder
        pid = os.posix_spawn(sys.executable, argv, os.environ, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)])
    except OSError:
        return False
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        sock = connect(root)
        if sock is not None:
            sock.close()
            return True
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False  # it will not serve (a configuration error the build will report)
        time.sleep(0.005)
    return False


def _wait_gone(root: str) -> None:
    """Wait (at most START_S) for a server that declined as outdated to remove its socket."""
    deadline = time.monotonic() + START_S
    while os.path.exists(socket_path(root)) and time.monotonic() < deadline:
        time.sleep(0.005)


def shutdown(root: str) -> bool:
    """Ask the workspace's server to stop; whether one was running."""
    sock = connect(root)
    if sock is None:
        return False
    try:
        sock.settimeout(START_S)  # a build it is running ends first
        sock.sendall(QUIT)
        while sock.recv(1):  # it closes the connection once it has stopped
            pass
    except OSError:
        pass
    finally:
        sock.close()
    return True
