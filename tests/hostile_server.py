"""A Bazel-style HTTP cache in a thread on 127.0.0.1 that stores what is PUT and serves it back,
and that a test can turn hostile per request: drip a body one byte at a time, announce or send
far more bytes than asked for. The hostile-remote tests use it; nginx cannot misbehave on cue."""

from __future__ import annotations

import http.server
import threading
import time
from typing import Callable

Attack = Callable[[http.server.BaseHTTPRequestHandler, str], bool]  # (handler, path) → handled


class CacheServer:
    """GET/HEAD/PUT under any path; `attack`, when set, may answer a GET itself."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.attack: Attack | None = None
        self.put_attack: Attack | None = None  # may answer a PUT (after its body was read)
        self.stopping = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                owner.files[self.path] = self.rfile.read(size)
                if owner.put_attack is not None and owner.put_attack(self, self.path):
                    self.close_connection = True
                    return
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                self._answer(with_body=False)

            def do_GET(self) -> None:
                if owner.attack is not None and owner.attack(self, self.path):
                    self.close_connection = True
                    return
                self._answer(with_body=True)

            def _answer(self, with_body: bool) -> None:
                data = owner.files.get(self.path)
                self.send_response(404 if data is None else 200)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                if with_body and data:
                    self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/cache"

    def paths(self, kind: str) -> list[str]:
        return [p for p in self.files if p.startswith(f"/cache/{kind}/")]

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()


def drip(server: CacheServer, every: float = 0.5, length: int = 1 << 20) -> Attack:
    """Answer 200, announce `length` bytes, then send one byte every `every` seconds: each read
    gets a byte in time, so only a deadline on the whole request ends it."""

    def attack(handler: http.server.BaseHTTPRequestHandler, path: str) -> bool:
        handler.send_response(200)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.flush()
        for _ in range(length):
            if server.stopping.wait(every):
                break
            try:
                handler.wfile.write(b"x")
                handler.wfile.flush()
            except OSError:  # the client gave up: that is the point
                break
        return True

    return attack


def drip_headers(server: CacheServer, every: float = 0.3) -> Attack:
    """Send the status line and one long header a byte at a time: the answer never even begins."""

    def attack(handler: http.server.BaseHTTPRequestHandler, path: str) -> bool:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60000:
            if server.stopping.wait(every):
                break
            try:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            except OSError:
                break
        return True

    return attack


def flood(server: CacheServer, size: int, framing: str = "length", only: str = "") -> Attack:
    """Answer GETs of paths containing `only` with `size` zero bytes, as fast as the client takes
    them, framed by Content-Length ("length"), by closing the connection ("close") or in chunks
    ("chunked")."""

    def attack(handler: http.server.BaseHTTPRequestHandler, path: str) -> bool:
        if only not in path:
            return False
        handler.send_response(200)
        handler.send_header(*{"length": ("Content-Length", str(size)),
                              "close": ("Connection", "close"),
                              "chunked": ("Transfer-Encoding", "chunked")}[framing])
        handler.end_headers()
        chunk, sent = bytes(1 << 20), 0
        if framing == "chunked":
            chunk = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        try:
            while sent < size and not server.stopping.is_set():
                handler.wfile.write(chunk)
                sent += 1 << 20
        except OSError:
            pass
        return True

    return attack


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
