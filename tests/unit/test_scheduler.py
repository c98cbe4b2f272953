"""The generic DAG scheduler, driven by a fake executor (as Ninja tests its Plan with a fake
runner)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import pytest

from posbuild.engine.scheduler import Scheduler, State

Outcome = tuple[str, int]  # ("ok" | "fail", node)
FINAL = {State.SUCCESS, State.FAILED, State.SKIPPED}
TIMEOUT = 10.0


class FakeExecutor:
    """Records every call. `cached` nodes are settled by `prepare`; `fail` nodes fail; `on_run`
    hooks run."""

    def __init__(self, cached: dict[int, Outcome] | None = None, fail: Sequence[int] = (),
                 delay: float = 0.0, on_run: dict[int, Callable[[], None]] | None = None,
                 on_prepare: dict[int, Callable[[], None]] | None = None) -> None:
        self.cached = cached or {}
        self.fail = set(fail)
        self.delay = delay
        self.on_run = on_run or {}
        self.on_prepare = on_prepare or {}
        self.lock = threading.Lock()
        # ("prepare" | "run-start" | "run-end" | "finished", node)
        self.events: list[tuple[str, int]] = []
        self.prepared: list[int] = []
        self.ran: list[int] = []
        self.finished_calls: list[tuple[int, State, Outcome | None]] = []
        self.running = 0
        self.max_running = 0
        self.cancelled = threading.Event()

    def _log(self, kind: str, node: int) -> None:
        with self.lock:
            self.events.append((kind, node))

    def prepare(self, node: int) -> Outcome | None:
        self._log("prepare", node)
        self.prepared.append(node)
        if node in self.on_prepare:
            self.on_prepare[node]()
        return self.cached.get(node)

    def start(self, node: int) -> int:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.ran.append(node)
            self.events.append(("run-start", node))
        return node

    def wait(self, node: int) -> bool:
        """The "command": `delay`, then the node's `on_run` hook; `running` counts nodes in it."""
        try:
            if self.delay:
                time.sleep(self.delay)
            if node in self.on_run:
                self.on_run[node]()
            return node not in self.fail
        finally:
            with self.lock:
                self.running -= 1
                self.events.append(("run-end", node))

    def conclude(self, node: int) -> Outcome:
        self.wrap_up(node)
        return ("fail" if node in self.fail else "ok", node)

    def wrap_up(self, node: int) -> None:
        """Work a node does after its command, in `conclude` (none here; see WrapUpExecutor)."""

    def tidy(self, node: int) -> None:
        self._log("tidy", node)

    def succeeded(self, outcome: Outcome) -> bool:
        return outcome[0] == "ok"

    def finished(self, node: int, state: State, outcome: Outcome | None) -> None:
        self._log("finished", node)
        self.finished_calls.append((node, state, outcome))

    def cancel(self) -> None:
        self._log("cancel", -1)
        self.cancelled.set()

    def index(self, kind: str, node: int) -> int:
        return self.events.index((kind, node))


def schedule(deps: Sequence[Sequence[int]], executor: FakeExecutor, jobs: int = 1,
             keep_going: bool = False,
             priority: Sequence[object] | None = None,
             demand: Sequence[Sequence[int]] | None = None,
             capacity: Sequence[int] = ()) -> list[State]:
    """Run a Scheduler on a helper thread so that a deadlock fails the test instead of hanging
    it."""
    scheduler = Scheduler(deps, priority if priority is not None else list(range(len(deps))), jobs,
                          keep_going, demand, capacity)
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["states"] = scheduler.run(executor)
        except BaseException as error:  # handed back to the test thread
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "scheduler did not finish (deadlock?)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["states"]  # type: ignore[return-value]


# A diamond with a tail:  0 -> {1, 2} -> 3 -> 4 ; 5 independent
DIAMOND = [[], [0], [0], [1, 2], [3], []]


