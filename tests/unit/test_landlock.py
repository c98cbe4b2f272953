"""Landlock prototype (posbuild/exec/landlock.py): each guarantee it claims, on real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from posbuild.exec import landlock

pytestmark = pytest.mark.skipif(landlock.abi() < landlock.MIN_ABI,
                                reason="needs Landlock ABI 6 (kernel 6.12)")


def _run(tmp_path: Path, script: str, read: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir(exist_ok=True)
    rules = landlock.Rules(read=(*landlock.system_folders(), sys.prefix, sys.base_prefix, *read),
                           write=(str(sandbox), "/dev/null"))
    fd = landlock.ruleset(rules)
    try:
        return subprocess.run(["/bin/sh", "-c", script], cwd=sandbox, capture_output=True,
                              text=True, preexec_fn=landlock.restricter(fd))
    finally:
        os.close(fd)


def test_a_file_outside_the_rules_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("hidden\n")
    done = _run(tmp_path, f"cat {tmp_path}/secret.txt")
    assert done.returncode != 0 and "hidden" not in done.stdout
    assert "Permission denied" in done.stderr


def test_a_declared_input_can_be_read_but_not_written(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("input\n")
    done = _run(tmp_path, f"cat {source}; echo changed > {source}", read=(str(source),))
    assert done.stdout == "input\n"
    assert source.read_text() == "input\n"


def test_writes_land_in_the_sandbox_and_nowhere_else(tmp_path: Path) -> None:
    done = _run(tmp_path, f"echo ok > out; echo leak > {tmp_path}/leak")
    assert (tmp_path / "sandbox" / "out").read_text() == "ok\n"
    assert not (tmp_path / "leak").exists() and done.returncode != 0


def test_no_capabilities_remain(tmp_path: Path) -> None:
    done = _run(tmp_path, "grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status")
    values = [line.split()[1] for line in done.stdout.splitlines()]
    assert len(values) == 4 and set(values) == {"0000000000000000"}


def test_tcp_connect_is_denied(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = (f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2);"
                " print('connected')")
        done = _run(tmp_path, f"{sys.executable} -c \"{code}\"")
    assert "connected" not in done.stdout and "PermissionError" in done.stderr
