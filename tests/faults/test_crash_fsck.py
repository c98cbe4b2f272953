"""Crash safety, proven by fsck: SIGKILL a build of a few hundred actions at 24 instants spread
over it; after each kill `posbuild fsck` passes without `--repair`, and a full build then
produces exactly the outputs of a clean build, correct by the oracle (tests/oracle.py).

Kill instants are fractions of a measured build, so they fall into loading, scheduling,
execution, commit and materialisation whatever the speed of the machine. Half of the kills hit
a build from nothing, half an incremental build after a source changed.
"""

from __future__ import annotations

import time
from pathlib import Path

from chain_workspace import chain_files, outputs
from conftest import Workspace, counts, kill_build_after
from oracle import assert_correct_build

N_ACTIONS = 240
KILLS = 24


def _files(version: int) -> dict[str, str]:
    """Four interlinked chains of tiny actions; `version` changes the seed of the first package."""
    return {"posbuild.toml": "", **chain_files(version, 4, N_ACTIONS // 4, changed=1)}


def _reference(tmp_path: Path, version: int) -> tuple[dict[str, bytes], float]:
    ws = Workspace(tmp_path / f"reference{version}")
    ws.root.mkdir()
    ws.write(_files(version))
    started = time.monotonic()
    ws.ok("-j2", "//...")
    return outputs(ws.root), time.monotonic() - started


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
        kill_build_after(ws, duration * (0.02 + 0.96 * kill / (KILLS - 1)), "-j2", "-q", "//...")
        _fsck_passes(ws)
        rebuilt = ws.ok("-j2", "//...")
        assert counts(rebuilt)["failed"] == 0
        assert outputs(ws.root) == expected[version], (
            f"kill {kill}: outputs differ from a clean build")
        assert_correct_build(ws)
    assert counts(ws.ok("//..."))["executed"] == 0