def test_every_node_succeeds_and_runs_once() -> None:
    executor = FakeExecutor()
    states = schedule(DIAMOND, executor, jobs=2)
    assert states == [State.SUCCESS] * 6
    assert sorted(executor.ran) == list(range(6))
    assert sorted(n for n, _, _ in executor.finished_calls) == list(range(6))


def test_empty_graph() -> None:
    executor = FakeExecutor()
    assert schedule([], executor) == []
    assert executor.events == []


def test_jobs_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Scheduler([[]], [0], 0, False)


@pytest.mark.parametrize("jobs", [1, 2, 8])
def test_dependencies_finish_before_dependents_are_prepared(jobs: int) -> None:
    # a layered DAG: node i depends on some nodes of the previous layer
    deps: list[list[int]] = []
    for i in range(40):
        layer = i // 8
        deps.append([j for j in range((layer - 1) * 8, layer * 8) if j >= 0 and (i + j) % 3 == 0])
    executor = FakeExecutor(delay=0.002)
    states = schedule(deps, executor, jobs=jobs)
    assert states == [State.SUCCESS] * 40
    for node, node_deps in enumerate(deps):
        for dep in node_deps:
            assert executor.index("finished", dep) < executor.index("prepare", node), (dep, node)
            assert executor.index("run-end", dep) < executor.index("run-start", node), (dep, node)


def test_duplicate_dependency_entries_are_counted_once() -> None:
    executor = FakeExecutor()
    assert schedule([[], [0, 0, 0]], executor) == [State.SUCCESS, State.SUCCESS]
    assert executor.ran == [0, 1]


@pytest.mark.parametrize("jobs", [1, 3, 5])
def test_never_more_than_jobs_concurrent_runs(jobs: int) -> None:
    executor = FakeExecutor(delay=0.02)
    states = schedule([[] for _ in range(16)], executor, jobs=jobs)
    assert states == [State.SUCCESS] * 16
    # the limit is reached (work is parallel) and never exceeded
    assert executor.max_running == jobs


def test_concurrency_limit_holds_on_a_dag() -> None:
    deps = [[], [], [], [], [0, 1], [1, 2], [2, 3], [4, 5, 6], [], []]
    executor = FakeExecutor(delay=0.01)
    schedule(deps, executor, jobs=2)
    assert executor.max_running <= 2
    assert sorted(executor.ran) == list(range(10))


def test_ready_order_follows_priority_with_one_job() -> None:
    #     0 "//b:x"        1 "//a:z" (needs 0)     2 "//a:y"
    #     3 "//c:w" (needs 2)     4 "//a:a" (needs 1, 3)
    deps = [[], [0], [], [2], [1, 3]]
    priority = ["//b:x", "//a:z", "//a:y", "//c:w", "//a:a"]
    # smallest ready priority first: //a:y, then //b:x (< //c:w), then //a:z, //c:w, //a:a
    expected = [2, 0, 1, 3, 4]
    for _ in range(5):
        executor = FakeExecutor()
        schedule(deps, executor, jobs=1, priority=priority)
        assert executor.ran == expected


def test_equal_priorities_break_ties_by_node_index() -> None:
    executor = FakeExecutor()
    schedule([[], [], [], []], executor, jobs=1, priority=["same"] * 4)
    assert executor.ran == [0, 1, 2, 3]


def test_run_order_ignores_insertion_order_of_independent_nodes() -> None:
    executor = FakeExecutor()
    schedule([[] for _ in range(5)], executor, jobs=1, priority=["e", "c", "a", "d", "b"])
    assert executor.ran == [2, 4, 1, 3, 0]


def test_cached_nodes_are_settled_without_run() -> None:
    cached = {0: ("ok", 0), 1: ("ok", 1), 3: ("ok", 3)}
    executor = FakeExecutor(cached=cached)
    states = schedule(DIAMOND, executor, jobs=2)
    assert states == [State.SUCCESS] * 6
    assert sorted(executor.ran) == [2, 4, 5]
    assert sorted(executor.prepared) == list(range(6))
    assert (1, State.SUCCESS, ("ok", 1)) in executor.finished_calls


