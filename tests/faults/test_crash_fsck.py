"""Crash safety, proven by fsck: SIGKILL a build of a few hundred actions at 24 instants spread
over it; after each kill `posbuild fsck` passes without `--repair`, and a full build then
produces exactly the outputs of a clean build.

Kill instants are fractions of a measured build, so they fall into loading, scheduling,
execution, commit and materialisation whatever the speed of the machine. Half of the kills hit
a build from nothing, half an incremental build after a source changed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import POSBUILD, Workspace, counts

N_ACTIONS = 240
KILLS = 24


def _files(version: int) -> dict[str, str]:
    files = {"posbuild.toml": ""}
    for p in range(4):
        files[f"p{p}/seed.txt"] = f"seed {p} version {version if p == 0 else 0}\n"
        rules = []
        for i in range(N_ACTIONS // 4):
            n = p * 100 + i
            srcs = ['"seed.txt"'] if i == 0 else [f'":t{n - 1}"']
            if i >= 5 and i % 5 == 0:
                srcs.append(f'"//p{(p + 1) % 4}:t{((p + 1) % 4) * 100 + i - 5}"')
            rules.append(f'genrule(name = "t{n}", srcs = [{", ".join(srcs)}], outs = ["t{n}.txt"], '
                         f'cmd = "{{ echo t{n}; cat $(SRCS) | cksum; }} > $@")')
        files[f"p{p}/BUILD"] = "\n".join(rules) + "\n"
    return files


def _outputs(root: Path) -> dict[str, bytes]:
    out = root / "posbuild-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _reference(tmp_path: Path, version: int) -> tuple[dict[str, bytes], float]:
    ws = Workspace(tmp_path / f"reference{version}")
    ws.root.mkdir()
    ws.write(_files(version))
    started = time.monotonic()
    ws.ok("-j2", "//...")
    return _outputs(ws.root), time.monotonic() - started


def _kill_after(ws: Workspace, delay: float) -> None:
    proc = subprocess.Popen([*POSBUILD, "build", "-j2", "-q", "//..."], cwd=ws.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _fsck_passes(ws: Workspace) -> None:
    """DESIGN invariant 3: without `--repair` (what the kill left is swept, not reported)."""
    check = ws.run("fsck")
    assert check.returncode == 0, check.stdout + check.stderr


def test_sigkill_at_24_points_then_fsck_and_a_full_build_match_a_clean_build(tmp_path):
    expected = {0: None, 1: None}
    expected[0], duration = _reference(tmp_path, 0)
    expected[1], _ = _reference(tmp_path, 1)
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    for kill in range(KILLS):
        incremental = kill % 2 == 1
        version = kill % 2
        if incremental:
            ws.write(_files(0))
            ws.ok("-q", "//...")  # a complete build of version 0, then kill the build of version 1
        else:
            if (ws.root / ".posbuild").exists():
                assert ws.run("clean", "--all").returncode == 0
        ws.write(_files(version))
        _kill_after(ws, duration * (0.02 + 0.96 * kill / (KILLS - 1)))
        _fsck_passes(ws)
        rebuilt = ws.ok("-j2", "//...")
        assert counts(rebuilt)["failed"] == 0
        assert _outputs(ws.root) == expected[version], f"kill {kill}: outputs differ from a clean build"
    assert counts(ws.ok("//..."))["executed"] == 0
