"""Mixed budgets are used, not only respected (DESIGN §10): the real Scheduler in simulated time.

Each node's command lasts a whole number of time units. The executor's `wait` blocks until the
test ends the node: the test lets the scheduler settle (every started node waits for its end, and
no node has started for a few polls), moves the clock to the next end, ends one node (the lowest
of those due), and so on. So start times and the makespan are in simulated units, whatever the
machine's speed.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

from posbuild.engine.resources import critical_path
from posbuild.engine.scheduler import Scheduler, State

TIMEOUT = 20.0
# how long no node may start for the scheduler to count as settled (three times in a row): long
# enough for a worker on a loaded machine to take the node a finished one hands it
POLL = 0.05
CAPACITY = (2, 1000, 0)  # cpu, mem_mb, io
BIG: tuple[int, ...] = (1, 600, 0)
SMALL: tuple[int, ...] = (1, 100, 0)
BOTH: tuple[int, ...] = (2, 0, 0)


class ClockExecutor:
    """Records each node's simulated start; `wait` returns once the test ends the node."""

    def __init__(self, count: int) -> None:
        self.lock = threading.Condition()
        self.now = 0
        self.started: dict[int, int] = {}
        self.order: list[int] = []
        self.waiting: set[int] = set()
        self.ended: set[int] = set()
        self.finished_nodes: set[int] = set()
        self.gates = [threading.Event() for _ in range(count)]

    def prepare(self, node: int) -> None:
        return None

    def start(self, node: int) -> int:
        with self.lock:
            self.started[node] = self.now
            self.order.append(node)
            self.lock.notify_all()
        return node

    def wait(self, node: int) -> bool:
        with self.lock:
            self.waiting.add(node)
            self.lock.notify_all()
        self.gates[node].wait(TIMEOUT)
        return True

    def conclude(self, node: int) -> str:
        return "ok"

    def tidy(self, node: int) -> None:
        pass

    def succeeded(self, outcome: str) -> bool:
        return outcome == "ok"

    def finished(self, node: int, state: State, outcome: str | None) -> None:
        with self.lock:
            self.finished_nodes.add(node)
            self.lock.notify_all()

    def cancel(self) -> None:
        pass

    def settled(self) -> bool:
        """Every ended node is finished and every started one waits for its end."""
        return self.ended <= self.finished_nodes and \
            set(self.started) - self.ended <= self.waiting


def simulate(demand: Sequence[tuple[int, ...]], units: Sequence[int], jobs: int,
             priority: Sequence[object],
             patience: int | None = None) -> tuple[ClockExecutor, int]:
    """Run the nodes (no dependencies) and return the executor and the makespan in units."""
    count = len(demand)
    executor = ClockExecutor(count)
    scheduler: Scheduler[str] = Scheduler([[]] * count, priority, jobs, False, demand, CAPACITY,
                                          patience)
    box: dict[str, list[State]] = {}
    thread = threading.Thread(target=lambda: box.update(states=scheduler.run(executor)),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while True:
        with executor.lock:
            stable = 0
            while stable < 3:  # a node handed to another worker starts within a few polls
                before = len(executor.order)
                executor.lock.wait_for(executor.settled, deadline - time.monotonic())
                executor.lock.wait(POLL)
                stable = stable + 1 if executor.settled() and len(executor.order) == before \
                    else 0
            running = [n for n in executor.started if n not in executor.ended]
            if not running:
                break
            executor.now = min(executor.started[n] + units[n] for n in running)
            # one node at a time, the lowest first, so the order of ends is fixed too
            node = min(n for n in running if executor.started[n] + units[n] == executor.now)
            executor.ended.add(node)
        executor.gates[node].set()
        assert time.monotonic() < deadline, "the scheduler did not settle"
    thread.join(TIMEOUT)
    assert box["states"] == [State.SUCCESS] * count
    return executor, executor.now


def overlapping(executor: ClockExecutor, units: Sequence[int]) -> set[tuple[int, int]]:
    spans = {n: (s, s + units[n]) for n, s in executor.started.items()}
    return {(a, b) for a in spans for b in spans
            if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]}


def mixed_budgets() -> tuple[list[tuple[int, ...]], list[str]]:
    """Four 600 MB actions, four 100 MB ones and one that takes both processors; the labels
    sort the small ones first, so the label alone would run the large ones one by one."""
    demand = [SMALL] * 4 + [BIG] * 4 + [BOTH]
    labels = [f"//p:a{n}" for n in range(4)] + [f"//p:b{n}" for n in range(4)] + ["//p:c"]
    return demand, labels


def test_mixed_budgets_run_in_five_units_not_seven() -> None:
    demand, labels = mixed_budgets()
    units = [1] * len(demand)
    priority = critical_path([[]] * len(demand), labels, lambda node: 0.6)
    executor, makespan = simulate(demand, units, 2, priority)
    assert makespan == 5  # 3.0 s of 0.6 s actions, not 4.2 s
    pairs = overlapping(executor, units)
    for big in range(4, 8):  # each 600 MB action runs beside a 100 MB one
        assert any(big in pair and set(pair) & set(range(4)) for pair in pairs)
    for a, b in pairs:  # the capacity holds at every instant
        assert all(x + y <= c for x, y, c in zip(demand[a], demand[b], CAPACITY))


def test_the_start_order_of_mixed_budgets_is_deterministic() -> None:
    demand, labels = mixed_budgets()
    priority = critical_path([[]] * len(demand), labels, lambda node: 0.6)
    orders = {tuple(simulate(demand, [1] * len(demand), 4, priority)[0].order)
              for _ in range(3)}
    assert len(orders) == 1


def test_a_better_rank_still_starts_first_however_small() -> None:
    """The critical path comes before any packing: the small node of the longer path starts
    first, although the bulky one would pack better."""
    demand = [BIG, SMALL, BIG]
    priority = critical_path([[]] * 3, ["//p:a", "//p:b", "//p:c"],
                             [1.0, 5.0, 1.0].__getitem__)
    executor, _ = simulate(demand, [1, 5, 1], 1, priority)
    assert executor.order[0] == 1


def test_a_reservation_keeps_idle_only_what_its_holder_needs() -> None:
    """Node 1 (600 MB) holds a reservation at once (patience 0) and waits for node 0's memory.
    The 100 MB nodes take the other processor meanwhile: when node 0 ends, its processor comes
    back with its memory, so they never delay node 1."""
    demand = [BIG, BIG, SMALL, SMALL, SMALL]
    units = [3, 1, 1, 1, 1]
    executor, makespan = simulate(demand, units, 2, list(range(5)), patience=0)
    assert executor.started == {0: 0, 2: 0, 3: 1, 4: 2, 1: 3}
    assert makespan == 4  # not 3 units of node 0 alone, then the rest


def test_a_reservation_still_holds_back_what_would_delay_its_holder() -> None:
    """Node 1 needs both processors; a node that would take one of them waits with it."""
    demand = [SMALL, BOTH, SMALL]
    executor, _ = simulate(demand, [2, 1, 1], 2, list(range(3)), patience=0)
    assert executor.started == {0: 0, 1: 2, 2: 3}