def test_cached_nodes_do_not_occupy_job_slots() -> None:
    """With one slot held by a running node, cached nodes (and cached chains) still settle."""
    chain_done = threading.Event()

    def wait_for_cached_chain() -> None:
        assert chain_done.wait(TIMEOUT / 2), "cached nodes waited for the busy slot"

    executor = FakeExecutor(cached={1: ("ok", 1), 2: ("ok", 2), 3: ("ok", 3)},
                            on_run={0: wait_for_cached_chain})
    original_finished = executor.finished

    def finished(node: int, state: State, outcome: Outcome | None) -> None:
        original_finished(node, state, outcome)
        if node == 3:
            chain_done.set()

    executor.finished = finished  # type: ignore[method-assign]
    # node 0 runs and holds the only slot until node 3 (a chain 1 -> 2 -> 3 of cache hits) is
    # finished
    states = schedule([[], [], [1], [2]], executor, jobs=1)
    assert states == [State.SUCCESS] * 4
    assert executor.ran == [0]


def test_cached_nodes_behind_a_run_settle_while_another_run_holds_the_slot() -> None:
    """Node 2 (cached) becomes ready when 0 finishes, while 1 occupies the only other slot."""
    settled = threading.Event()
    executor = FakeExecutor(
        cached={2: ("ok", 2)},
        on_run={1: lambda: settled.wait(TIMEOUT / 2)},
    )
    original_finished = executor.finished

    def finished(node: int, state: State, outcome: Outcome | None) -> None:
        original_finished(node, state, outcome)
        if node == 2:
            settled.set()

    executor.finished = finished  # type: ignore[method-assign]
    states = schedule([[], [], [0]], executor, jobs=2)
    assert states == [State.SUCCESS] * 3
    assert executor.index("finished", 2) < executor.index("run-end", 1)


def test_failure_skips_dependents_without_preparing_them() -> None:
    executor = FakeExecutor(fail=[1])
    states = schedule(DIAMOND, executor, jobs=1, keep_going=True)
    assert states == [State.SUCCESS, State.FAILED, State.SUCCESS, State.SKIPPED, State.SKIPPED,
                      State.SUCCESS]
    assert 3 not in executor.prepared and 4 not in executor.prepared
    assert 3 not in executor.ran and 4 not in executor.ran
    assert (3, State.SKIPPED, None) in executor.finished_calls
    assert (4, State.SKIPPED, None) in executor.finished_calls


def test_failed_outcome_from_prepare_counts_as_failure() -> None:
    executor = FakeExecutor(cached={0: ("fail", 0)})
    states = schedule([[], [0]], executor, keep_going=True)
    assert states == [State.FAILED, State.SKIPPED]
    assert executor.ran == []
    assert executor.prepared == [0]


def test_stop_after_failure_launches_no_new_work() -> None:
    # jobs=1: node 0 fails first; independent nodes 1 and 2 must never run
    executor = FakeExecutor(fail=[0])
    states = schedule([[], [], [], [1]], executor, jobs=1, keep_going=False)
    assert states == [State.FAILED, State.SKIPPED, State.SKIPPED, State.SKIPPED]
    assert executor.ran == [0]
    assert 3 not in executor.prepared
    assert sorted((n, s) for n, s, _ in executor.finished_calls) == [
        (0, State.FAILED), (1, State.SKIPPED), (2, State.SKIPPED), (3, State.SKIPPED)
    ]


