"""The reporter hears when an action's command starts, on the worker that starts it, and only
for actions that really run: a remote cache hit is not a start."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest
from engine_rig import A, B, root, store  # noqa: F401 (fixtures)
from fake_spawner import FakeSpawner
from test_run_commit import Build

from posbuild.core.action import Action
from posbuild.core.records import Outcome
from posbuild.engine.outcome import ActionOutcome
from posbuild.engine.reporter import QuietReporter
from posbuild.engine.run import ActionExecutor
from posbuild.store.lmdbstore import Store


@pytest.fixture
def spawner() -> Iterator[FakeSpawner]:
    fake = FakeSpawner()
    yield fake
    fake.close()


class _Sink:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _Recorder(QuietReporter):
    def __init__(self) -> None:
        super().__init__(_Sink(), _Sink())  # type: ignore[arg-type]
        self.started: list[tuple[str, str, str]] = []

    def action_started(self, label: str, message: str) -> None:
        self.started.append((label, message, threading.current_thread().name))


class _RemoteHolding:
    """A remote cache that holds the result of `label` only (its key as a stand-in)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fetch(self, action: Action, key: bytes) -> ActionOutcome | None:
        return ActionOutcome(Outcome.CACHED, key) if action.label == self.label else None


def test_started_comes_from_the_worker_with_the_actions_message(
        root: Path, store: Store, spawner: FakeSpawner) -> None:  # noqa: F811
    build = Build(root, store, spawner)
    reporter = _Recorder()
    a = A._replace(message="making a")
    executor = ActionExecutor([a], build.rebuilder, build.runner, reporter)
    assert executor.prepare(0) is None and reporter.started == []
    outcomes = []

    def work() -> None:
        started = executor.start(0)
        executor.wait(started)
        outcomes.append(executor.conclude(started).status)

    worker = threading.Thread(target=work, name="worker")
    worker.start()
    worker.join()
    assert outcomes == [Outcome.EXECUTED]
    assert reporter.started == [(A.label, "making a", "worker")]


def test_a_remote_hit_is_not_a_start(root: Path, store: Store,
                                     spawner: FakeSpawner) -> None:  # noqa: F811
    remote = _RemoteHolding(A.label)
    build = Build(root, store, spawner, remote=remote)
    reporter = _Recorder()
    executor = ActionExecutor([A, B], build.rebuilder, build.runner, reporter,
                              remote)  # type: ignore[arg-type]
    assert executor.prepare(0) is None
    started = executor.start(0)
    assert started.outcome is not None and started.outcome.status is Outcome.CACHED
    assert reporter.started == []
