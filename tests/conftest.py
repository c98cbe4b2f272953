"""Shared fixtures: temp workspaces written from a dict, and the real CLI run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

# as the installed `posbuild` script runs: the folder a build starts in is not on sys.path (`-P`)
POSBUILD = [sys.executable, "-P", "-m", "posbuild"]


@dataclass
class Result:
    """What one CLI run did."""

    returncode: int
    stdout: str
    stderr: str


class Workspace:
    """A temp workspace: write files, run the CLI in it, read outputs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, files: dict[str, str]) -> None:
        """Write each file (dedented); BUILD contents may be indented in the test source."""
        for rel, text in files.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> Result:
        """Run `posbuild ARGS` in the workspace (or `cwd`) and capture its output."""
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([*POSBUILD, *args], cwd=cwd or self.root, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def build(self, *args: str, **kwargs: object) -> Result:
        """`posbuild build ARGS`, asserting nothing; see `ok()` for the common case."""
        return self.run("build", *args, **kwargs)  # type: ignore[arg-type]

    def ok(self, *args: str) -> Result:
        """A build that must succeed."""
        result = self.build(*args)
        assert result.returncode == 0, (
            f"build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def out(self, rel: str) -> str:
        return (self.root / "posbuild-out" / rel).read_text()


def kill_build_after(ws: Workspace, delay: float, *args: str,
                     env: dict[str, str] | None = None) -> None:
    """Start `posbuild build ARGS` in a session of its own, SIGKILL the whole session after
    `delay` seconds (if it still runs) and reap it: a real kill at a chosen instant."""
    import signal
    import time

    proc = subprocess.Popen([*POSBUILD, "build", *args], cwd=ws.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def processes_with(needle: bytes) -> list[int]:
    """The pids of the processes whose command line holds `needle` (their own namespace's pid
    numbers are no use: a sandboxed action's `$$` is not its pid here)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if needle in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def counts(result: Result) -> dict[str, int]:
    """The executed/cached/failed numbers of the summary line."""
    import re

    match = re.search(r"\((\d+) executed, (\d+) cached, (\d+) failed", result.stdout)
    assert match, f"no summary line in:\n{result.stdout}\n{result.stderr}"
    executed, cached, failed = map(int, match.groups())
    return {"executed": executed, "cached": cached, "failed": failed}


def executed_labels(result: Result) -> list[str]:
    """Labels of the actions a build executed, from its plain `[n/total] label` lines."""
    return sorted(line.split("] ", 1)[1] for line in result.stdout.splitlines()
                  if line.startswith("["))


def bwrap_problem() -> str | None:
    """Why the namespace sandbox cannot run here, or None when bubblewrap works."""
    from posbuild.exec import namespaces

    bwrap = namespaces.find_bwrap()
    if bwrap is None:
        return "bwrap not found on PATH"
    chosen = namespaces.isolation(bwrap, (), ())
    return namespaces.probe((*chosen.head, *chosen.tail))


def landlock_problem() -> str | None:
    """Why the Landlock sandbox cannot run here, or None when it can."""
    from posbuild.exec import namespaces
    from posbuild.errors import SandboxUnavailable

    try:
        namespaces.choose("landlock", (), ())
    except SandboxUnavailable as error:
        return str(error)
    return None


@pytest.fixture(scope="session", autouse=True)
def sandbox_may_write_test_probes(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Let actions write the probe files tests leave under the test's temp folder (start flags,
    run counters), also under the namespace sandbox; a workspace inside it stays hidden."""
    os.environ["POSBUILD_SANDBOX_WRITABLE"] = str(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session", autouse=True)
def builds_run_one_shot() -> None:
    """Every test builds in the posbuild process it starts, unless it asks for the build server
    (the tests/e2e/test_through_server_*.py modules run end-to-end tests again through it)."""
    os.environ["POSBUILD_NO_SERVER"] = "1"


def through_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """`ws`, but every build goes through the workspace's build server: the one switch with which
    a module of tests runs again through the server (`ws = pytest.fixture(through_server)`). The
    server is stopped afterwards, and must have served (its log says so)."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "posbuild.toml").write_text("")
    monkeypatch.delenv("POSBUILD_NO_SERVER")
    workspace = Workspace(root)
    try:
        yield workspace
    finally:
        stopped = subprocess.run([*POSBUILD, "shutdown"], cwd=root, capture_output=True,
                                 text=True, timeout=60)
        log = root / ".posbuild" / "server.log"  # gone after a `clean --all`
        served = not log.exists() or "serving" in log.read_text()
    assert stopped.returncode == 0, stopped.stderr
    assert served, "no build server served this workspace"


def without_native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """`ws`, but every build stages, removes and starts its commands in Python alone, as where
    native.c cannot be compiled: the one switch with which a module of tests runs again on those
    paths (`ws = pytest.fixture(without_native)`)."""
    monkeypatch.setenv("POSBUILD_TEST_NO_NATIVE", "1")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "posbuild.toml").write_text("")
    return Workspace(root)


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A folder under the home folder: not below /tmp, which the namespace sandboxes hide
    wholesale (a workspace there is hidden by its own rules or mounts)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="posbuild-outside-", dir=os.path.expanduser("~")))
    yield folder
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """An empty workspace (a posbuild.toml and nothing else)."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "posbuild.toml").write_text("")
    return Workspace(root)
