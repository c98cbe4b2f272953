"""Layer 5: a generic DAG executor — deterministic ready order, at most `jobs` running, keep-going.

The scheduler knows nothing of keys, the store or sandboxes (as in "Build Systems à la Carte":
the scheduler decides *when*, the rebuilder decides *whether and how*). It orders opaque integer
nodes and calls an Executor with two entry points:

* `prepare(node)` runs on the scheduling thread as soon as a node's dependencies have succeeded.
  It returns an outcome when the node can be settled at once (a cache hit), or None when real
  work is needed. Cache hits therefore never wait for a job slot or a thread hand-off, which is
  what keeps a no-op build of 10,000 actions fast.
* `run(node)` does the real work on one of `jobs` worker threads.

Task states follow §3: PENDING → RUNNING → SUCCESS | FAILED, plus SKIPPED for nodes that never
start because a dependency failed or because the build stopped after a failure.
"""

from __future__ import annotations

import enum
import heapq
import queue
import threading
from typing import Generic, Protocol, Sequence, TypeVar

Outcome = TypeVar("Outcome")


_slot = threading.local()


def current_slot() -> int:
    """The job slot (1..jobs) of the calling worker thread; 0 on the scheduling thread.

    Lets the executor say where an action ran (one lane per slot in a trace) without the
    scheduler knowing what an action is.
    """
    return getattr(_slot, "number", 0)


class State(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class Executor(Protocol[Outcome]):
    """What the scheduler drives; `succeeded` tells it whether dependents may start."""

    def prepare(self, node: int) -> Outcome | None: ...

    def run(self, node: int) -> Outcome: ...

    def succeeded(self, outcome: Outcome) -> bool: ...

    def finished(self, node: int, state: State, outcome: Outcome | None) -> None: ...

    def cancel(self) -> None: ...


class Scheduler(Generic[Outcome]):
    """Runs a DAG of `len(deps)` nodes; `priority[i]` orders ready nodes (smaller first)."""

    def __init__(self, deps: Sequence[Sequence[int]], priority: Sequence[object], jobs: int, keep_going: bool) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self._deps = deps
        self._priority = priority
        self._jobs = jobs
        self._keep_going = keep_going
        self.states = [State.PENDING] * len(deps)

    def run(self, executor: Executor[Outcome]) -> list[State]:
        """Drive every node to a final state and return the states, indexed by node.

        The loop has three phases per turn: settle every ready node that `prepare` can settle at
        once, hand out queued real work while slots are free, then block for one completion.
        An exception on the scheduling thread (a corrupt store, Ctrl-C) cancels running work,
        waits for the workers to come back, and propagates.
        """
        waiting = [len(set(d)) for d in self._deps]
        dependents: list[list[int]] = [[] for _ in self._deps]
        for node, deps in enumerate(self._deps):
            for dep in set(deps):
                dependents[dep].append(node)
        ready = [(self._priority[n], n) for n, count in enumerate(waiting) if count == 0]
        heapq.heapify(ready)
        work: list[tuple[object, int]] = []
        pool = _WorkerPool(executor, self._jobs)
        stopping = False
        running = 0

        def finish(node: int, outcome: Outcome | None, ok: bool) -> None:
            nonlocal stopping
            self.states[node] = State.SUCCESS if ok else State.FAILED
            executor.finished(node, self.states[node], outcome)
            if not ok:
                stopping = stopping or not self._keep_going
                return
            for child in dependents[node]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, (self._priority[child], child))

        try:
            while True:
                while ready and not stopping:
                    _, node = heapq.heappop(ready)
                    self.states[node] = State.RUNNING
                    outcome = executor.prepare(node)
                    if outcome is None:
                        heapq.heappush(work, (self._priority[node], node))
                    else:
                        finish(node, outcome, executor.succeeded(outcome))
                while work and running < self._jobs and not stopping:
                    pool.submit(heapq.heappop(work)[1])
                    running += 1
                if running == 0 and (stopping or not ready):
                    break
                if running:
                    node, outcome, error = pool.completed()
                    running -= 1
                    if error is not None:
                        raise error
                    finish(node, outcome, executor.succeeded(outcome))
        except BaseException:
            executor.cancel()
            while running:
                pool.completed()
                running -= 1
            raise
        finally:
            pool.close()
        for node, state in enumerate(self.states):
            if state in (State.PENDING, State.RUNNING):
                self.states[node] = State.SKIPPED
                executor.finished(node, State.SKIPPED, None)
        return self.states


class _WorkerPool(Generic[Outcome]):
    """`jobs` daemon threads that call `executor.run` and report (node, outcome, error)."""

    def __init__(self, executor: Executor[Outcome], jobs: int) -> None:
        self._executor = executor
        self._jobs = jobs
        self._todo: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[int, Outcome | None, BaseException | None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, node: int) -> None:
        if len(self._threads) < self._jobs:
            slot = len(self._threads) + 1
            thread = threading.Thread(target=self._work, args=(slot,), name=f"posbuild-worker-{slot}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._todo.put(node)

    def completed(self) -> tuple[int, Outcome | None, BaseException | None]:
        return self._done.get()

    def close(self) -> None:
        for _ in self._threads:
            self._todo.put(None)

    def _work(self, slot: int) -> None:
        _slot.number = slot
        while (node := self._todo.get()) is not None:
            try:
                self._done.put((node, self._executor.run(node), None))
            except BaseException as error:  # reported to the scheduling thread, which re-raises
                self._done.put((node, None, error))
