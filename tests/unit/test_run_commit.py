"""The run and commit steps of the engine, and a whole build of them, with no process started.

`FakeSpawner` (tests/fake_spawner.py) ends each run as scripted and hands back real output files;
the store is a real LMDB store in a temporary folder. Each test drives the pieces a build wires
together (runphase.py): the decision, the run, the commit, and for whole builds the scheduler.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from engine_rig import ENVIRONMENT, A, B, make_action, root, store  # noqa: F401 (fixtures)
from fake_spawner import FakeSpawner, Script, default_bytes

from posbuild.core.action import Action
from posbuild.core.digest import hash_bytes
from posbuild.core.layout import STATE_DIR, TMP
from posbuild.core.records import Outcome
from posbuild.engine.commit import Committer
from posbuild.engine.filestate import FileStates
from posbuild.engine.modes import SameAsCached
from posbuild.engine.outcome import ActionOutcome
from posbuild.engine.products import BuildProducts
from posbuild.engine.rebuilder import Miss, Rebuilder
from posbuild.engine.reporter import QuietReporter
from posbuild.engine.run import ActionExecutor, ActionRunner, RunCheck
from posbuild.engine.scheduler import Scheduler
from posbuild.engine.sources import LocalResults
from posbuild.errors import NonDeterminism
from posbuild.store.lmdbstore import Store
from posbuild.store.materialize import INSTALLING, Materializer


C = make_action("//pkg:c", ("pkg/src.txt",), "posbuild-out/pkg/c.txt")


@pytest.fixture
def spawner() -> Iterator[FakeSpawner]:
    fake = FakeSpawner()
    yield fake
    fake.close()


class Build:
    """The collaborators of one build's run phase over `store` and `spawner`, as runphase.py
    wires them."""

    def __init__(self, root: Path, store: Store, spawner: FakeSpawner, verify: bool = False,
                 previous: Any = None, remote: Any = None) -> None:
        self.store = store
        self.products = BuildProducts(previous)
        self.files = FileStates(root, store)
        materializer = Materializer(root, store, root / STATE_DIR / TMP)
        materializer.clear_temp()
        local = LocalResults(store, materializer, self.products)
        self.rebuilder = Rebuilder(self.files, self.products, local, ENVIRONMENT, verify=verify,
                                   asks_remote=(lambda action: True) if remote else None)
        self.remote = remote
        self.committer = Committer(store, materializer, self.products)
        checks: list[RunCheck] = [SameAsCached(store)] if verify else []
        self.runner = ActionRunner(spawner, self.files, self.committer, ENVIRONMENT,
                                   checks=checks)

    def miss(self, action: Action) -> Miss:
        decided = self.rebuilder.check(action)
        assert isinstance(decided, Miss), decided
        return decided

    def run(self, action: Action) -> tuple[Miss, ActionOutcome]:
        """Decide, then run and conclude, as one worker does."""
        miss = self.miss(action)
        started = self.runner.start(action, miss)
        self.runner.wait(started)
        outcome = self.runner.conclude(started)
        self.runner.tidy(started)
        return miss, outcome

    def all(self, actions: Sequence[Action]) -> dict[str, Outcome]:
        """A whole build of `actions` through the scheduler, as runphase drives it."""
        executor = ActionExecutor(actions, self.rebuilder, self.runner,
                                  QuietReporter(_Sink(), _Sink()), self.remote)
        scheduler: Scheduler[ActionOutcome] = Scheduler([a.deps for a in actions],
                                                        range(len(actions)), 2, False)
        scheduler.run(executor)
        self.committer.flush()
        return {actions[n].label: o.status for n, o in executor.outcomes.items()}


class _Sink:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def test_a_miss_runs_and_its_result_is_committed_then_installed(root: Path, store: Store,
                                                                 spawner: FakeSpawner) -> None:
    miss, outcome = Build(root, store, spawner).run(A)
    assert outcome.status is Outcome.EXECUTED and outcome.key == miss.key
    made = default_bytes(A, A.outputs[0])
    result = store.get_result(miss.key)
    assert result is not None and [o.digest for o in result.outputs] == [hash_bytes(made)]
    assert store.get_blob(hash_bytes(made)) == made
    assert (root / A.outputs[0]).read_bytes() == made
    assert [s.label for s in spawner.spawned] == [A.label]


@pytest.mark.parametrize("script, message", [
    (Script(exit_code=3, stderr=b"boom\n"), "command failed (exit code 3)"),
    (Script(outputs={}), "declared output 'posbuild-out/pkg/a.txt' was not created"),
    (Script(timed_out=True), "timed out after 60 s"),
])
def test_a_failed_run_commits_nothing(root: Path, store: Store, spawner: FakeSpawner,
                                      script: Script, message: str) -> None:
    spawner.scripts[A.label] = script
    build = Build(root, store, spawner)
    miss, outcome = build.run(A)
    assert outcome.status is Outcome.FAILED and outcome.key is None
    assert message in outcome.error
    assert store.get_result(miss.key) is None
    assert not (root / A.outputs[0]).exists()
    assert build.products.used == [] and build.products.traces == {}


def test_a_source_changed_while_it_ran_is_not_cached(root: Path, store: Store,
                                                     spawner: FakeSpawner) -> None:
    build = Build(root, store, spawner)
    miss = build.miss(A)
    started = build.runner.start(A, miss)
    (root / "pkg/src.txt").write_text("edited during the run\n")
    build.runner.wait(started)
    outcome = build.runner.conclude(started)
    assert outcome.status is Outcome.FAILED and "changed while the action ran" in outcome.error
    assert store.get_result(miss.key) is None


def test_installed_files_memo_rows_wait_for_the_next_commit_or_the_flush(
        root: Path, store: Store, spawner: FakeSpawner) -> None:
    """Group commit: the action's own commit holds a placeholder row naming the digest; the row
    of the installed file rides with the next commit, or with the build's flush."""
    build = Build(root, store, spawner)
    build.run(A)
    placeholder = store.get_memo(A.outputs[0])
    assert placeholder is not None and placeholder.signature == INSTALLING
    build.run(C)
    memo_a = store.get_memo(A.outputs[0])
    assert memo_a is not None and memo_a.signature != INSTALLING  # rode with c's commit
    memo_c = store.get_memo(C.outputs[0])
    assert memo_c is not None and memo_c.signature == INSTALLING
    build.committer.flush()
    memo_c = store.get_memo(C.outputs[0])
    assert memo_c is not None and memo_c.signature != INSTALLING
    assert memo_c.digest == hash_bytes(default_bytes(C, C.outputs[0]))


