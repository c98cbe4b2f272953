"""Layer 0: a generic DAG executor — deterministic ready order, at most `jobs` running, keep-going.

The scheduler knows nothing of keys, the store or sandboxes (as in "Build Systems à la Carte":
the scheduler decides *when*, the rebuilder decides *whether and how*). It orders opaque integer
nodes and calls an Executor with these entry points:

* `prepare(node)` runs as soon as a node's dependencies have succeeded, under the scheduler's
  lock: on the calling thread at the start, later on the worker that finished the last
  dependency. It returns an outcome when the node can be settled at once (a cache hit), or None
  when real work is needed. Cache hits therefore never wait for a job slot, which is what keeps
  a no-op build of 10,000 actions fast (it starts no thread at all). Every other worker waits
  while it runs, so it must do no network I/O and nothing slow: a remote lookup belongs in
  `start`.
* `start(node)`, `wait(handle)` and `conclude(handle)` do the real work on one of `jobs` worker
  threads, without the lock: start it (a command), wait for its command, then finish it (check
  and keep its results). The worker then settles the node and takes its next one itself (`_Run`).
  With more than one job, when `wait` returns the worker hands the node's slot and resources on
  to its own next node and starts it before it concludes the last — if that next node would be
  chosen even if the dependents the last one's end makes ready were already waiting (their
  priorities are known), so this changes when nodes start, not which one is preferred. A
  command then need not wait for the bookkeeping of the one before it. Otherwise the node keeps
  its slot until `conclude` returns; with one job always, so a serial build's order is exact,
  cache hits included.
* `tidy(handle)` cleans up after a concluded node (its sandbox), also without the lock. Its
  outcome is final by then, so nothing waits for it: the worker tidies only once it has started
  its next node's command (or when it has none to start), which takes the clean-up off the path
  from a command's end to its dependent's start. The build is over only when every node is
  tidied.

Task states follow §3: PENDING → RUNNING → SUCCESS | FAILED, plus SKIPPED for nodes that never
start because a dependency failed or because the build stopped after a failure.

Resources
---------
Besides `jobs` (how many nodes' commands run at once), a node may carry a *demand* vector and the
scheduler a *capacity* vector of the same length (posbuild passes cpu, mem_mb, io). The scheduler
never runs a set of commands whose summed demands exceed the capacity in any component, nor more
than `jobs` of them.
Nodes settled by `prepare` take no resources. A node that demands more than the capacity could
never start; the constructor refuses it (the caller reports that before anything runs).

Dispatch is list scheduling with reservation ("backfilling"). Waiting nodes are taken in order,
and the first that fits starts; so the machine stays busy, and a node waits only while running
nodes really occupy what it needs. The order is the priority's *rank* first (a tuple priority's
first element: critical_path's longest remaining path), then the larger *dominant share* (the
largest fraction of the capacity the node takes in any one resource), then the whole priority
and the node number. Among equally urgent nodes the bulky ones go first, as in first-fit
decreasing bin packing, and the small ones fill what they leave: with cpu=2, mem_mb=1000, an
action of 600 MB starts beside one of 100 MB, not after two of 100 MB that would leave it to
run alone later, its second processor idle. A node of a better rank still goes first, however
small. To keep a large node from being postponed indefinitely by a stream of smaller ones
(aging):

1. A waiting node that does not fit is *overtaken* whenever another node starts that competes with
   it — one that uses some resource the waiting node would then lack room for. A node that fits
   *alongside* it does not delay it, and does not count: in every component it uses there is
   room for both, counting what the running nodes the waiting one waits for will free whichever
   of them end first (a 100 MB node beside a 600 MB one that waits for another 600 MB node's
   memory: that one's processor comes back with it). So a reservation keeps idle only what its
   holder will need.
2. After `patience` overtakings (default: `jobs`) the node holds a *reservation*: until it starts,
   only nodes that fit alongside it may start, whatever their priority. Running nodes end, its
   share frees up, and it starts. Only one node (the best-placed of those whose patience is spent)
   holds a reservation at a time; the reservation belongs to its demand class, so a better-placed
   node with the same demand may use it instead.

Waiting nodes are kept in one heap per distinct demand vector, so a dispatch looks at a handful of
heap tops, not at every waiting node.
"""

from __future__ import annotations

import collections
import enum
import heapq
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

Outcome = TypeVar("Outcome")
Result = TypeVar("Result")


