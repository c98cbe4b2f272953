"""The Spawner contract (tests/spawner_contract.py) against the fake and the local sandboxes.

The Dask executor's run is tests/e2e/test_spawner_contract_dask.py: it needs a cluster.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import bwrap_problem
from fake_spawner import FakeSpawner, Script, default_bytes
from posbuild.core.action import Action
from posbuild.exec.sandbox import LocalSpawner, choose_isolation
from posbuild.workspace.config import load_config
from spawner_contract import OUT, Rig, SpawnerContract, action, make_workspace, read

# a sandbox base outside the workspace, beside it under the test's folder
BESIDE = '[build]\nsandbox_base = "../sandboxes"\n'


def _probe(tmp_path: Path) -> Path:
    probe = tmp_path / "probe"
    probe.mkdir()
    return probe


def _fake(rig: Rig) -> FakeSpawner:
    assert isinstance(rig.spawner, FakeSpawner)
    return rig.spawner


class TestFakeSpawner(SpawnerContract):
    @pytest.fixture
    def rig(self, tmp_path: Path) -> Iterator[Rig]:
        spawner = FakeSpawner()
        yield Rig(spawner, make_workspace(tmp_path / "ws"), _probe(tmp_path), None)
        spawner.close()

    def scripted(self, rig: Rig, action: Action, script: Script) -> None:
        _fake(rig).scripts[action.label] = script

    def until_running(self, rig: Rig, flag: Path) -> None:
        """A fake command runs from its start, and creates no flag: nothing to wait for."""

    def test_the_extra_env_reaches_the_command(self, rig: Rig) -> None:
        """The fake runs no command: what it can do is record the env, for a test to check."""
        super().test_the_extra_env_reaches_the_command(rig)
        assert _fake(rig).spawned[-1].extra_env == (("GREETING", "hello there"),)

    def test_clear_stale_removes_what_a_dead_process_left(self, rig: Rig) -> None:
        pytest.skip("the fake's folder is its own and new: no other process left anything there")

    # -- what only the fake does

    def test_by_default_a_run_succeeds_with_bytes_derived_from_the_action(self, rig: Rig) -> None:
        first = action("first", "anything", outputs=(OUT, "posbuild-out/pkg/two"))
        result = rig.spawner.wait(rig.spawner.start(first, [("A", "1")]))
        try:
            assert (result.exit_code, result.missing) == (0, ())
            assert read(result, OUT) == default_bytes(first, OUT) == (
                b"//pkg:first\nanything\nposbuild-out/pkg/out.txt\n")
            assert read(result, "posbuild-out/pkg/two") != read(result, OUT)
        finally:
            rig.spawner.remove(result)
        assert [(s.label, s.command, s.extra_env) for s in _fake(rig).spawned] == [
            ("//pkg:first", "anything", (("A", "1"),))]

    def test_a_scripted_failure_writes_no_output(self, rig: Rig) -> None:
        _fake(rig).scripts["//pkg:bad"] = Script(exit_code=2, stderr=b"no\n")
        result = rig.spawner.wait(rig.spawner.start(action("bad", "false")))
        try:
            assert (result.exit_code, result.stderr, result.missing) == (2, b"no\n", (OUT,))
        finally:
            rig.spawner.remove(result)

    def test_a_run_scripted_to_wait_for_an_event_ends_when_it_is_set(self, rig: Rig) -> None:
        gate = threading.Event()
        _fake(rig).scripts["//pkg:gated"] = Script(until=gate)
        running = rig.spawner.start(action("gated", "true"))
        threading.Timer(0.2, gate.set).start()
        began = time.monotonic()
        result = rig.spawner.wait(running)
        try:
            assert time.monotonic() - began >= 0.15 and result.exit_code == 0
        finally:
            rig.spawner.remove(result)
        rig.spawner.cancel()
        assert rig.spawner.stopped == 0  # it had ended: nothing to stop


class TestLocalSpawnerFolder(SpawnerContract):
    @pytest.fixture
    def rig(self, tmp_path: Path) -> Iterator[Rig]:
        base = tmp_path / "sandboxes"
        spawner = LocalSpawner(make_workspace(tmp_path / "ws"), base)
        yield Rig(spawner, tmp_path / "ws", _probe(tmp_path), base)
        spawner.close()


PROBLEM = bwrap_problem()


@pytest.mark.skipif(PROBLEM is not None, reason=f"bubblewrap cannot run here: {PROBLEM}")
class TestLocalSpawnerNamespace(SpawnerContract):
    @pytest.fixture
    def rig(self, tmp_path: Path) -> Iterator[Rig]:
        root = make_workspace(tmp_path / "ws")
        (root / "posbuild.toml").write_text(f'{BESIDE}[sandbox]\nmode = "namespace"\n')
        config = load_config(root)
        probe = _probe(tmp_path)
        isolation, _ = choose_isolation(config, (str(probe),))
        assert isolation is not None
        spawner = LocalSpawner(root, config.sandbox_dir, isolation)
        yield Rig(spawner, root, probe, config.sandbox_dir)
        spawner.close()