def test_a_whole_build_then_a_rebuild_with_early_cutoff(root: Path, store: Store,
                                                        spawner: FakeSpawner) -> None:
    """A source edit re-runs A; A's output comes out byte-identical, so B is a cache hit."""
    spawner.scripts[A.label] = Script(outputs={A.outputs[0]: b"same every time\n"})
    assert Build(root, store, spawner).all([A, B]) == {A.label: Outcome.EXECUTED,
                                                      B.label: Outcome.EXECUTED}
    (root / "pkg/src.txt").write_text("edited\n")
    spawner.spawned.clear()
    assert Build(root, store, spawner).all([A, B]) == {A.label: Outcome.EXECUTED,
                                                      B.label: Outcome.CACHED}
    assert [s.label for s in spawner.spawned] == [A.label]


def test_a_failure_skips_its_dependents_and_commits_nothing_for_them(
        root: Path, store: Store, spawner: FakeSpawner) -> None:
    spawner.scripts[A.label] = Script(exit_code=1)
    build = Build(root, store, spawner)
    assert build.all([A, B]) == {A.label: Outcome.FAILED}
    assert [s.label for s in spawner.spawned] == [A.label]
    assert build.products.traces == {}


def test_verify_keeps_the_cached_result_when_a_rerun_differs(root: Path, store: Store,
                                                             spawner: FakeSpawner) -> None:
    miss, _ = Build(root, store, spawner).run(A)
    spawner.scripts[A.label] = Script(outputs={A.outputs[0]: b"different bytes\n"})
    _, outcome = Build(root, store, spawner, verify=True).run(A)
    assert outcome.status is Outcome.FAILED and outcome.orch is NonDeterminism
    assert outcome.key == miss.key  # the cached result stands, and dependents may use it
    assert (root / A.outputs[0]).read_bytes() == default_bytes(A, A.outputs[0])
    spawner.scripts.pop(A.label)
    _, same = Build(root, store, spawner, verify=True).run(A)
    assert same.status is Outcome.EXECUTED


class _RecordingRemote:
    """A remote cache that holds nothing and notes on which thread it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def fetch(self, action: Action, key: bytes) -> None:
        self.asked.append((action.label, threading.current_thread().name))
        return None


def test_the_remote_is_asked_on_the_worker_not_under_the_schedulers_lock(
        root: Path, store: Store, spawner: FakeSpawner) -> None:
    """`prepare` runs under the scheduler's lock, where a network round trip would stall every
    worker: the decision only marks the miss, and the worker that takes the action asks."""
    remote = _RecordingRemote()
    build = Build(root, store, spawner, remote=remote)
    executor = ActionExecutor([A], build.rebuilder, build.runner,
                              QuietReporter(_Sink(), _Sink()), remote)  # type: ignore[arg-type]
    assert executor.prepare(0) is None and remote.asked == []
    assert build.all([A, B]) == {A.label: Outcome.EXECUTED, B.label: Outcome.EXECUTED}
    assert [label for label, _ in remote.asked] == [A.label, B.label]
    assert all(thread != threading.main_thread().name for _, thread in remote.asked)