def test_stop_after_failure_drains_running_work() -> None:
    # 0 fails at once while 1 is still running; 1 completes, but its dependent 2 never starts
    release = threading.Event()
    executor = FakeExecutor(fail=[0], on_run={1: lambda: release.wait(TIMEOUT / 2)})
    original_finished = executor.finished

    def finished(node: int, state: State, outcome: Outcome | None) -> None:
        original_finished(node, state, outcome)
        if node == 0:
            release.set()

    executor.finished = finished  # type: ignore[method-assign]
    states = schedule([[], [], [1]], executor, jobs=2, keep_going=False)
    assert states == [State.FAILED, State.SUCCESS, State.SKIPPED]
    assert sorted(executor.ran) == [0, 1]
    assert 2 not in executor.prepared


def test_keep_going_runs_every_independent_branch() -> None:
    #  0 (fails) -> 1 ;  2 -> 3 ;  4 needs 1 and 3 ;  5 independent
    deps = [[], [0], [], [2], [1, 3], []]
    executor = FakeExecutor(fail=[0])
    states = schedule(deps, executor, jobs=1, keep_going=True)
    assert states == [State.FAILED, State.SKIPPED, State.SUCCESS, State.SUCCESS, State.SKIPPED,
                      State.SUCCESS]
    assert sorted(executor.ran) == [0, 2, 3, 5]


def test_keep_going_with_several_failures() -> None:
    deps = [[], [], [0], [1], [2, 3], []]
    executor = FakeExecutor(fail=[0, 1], delay=0.001)
    states = schedule(deps, executor, jobs=3, keep_going=True)
    assert states == [State.FAILED, State.FAILED, State.SKIPPED, State.SKIPPED, State.SKIPPED,
                      State.SUCCESS]


def test_exception_in_prepare_cancels_and_drains_before_propagating() -> None:
    # 0 runs until cancelled; 1 finishes fast, making 2 ready; prepare(2) raises
    cancelled = threading.Event()

    def until_cancelled() -> None:
        assert cancelled.wait(TIMEOUT / 2), "cancel() was never called"
        time.sleep(0.05)  # the scheduler must still wait for this run to return

    def corrupt_store() -> None:
        raise RuntimeError("store is corrupt")

    executor = FakeExecutor(on_run={0: until_cancelled}, on_prepare={2: corrupt_store})
    executor.cancelled = cancelled
    with pytest.raises(RuntimeError, match="store is corrupt"):
        schedule([[], [], [1]], executor, jobs=2)
    assert cancelled.is_set()
    cancel_at = executor.events.index(("cancel", -1))
    assert executor.index("prepare", 2) < cancel_at < executor.index("run-end", 0)
    # drained: nothing ran on after the exception escaped, and what ran is tidied
    assert executor.events[-2:] == [("run-end", 0), ("tidy", 0)]
    assert 2 not in executor.ran


def test_exception_in_run_cancels_and_propagates() -> None:
    def explode() -> None:
        raise OSError("disk on fire")

    executor = FakeExecutor(on_run={0: explode})
    with pytest.raises(OSError, match="disk on fire"):
        schedule([[], [0]], executor, jobs=1)
    assert executor.cancelled.is_set()
    assert 1 not in executor.prepared


def test_states_end_final_and_finished_called_once_per_node() -> None:
    deps = [[], [0], [0], [1, 2], [], [4], [5], []]
    executor = FakeExecutor(cached={4: ("ok", 4), 7: ("fail", 7)}, fail=[1], delay=0.001)
    states = schedule(deps, executor, jobs=3, keep_going=True)
    assert set(states) <= FINAL
    assert states == [
        State.SUCCESS, State.FAILED, State.SUCCESS, State.SKIPPED,
        State.SUCCESS, State.SUCCESS, State.SUCCESS, State.FAILED,
    ]
    finished_nodes = [n for n, _, _ in executor.finished_calls]
    assert sorted(finished_nodes) == list(range(8))
    assert {n: s for n, s, _ in executor.finished_calls} == dict(enumerate(states))


def test_states_are_final_after_stop() -> None:
    executor = FakeExecutor(fail=[0])
    states = schedule(DIAMOND, executor, jobs=1, keep_going=False)
    assert set(states) <= FINAL
    assert states[0] is State.FAILED
    assert State.RUNNING not in states and State.PENDING not in states


