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

Resources
---------
Besides `jobs` (how many nodes run at once), a node may carry a *demand* vector and the scheduler a
*capacity* vector of the same length (posbuild passes cpu, mem_mb, io). The scheduler never runs a
set of nodes whose summed demands exceed the capacity in any component, nor more than `jobs` nodes.
Nodes settled by `prepare` take no resources. A node that demands more than the capacity could
never start; the constructor refuses it (the caller reports that before anything runs).

Dispatch is list scheduling with reservation ("backfilling"). Waiting nodes are taken in priority
order (smaller first, ties by node number), and the first that fits starts; so the machine stays
busy, and a node waits only while running nodes really occupy what it needs. To keep a large node
from being postponed indefinitely by a stream of smaller ones (aging):

1. A waiting node that does not fit is *overtaken* whenever another node starts that competes with
   it — one that uses some resource the waiting node would then lack room for. A node that fits
   *alongside* it (in every component it uses, there is room for both) does not delay it, and
   does not count.
2. After `patience` overtakings (default: `jobs`) the node holds a *reservation*: until it starts,
   only nodes that fit alongside it may start, whatever their priority. Running nodes end, its
   share frees up, and it starts. Only one node (the best-placed of those whose patience is spent)
   holds a reservation at a time; the reservation belongs to its demand class, so a better-placed
   node with the same demand may use it instead.

Waiting nodes are kept in one heap per distinct demand vector, so a dispatch looks at a handful of
heap tops, not at every waiting node.
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
    """Runs a DAG of `len(deps)` nodes; `priority[i]` orders ready nodes (smaller first).

    `demand[i]` (optional) is node i's resource vector and `capacity` the budget it is taken
    from; `patience` is how often a waiting head lets competing nodes start before it (see above).
    """

    def __init__(self, deps: Sequence[Sequence[int]], priority: Sequence[object], jobs: int, keep_going: bool,
                 demand: Sequence[Sequence[int]] | None = None, capacity: Sequence[int] = (),
                 patience: int | None = None) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self._deps = deps
        self._priority = priority
        self._jobs = jobs
        self._keep_going = keep_going
        self._capacity = tuple(capacity)
        none = (0,) * len(self._capacity)
        self._demand = [tuple(d) for d in demand] if demand is not None else [none] * len(deps)
        self._patience = jobs if patience is None else patience
        for node, need in enumerate(self._demand):
            if len(need) != len(self._capacity) or any(n > c for n, c in zip(need, self._capacity)):
                raise ValueError(f"node {node} demands {need}, beyond the capacity {self._capacity}")
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
        work = _Waiting(self._priority, self._demand, self._capacity, self._patience)
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
                        work.add(node)
                    else:
                        finish(node, outcome, executor.succeeded(outcome))
                while running < self._jobs and not stopping and (node := work.take()) is not None:
                    pool.submit(node)
                    running += 1
                if running == 0 and (stopping or not ready):
                    break
                if running:
                    node, outcome, error = pool.completed()
                    running -= 1
                    work.release(node)
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


class _Waiting:
    """Nodes waiting for a job slot and their resources; `take()` applies the dispatch policy.

    Holds the free part of the capacity: `take()` subtracts a started node's demand, `release()`
    gives it back when the node ends.
    """

    def __init__(self, priority: Sequence[object], demand: Sequence[tuple[int, ...]], capacity: tuple[int, ...],
                 patience: int) -> None:
        self._priority = priority
        self._demand = demand
        self._free = list(capacity)
        self._patience = patience
        self._heaps: dict[tuple[int, ...], list[tuple[object, int]]] = {}
        self._bypassed: dict[int, int] = {}  # waiting node → competing nodes started ahead of it
        self._reserved: tuple[int, ...] | None = None  # the demand of a head that holds a reservation

    def add(self, node: int) -> None:
        heapq.heappush(self._heaps.setdefault(self._demand[node], []), (self._priority[node], node))

    def release(self, node: int) -> None:
        for i, amount in enumerate(self._demand[node]):
            self._free[i] += amount

    def take(self) -> int | None:
        """The node to start now (its demand is then taken from the free capacity), or None."""
        tops = sorted(heap[0] for heap in self._heaps.values() if heap)
        if not tops:
            return None
        if self._reserved is None:
            starving = next((n for _, n in tops if self._bypassed.get(n, 0) >= self._patience), None)
            if starving is not None:
                self._reserved = self._demand[starving]
        if self._reserved is not None:
            head = self._heaps[self._reserved][0][1]
            if self._fits(self._demand[head]):
                return self._start(head)
            return next((self._start(n) for _, n in tops
                         if n != head and self._fits(self._demand[n])
                         and self._alongside(self._demand[n], self._demand[head])), None)
        for _, node in tops:
            if self._fits(self._demand[node]):
                for _, other in tops:  # every waiting node this start delays has been overtaken once more
                    if other != node and not self._fits(self._demand[other]) \
                            and not self._alongside(self._demand[node], self._demand[other]):
                        self._bypassed[other] = self._bypassed.get(other, 0) + 1
                return self._start(node)
        return None

    def _fits(self, need: tuple[int, ...]) -> bool:
        return all(n <= f for n, f in zip(need, self._free))

    def _alongside(self, need: tuple[int, ...], head: tuple[int, ...]) -> bool:
        """Whether starting `need` now leaves, in every component it uses, room for `head` too."""
        return all(n == 0 or n + h <= f for n, h, f in zip(need, head, self._free))

    def _start(self, node: int) -> int:
        """Start `node`, the top of its demand's heap (a reservation is held by a heap's top too)."""
        need = self._demand[node]
        heapq.heappop(self._heaps[need])
        for i, amount in enumerate(need):
            self._free[i] -= amount
        if need == self._reserved:
            self._reserved = None
        self._bypassed.pop(node, None)
        return node


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