_slot = threading.local()


def current_slot() -> int:
    """The job slot (1..jobs) of the node the calling worker thread runs; 0 on other threads.

    Lets the executor say where an action ran (one lane per slot in a trace: two nodes of one
    slot never run their commands at the same time) without the scheduler knowing what an
    action is. A node keeps its number while it is wrapped up after `ended()`.
    """
    return getattr(_slot, "number", 0)


class State(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class Executor(Protocol[Outcome]):
    """What the scheduler drives; `succeeded` tells it whether dependents may start.

    `wait` returns whether the node may still succeed (False: its command failed, so nothing
    new is started before the failure is known).
    """

    def prepare(self, node: int) -> Outcome | None: ...

    def start(self, node: int) -> Any: ...

    def wait(self, handle: Any) -> bool: ...

    def conclude(self, handle: Any) -> Outcome: ...

    def tidy(self, handle: Any) -> None: ...

    def succeeded(self, outcome: Outcome) -> bool: ...

    def finished(self, node: int, state: State, outcome: Outcome | None) -> None: ...

    def cancel(self) -> None: ...


class Scheduler(Generic[Outcome]):
    """Runs a DAG of `len(deps)` nodes; `priority[i]` orders ready nodes (smaller first; among
    nodes of equal rank, a tuple priority's first element, the bulkier first; see the module).

    `demand[i]` (optional) is node i's resource vector and `capacity` the budget it is taken from;
    `patience` is how often a waiting head lets competing nodes start before it (see above).
    `critical`: a context that holds off KeyboardInterrupt-like signals
    (posbuild.host.interrupt.deferred) while the calling thread hands out work, which must not stop
    half-way.
    """

    def __init__(self, deps: Sequence[Sequence[int]], priority: Sequence[object], jobs: int,
                 keep_going: bool,
                 demand: Sequence[Sequence[int]] | None = None, capacity: Sequence[int] = (),
                 patience: int | None = None,
                 critical: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
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
        self._critical = critical
        for node, need in enumerate(self._demand):
            if len(need) != len(self._capacity) or any(n > c for n, c in zip(need, self._capacity)):
                raise ValueError(
                    f"node {node} demands {need}, beyond the capacity {self._capacity}")
        self.states = [State.PENDING] * len(deps)

    def run(self, executor: Executor[Outcome]) -> list[State]:
        """Drive every node to a final state and return the states, indexed by node.

        The calling thread settles what `prepare` can settle at once, starts worker threads for
        the real work, and waits. A worker that finishes a node settles it itself and takes its
        next node (see `_Run`). An exception anywhere (a corrupt store, Ctrl-C) cancels running
        work, waits for the workers to come back, and propagates.
        """
        turn = _Run(self, executor)
        with turn.lock:
            try:
                turn.settle()
                # a signal must not come between taking a node and handing it out
                with self._critical():
                    turn.hand_out()
                while not turn.over():
                    turn.lock.wait()
            except BaseException as error:
                turn.fail(error)
                while turn.busy():
                    turn.lock.wait()
            if turn.error is not None:
                raise turn.error
        for node, state in enumerate(self.states):
            if state in (State.PENDING, State.RUNNING):
                self.states[node] = State.SKIPPED
                executor.finished(node, State.SKIPPED, None)
        return self.states


class _Run(Generic[Outcome]):
    """One `Scheduler.run`: the ready heap, the waiting work and the workers, all under `lock`.

    Whoever settles a completion also hands out what it made possible: a worker that finishes a
    node marks it, prepares the dependents that became ready, takes the next node itself and
    wakes (or starts) another worker only for work beyond that. So a worker goes from one action
    to the next without waiting for another thread to wake up and take the interpreter lock; a
    separate scheduling thread cost each worker of a 2-core build of 10,000 cheap actions about
    a fifth of its time, idle between actions. `prepare` and `finished` therefore run on
    whichever thread holds the lock, never two at once.

    With more than one job a worker also starts its next node before it concludes the last (the
    module's docstring says when): the next command runs while the last one's results are kept.
    Starting it on another thread instead measured no faster: the hand-off and the contention for
    the interpreter lock cost what the overlap gained.
    """

    def __init__(self, scheduler: Scheduler[Outcome], executor: Executor[Outcome]) -> None:
        self._scheduler = scheduler
        self._executor = executor
        self._jobs = scheduler._jobs
        self._waiting_deps = [len(set(d)) for d in scheduler._deps]
        self._dependents: list[list[int]] = [[] for _ in scheduler._deps]
        for node, deps in enumerate(scheduler._deps):
            for dep in set(deps):
                self._dependents[dep].append(node)
        self._ready = [(scheduler._priority[n], n)
                       for n, count in enumerate(self._waiting_deps) if count == 0]
        heapq.heapify(self._ready)
        self._work = _Waiting(scheduler._priority, scheduler._demand, scheduler._capacity,
                              scheduler._patience)
        self.lock = threading.Condition()
        self.running = 0  # nodes holding a job slot
        self.finishing = 0  # nodes being concluded after handing their slot on
        self.untidy = 0  # concluded nodes whose `tidy` waits for their worker's next start
        # free slot numbers, a heap: the lowest is taken
        self._slots = list(range(1, self._jobs + 1))
        self.error: BaseException | None = None
        self._stopping = False
        # taken, not yet claimed
        self._handed: collections.deque[tuple[int, int]] = collections.deque()
        self._idle = 0  # workers waiting for work
        self._workers = 0

    def settle(self) -> None:
        """Prepare every ready node; those `prepare` settles finish at once, the rest wait for a
        slot."""
        states, executor = self._scheduler.states, self._executor
        while self._ready and not self._stopping:
            _, node = heapq.heappop(self._ready)
            states[node] = State.RUNNING
            outcome = executor.prepare(node)
            if outcome is None:
                self._work.add(node)
            else:
                self._finish(node, outcome)

    def busy(self) -> bool:
        """Whether some node is between `start` and the end of its `tidy`."""
        return self.running + self.finishing + self.untidy > 0

    def over(self) -> bool:
        """Nothing runs and nothing more will start."""
        return not self.busy() and (self._stopping or not (self._ready or self._work.waiting()))

    def fail(self, error: BaseException) -> None:
        """Stop the build for an exception: the first one is raised once running work has
        returned."""
        if self.error is None:
            self.error = error
            self._stopping = True
            self._executor.cancel()
        self.lock.notify_all()

    def hand_out(self) -> None:
        """Start every node that may start now: each is taken at once (so it counts as started,
        whatever happens next) and handed to an idle worker, or to a new one."""
        while (job := self._take()) is not None:
            self._handed.append(job)
            if self._idle >= len(self._handed):
                self.lock.notify()
            else:
                self._workers += 1
                threading.Thread(target=self._serve, name=f"posbuild-worker-{self._workers}",
                                 daemon=True).start()

    def _take(self, before: tuple[object, int] | None = None) -> tuple[int, int] | None:
        """(node, slot number) of the node to start next, or None; its slot and resources are taken.
        `before`: only a node that comes before it in priority order (see `_Waiting.take`)."""
        if self._stopping or self.running >= self._jobs:
            return None
        node = self._work.take(before)
        if node is None:
            return None
        self.running += 1
        return node, heapq.heappop(self._slots)

    def _finish(self, node: int, outcome: Outcome) -> None:
        ok = self._executor.succeeded(outcome)
        states = self._scheduler.states
        states[node] = State.SUCCESS if ok else State.FAILED
        self._executor.finished(node, states[node], outcome)
        if not ok:
            self._stopping = self._stopping or not self._scheduler._keep_going
            return
        for child in self._dependents[node]:
            self._waiting_deps[child] -= 1
            if self._waiting_deps[child] == 0:
                heapq.heappush(self._ready, (self._scheduler._priority[child], child))

    def _serve(self) -> None:
        """A worker: take a node, start it and wait for it without the lock, start the next one
        when it may (see the module's docstring), conclude and settle the last, start the next
        one and tidy the last, and so on."""
        with self.lock:
            current: tuple[int, int, Any] | None = None  # (node, slot, handle) whose command runs
            untidy: list[Any] = []  # the handle of a concluded node, until `tidy` is called
            while True:
                if current is None:
                    job = self._next_job()
                    if job is None:
                        if untidy:
                            self._tidy(untidy.pop(), deferred=True)
                            continue  # what may have become possible meanwhile
                        if self.over():
                            self.lock.notify_all()
                            return
                        self._idle += 1
                        self.lock.wait()
                        self._idle -= 1
                        continue
                    self.hand_out()
                    current = self._start(job)
                    if untidy:
                        self._tidy(untidy.pop(), deferred=True)
                    continue
                node, slot, handle = current
                may_succeed, error = self._unlocked(self._executor.wait, handle)
                if error is not None:
                    self._free(node, slot)
                    self.fail(error)
                    current = None
                    continue
                early, current = False, None
                if may_succeed and self._jobs > 1 and not self._stopping:
                    early, current = self._start_early(node, slot)
                self._conclude(node, slot, handle, early, busy=current is not None)
                if current is not None:  # the next command runs already
                    self._tidy(handle, deferred=False)
                else:
                    untidy.append(handle)
                    self.untidy += 1

    def _tidy(self, handle: Any, deferred: bool) -> None:
        """Tidy a concluded node, whatever its `conclude` did; `deferred`: it waited, counted in
        `untidy`."""
        _, error = self._unlocked(self._executor.tidy, handle)
        if deferred:
            self.untidy -= 1
        if error is not None:
            self.fail(error)
        if not self.busy():
            self.lock.notify_all()

    def _next_job(self) -> tuple[int, int] | None:
        """A node handed to this worker, or else the next it may take after settling what is
        ready."""
        if self._handed:
            return self._handed.popleft()
        try:
            self.settle()
            return self._take()
        except BaseException as error:
            self.fail(error)
            return None

    def _unlocked(self, call: Callable[[Any], Result],
                  argument: Any) -> tuple[Result | None, BaseException | None]:
        """Call into the executor without the lock: (its result, None), or (None, what it
        raised)."""
        self.lock.release()
        try:
            return call(argument), None
        except BaseException as raised:
            return None, raised
        finally:
            self.lock.acquire()

    def _start(self, job: tuple[int, int]) -> tuple[int, int, Any] | None:
        """Start a taken node: (node, slot, handle), or None if `start` raised."""
        node, slot = job
        _slot.number = slot
        handle, error = self._unlocked(self._executor.start, node)
        if error is not None:
            self._free(node, slot)
            self.fail(error)
            return None
        return node, slot, handle

    def _start_early(self, node: int, slot: int) -> tuple[bool, tuple[int, int, Any] | None]:
        """`node`'s command is over: hand its slot on to this worker's next node now, if one comes
        before every dependent that `node` will release (their priorities are known). Returns
        whether the slot was handed on, and the started node. If none may start, `node` keeps
        its slot until it is concluded, exactly as if nothing had been tried; other workers
        never take a slot that is handed on like this."""
        coming = [(self._work.key[c], c) for c in self._dependents[node]
                  if self._waiting_deps[c] == 1]
        self._free(node, slot)
        job = self._take(min(coming) if coming else None)
        if job is None:
            self._hold(node, slot)
            return False, None
        self.finishing += 1
        return True, self._start(job)

    def _conclude(self, node: int, slot: int, handle: Any, early: bool, busy: bool) -> None:
        """Conclude a node whose command is over, and settle it. `early`: its slot was given back
        already; `busy`: this worker runs another node meanwhile, so what becomes ready is handed
        to others."""
        _slot.number = slot
        outcome, error = self._unlocked(self._executor.conclude, handle)
        if early:
            self.finishing -= 1
        else:
            self._free(node, slot)
        if error is not None:
            self.fail(error)
        elif self.error is None:  # after an exception, work that comes back is dropped
            try:
                self._finish(node, outcome)  # type: ignore[arg-type]
                if busy:
                    self.settle()
                    self.hand_out()
            except BaseException as raised:
                self.fail(raised)
        if not self.busy():
            self.lock.notify_all()

    def _free(self, node: int, slot: int) -> None:
        """Give a node's job slot and resources back."""
        self.running -= 1
        heapq.heappush(self._slots, slot)
        self._work.release(node)

    def _hold(self, node: int, slot: int) -> None:
        """Undo `_free(node, slot)` (the lock was held throughout, so nobody took them)."""
        self.running += 1
        self._slots.remove(slot)
        heapq.heapify(self._slots)
        self._work.hold(node)


class _Waiting:
    """Nodes waiting for a job slot and their resources; `take()` applies the dispatch policy.

    Holds the free part of the capacity: `take()` subtracts a started node's demand, `release()`
    gives it back when the node ends.
    """

    def __init__(self, priority: Sequence[object], demand: Sequence[tuple[int, ...]],
                 capacity: tuple[int, ...], patience: int) -> None:
        self._demand = demand
        self._free = list(capacity)
        self._running: collections.Counter[tuple[int, ...]] = collections.Counter()
        shares: dict[tuple[int, ...], float] = {}
        for need in demand:
            if need not in shares:
                shares[need] = -max((n / c for n, c in zip(need, capacity) if c), default=0.0)
        # (rank, −dominant share, priority): the module's docstring says why
        self.key = [(_rank(p), shares[need], p) for p, need in zip(priority, demand)]
        self._patience = patience
        self._heaps: dict[tuple[int, ...], list[tuple[tuple[object, float, object], int]]] = {}
        self._bypassed: dict[int, int] = {}  # waiting node → competing nodes started ahead of it
        # the demand of a head that holds a reservation
        self._reserved: tuple[int, ...] | None = None

    def add(self, node: int) -> None:
        heapq.heappush(self._heaps.setdefault(self._demand[node], []), (self.key[node], node))

    def waiting(self) -> bool:
        """Whether any node waits for a slot."""
        return any(self._heaps.values())

    def release(self, node: int) -> None:
        need = self._demand[node]
        self._running[need] -= 1
        for i, amount in enumerate(need):
            self._free[i] += amount

    def hold(self, node: int) -> None:
        """Take a released node's demand again."""
        need = self._demand[node]
        self._running[need] += 1
        for i, amount in enumerate(need):
            self._free[i] -= amount

    def take(self, before: tuple[object, int] | None = None) -> int | None:
        """The node to start now (its demand is then taken from the free capacity), or None.

        With `before`, only a node whose (priority, node) is smaller may start: one that would be
        chosen even if the node `before` describes were waiting too.
        """
        tops = sorted(heap[0] for heap in self._heaps.values() if heap)
        if not tops:
            return None
        if self._reserved is None:
            starving = next((n for _, n in tops if self._bypassed.get(n, 0) >= self._patience),
                            None)
            if starving is not None:
                self._reserved = self._demand[starving]
        allowed = tops if before is None else [entry for entry in tops if entry < before]
        if self._reserved is not None:
            head_entry = self._heaps[self._reserved][0]
            head = head_entry[1]
            if self._fits(self._demand[head]) and (before is None or head_entry < before):
                return self._start(head)
            return next((self._start(n) for _, n in allowed
                         if n != head and self._fits(self._demand[n])
                         and self._alongside(self._demand[n], self._demand[head])), None)
        for _, node in allowed:
            if self._fits(self._demand[node]):
                # every waiting node this start delays has been overtaken once more
                for _, other in tops:
                    if other != node and not self._fits(self._demand[other]) \
                            and not self._alongside(self._demand[node], self._demand[other]):
                        self._bypassed[other] = self._bypassed.get(other, 0) + 1
                return self._start(node)
        return None

    def _fits(self, need: tuple[int, ...]) -> bool:
        return all(n <= f for n, f in zip(need, self._free))

    def _alongside(self, need: tuple[int, ...], head: tuple[int, ...]) -> bool:
        """Whether starting `need` now cannot delay `head`: in every component it uses, there is
        room for both once `head` could start at all.

        `head` lacks some component j now, so it waits until running nodes end, one of them at
        least using j; whichever they are, they free at least `least[i]` of each component i.
        """
        least = [0] * len(head)
        for j, (h, f) in enumerate(zip(head, self._free)):
            if h > f:  # one node using j must end: it frees at least the least such node holds
                users = [d for d, count in self._running.items() if count and d[j]]
                for i in range(len(least)):
                    least[i] = max(least[i], min((d[i] for d in users), default=0))
        return all(n == 0 or n + h <= f + extra
                   for n, h, f, extra in zip(need, head, self._free, least))

    def _start(self, node: int) -> int:
        """Start `node`, the top of its demand's heap (a reservation is held by a heap's top
        too)."""
        need = self._demand[node]
        heapq.heappop(self._heaps[need])
        self._running[need] += 1
        for i, amount in enumerate(need):
            self._free[i] -= amount
        if need == self._reserved:
            self._reserved = None
        self._bypassed.pop(node, None)
        return node


def _rank(priority: object) -> object:
    """The part of a priority that ranks nodes: a tuple's first element (critical_path's −longest
    path), else the whole priority."""
    return priority[0] if isinstance(priority, tuple) and priority else priority
