"""A real nginx with WebDAV PUT, serving a temp folder on 127.0.0.1 and a free port: the remote
cache of the remote-cache tests (the Bazel HTTP cache protocol needs nothing more)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx")

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
{user}
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {base}/access.log;
    client_body_temp_path {base}/client_temp;
    proxy_temp_path {base}/proxy_temp;
    fastcgi_temp_path {base}/fastcgi_temp;
    uwsgi_temp_path {base}/uwsgi_temp;
    scgi_temp_path {base}/scgi_temp;
    server {{
        listen 127.0.0.1:{port};
        root {base}/root;
        location /cache/ {{
            {dav}
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Nginx:
    """One nginx process; `url` is the remote-cache URL (with a `/cache` prefix)."""

    def __init__(self, base: Path) -> None:
        binary = nginx_binary()
        if binary is None:
            pytest.skip("nginx is not installed (.ci/run installs it from Debian)")
        self.binary = binary
        self.base = base
        self.root = base / "root" / "cache"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # False: a server that refuses PUT (405), as nginx without `dav_methods PUT`
        self.dav = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cache"

    def start(self) -> Nginx:
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.base / "nginx.conf"
        conf.write_text(CONFIG.format(base=self.base, port=self.port, user=user,
                                      dav="dav_methods PUT;" if self.dav else ""))
        self.process = subprocess.Popen([self.binary, "-c", str(conf), "-p", str(self.base), "-e",
                                         str(self.base / "error.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.base / "error.log"
                logged = log.read_text() if log.exists() else ""
                raise RuntimeError(f"nginx exited: {stderr}{logged}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nginx did not start listening within 10 s")

    def kill(self) -> None:
        """SIGKILL, as a crashed or unplugged server."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def files(self, kind: str) -> list[Path]:
        """The stored entries of `ac` or `cas`."""
        folder = self.root / kind
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def requests(self) -> list[str]:
        """The request lines of the access log (`GET /cache/ac/... 404`)."""
        log = self.base / "access.log"
        if not log.exists():
            return []
        lines = []
        for line in log.read_text().splitlines():
            request = line.split('"')[1] if line.count('"') >= 2 else ""
            status = line.split('"')[2].split()[0] if line.count('"') >= 2 else ""
            lines.append(f"{request.rsplit(' ', 1)[0]} {status}")
        return lines


@pytest.fixture
def nginx(tmp_path: Path):
    """A running nginx with an empty cache; stopped after the test."""
    server = Nginx(tmp_path / "nginx").start()
    try:
        yield server
    finally:
        server.stop()