class ThreadRecorder(FakeExecutor):
    """Remembers which thread prepared and ran each node."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.prepared_on: dict[int, threading.Thread] = {}
        self.ran_on: dict[int, threading.Thread] = {}

    def prepare(self, node: int) -> Outcome | None:
        self.prepared_on[node] = threading.current_thread()
        return super().prepare(node)

    def start(self, node: int) -> int:
        self.ran_on[node] = threading.current_thread()
        return super().start(node)


def test_the_worker_that_finishes_a_node_prepares_and_takes_the_next_itself() -> None:
    # a chain: each node becomes ready when the one before finishes, on the worker that ran it,
    # which prepares it and runs it too, without handing anything to another thread
    executor = ThreadRecorder()
    states = schedule([[], [0], [1], [2]], executor, jobs=2)
    assert states == [State.SUCCESS] * 4
    worker = executor.ran_on[0]
    assert worker is not threading.current_thread() and worker.name.startswith("posbuild-worker-")
    assert all(executor.ran_on[n] is worker for n in range(4))
    assert all(executor.prepared_on[n] is worker for n in (1, 2, 3))


def test_a_build_settled_by_prepare_starts_no_thread() -> None:
    executor = ThreadRecorder(cached={n: ("ok", n) for n in range(4)})
    before = {t.name for t in threading.enumerate()}
    states = schedule([[], [0], [0], [1, 2]], executor, jobs=4)
    assert states == [State.SUCCESS] * 4
    scheduling = {executor.prepared_on[n] for n in range(4)}
    assert len(scheduling) == 1 and not next(iter(scheduling)).name.startswith("posbuild-worker-")
    assert not {t.name for t in threading.enumerate()} - before


class WrapUpExecutor(FakeExecutor):
    """Nodes in `slow_wrap_up` spend their `conclude` waiting for `release`."""

    def __init__(self, slow_wrap_up: Sequence[int], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.slow_wrap_up = set(slow_wrap_up)
        self.release = threading.Event()

    def wrap_up(self, node: int) -> None:
        if node in self.slow_wrap_up:
            self._log("wrap-up-start", node)
            self.release.wait(TIMEOUT / 2)
            self._log("wrap-up-end", node)


def release_after(executor: WrapUpExecutor, seconds: float) -> None:
    timer = threading.Timer(seconds, executor.release.set)
    timer.daemon = True
    timer.start()


def test_a_worker_starts_its_next_node_before_concluding_the_last() -> None:
    # jobs=2: nodes 0 and 1 conclude slowly; nodes 2 and 3 start while they are concluded
    executor = WrapUpExecutor(slow_wrap_up=[0, 1])
    release_after(executor, 0.3)
    states = schedule([[], [], [], []], executor, jobs=2)
    assert states == [State.SUCCESS] * 4
    started = max(executor.index("run-start", 2), executor.index("run-start", 3))
    assert started < min(executor.index("wrap-up-end", 0), executor.index("wrap-up-end", 1))
    assert executor.max_running == 2  # commands never exceed the jobs


def test_a_dependent_starts_only_after_its_dependency_is_concluded() -> None:
    executor = WrapUpExecutor(slow_wrap_up=[0])
    release_after(executor, 0.1)
    states = schedule([[], [0], []], executor, jobs=2)
    assert states == [State.SUCCESS] * 3
    assert executor.index("wrap-up-end", 0) < executor.index("finished",
                                                             0) < executor.index("run-start", 1)


def test_nothing_starts_early_after_a_command_failed() -> None:
    # 0's command fails: the worker concludes it before taking anything, so with the build
    # stopping, the waiting nodes 1..3 never start (jobs=2, but only 0 is handed out at first)
    executor = WrapUpExecutor(slow_wrap_up=[0], fail=[0])
    release_after(executor, 0.1)
    states = schedule([[], [], [], []], executor, jobs=2, demand=[(1,), (2,), (2,), (2,)],
                      capacity=(2,))
    assert states == [State.FAILED, State.SKIPPED, State.SKIPPED, State.SKIPPED]
    assert executor.ran == [0]


def test_with_one_job_a_node_is_concluded_before_the_next_starts() -> None:
    # a serial build starts nothing while a node concludes, so its dependents compete by priority
    executor = WrapUpExecutor(slow_wrap_up=[2])
    release_after(executor, 0.1)
    deps = [[], [0], [], [2], [1, 3]]
    schedule(deps, executor, jobs=1, priority=["//b:x", "//a:z", "//a:y", "//c:w", "//a:a"])
    assert executor.index("wrap-up-end", 2) < executor.index("run-start", 0)
    assert executor.ran == [2, 0, 1, 3, 4]


@pytest.mark.parametrize("other_first", [False, True])
def test_an_early_start_goes_only_to_a_node_that_beats_the_coming_dependents(
    other_first: bool) -> None:
    # jobs=2: 1 runs throughout; 0's command ends and it concludes slowly. Its dependent 2 ("c")
    # becomes ready only then. Node 3 may start before that only if it would be chosen before 2.
    executor = WrapUpExecutor(slow_wrap_up=[0])
    one_ends = threading.Event()
    executor.on_run = {1: lambda: one_ends.wait(TIMEOUT / 2)}
    release_after(executor, 0.2)
    threading.Timer(0.5, one_ends.set).start()
    priority = ["a", "b", "c", "a1" if other_first else "d"]
    states = schedule([[], [], [0], []], executor, jobs=2, priority=priority)
    assert states == [State.SUCCESS] * 4
    if other_first:
        assert executor.index("run-start", 3) < executor.index("wrap-up-end", 0)
    else:
        assert executor.index("wrap-up-end", 0) < executor.index("run-start",
                                                                 2) < executor.index("run-start", 3)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_node_is_tidied_after_its_dependent_has_started(jobs: int) -> None:
    # a chain: each node's clean-up waits until the command of the one that waited for it runs
    executor = FakeExecutor()
    states = schedule([[], [0], [1]], executor, jobs=jobs)
    assert states == [State.SUCCESS] * 3
    for node in (0, 1):
        assert executor.index("finished", node) < executor.index("run-start", node + 1) \
            < executor.index("tidy", node)
    assert executor.index("run-end", 2) < executor.index("tidy", 2)


def test_every_started_node_is_tidied_once_before_the_run_returns() -> None:
    # a failure stops the build: what ran is tidied all the same, failed or not, and never twice
    executor = FakeExecutor(fail=[1], delay=0.01)
    states = schedule([[], [], [0], [2], [3]], executor, jobs=2)
    assert states[1] is State.FAILED
    tidied = [node for kind, node in executor.events if kind == "tidy"]
    assert sorted(tidied) == sorted(executor.ran)
    assert executor.events[-1][0] in ("tidy", "finished")


class SlowTidyExecutor(FakeExecutor):
    """`tidy` takes a while, as removing a large sandbox does."""

    def tidy(self, node: int) -> None:
        time.sleep(0.2)
        super().tidy(node)


def test_the_run_waits_for_the_last_tidy() -> None:
    executor = SlowTidyExecutor()
    schedule([[], [0]], executor, jobs=2)
    assert [node for kind, node in executor.events if kind == "tidy"] == [0, 1]


class FailingTidyExecutor(FakeExecutor):
    def tidy(self, node: int) -> None:
        super().tidy(node)
        raise RuntimeError("cannot remove the sandbox")


def test_an_exception_in_tidy_stops_the_build_and_is_raised() -> None:
    with pytest.raises(RuntimeError, match="cannot remove the sandbox"):
        schedule([[], [0], [1]], FailingTidyExecutor(), jobs=2)
