"""The scheduler's resource budget (DESIGN §10): demands, capacity, aging, critical-path priorities.

A fake executor whose runs sleep for a given time and check, at the instant each one starts, that
the demands of the nodes running then stay within the capacity.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Sequence

import pytest

from posbuild.engine.resources import critical_path
from posbuild.engine.scheduler import Scheduler, State

TIMEOUT = 20.0


class BudgetExecutor:
    """Runs sleep `duration[node]` seconds; records start/end order and the peak summed demand."""

    def __init__(self, demand: Sequence[Sequence[int]], duration: Sequence[float],
                 wrap_up: float = 0.0) -> None:
        self.demand = [tuple(d) for d in demand]
        self.duration = duration
        self.wrap_up = wrap_up  # seconds each node spends in `conclude`
        self.lock = threading.Lock()
        self.using = [0] * len(self.demand[0]) if self.demand else []
        self.peak = list(self.using)
        self.running = 0
        self.max_running = 0
        self.starts: list[int] = []
        self.events: list[tuple[str, int]] = []

    def prepare(self, node: int) -> None:
        return None

    def start(self, node: int) -> int:
        with self.lock:
            self.starts.append(node)
            self.events.append(("start", node))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            for i, amount in enumerate(self.demand[node]):
                self.using[i] += amount
                self.peak[i] = max(self.peak[i], self.using[i])
        return node

    def wait(self, node: int) -> bool:
        time.sleep(self.duration[node])
        with self.lock:
            self.events.append(("end", node))
            self.running -= 1
            for i, amount in enumerate(self.demand[node]):
                self.using[i] -= amount
        return True

    def conclude(self, node: int) -> str:
        time.sleep(self.wrap_up)  # after its demand is given back
        return "ok"

    def tidy(self, node: int) -> None:
        pass

    def succeeded(self, outcome: str) -> bool:
        return outcome == "ok"

    def finished(self, node: int, state: State, outcome: str | None) -> None:
        pass

    def cancel(self) -> None:
        pass


def run(deps: Sequence[Sequence[int]], executor: BudgetExecutor, capacity: Sequence[int], jobs: int,
        priority: Sequence[object] | None = None, patience: int | None = None) -> list[State]:
    scheduler = Scheduler(deps, priority if priority is not None else list(range(len(deps))), jobs,
                          False, executor.demand, capacity, patience)
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(states=scheduler.run(executor)),
                              daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "scheduler did not finish (deadlock?)"
    return box["states"]  # type: ignore[return-value]


def test_a_demand_beyond_the_capacity_is_refused_up_front() -> None:
    with pytest.raises(ValueError,
                       match=r"node 1 demands \(3, 0\), beyond the capacity \(2, 100\)"):
        Scheduler([[], []], [0, 1], 4, False, [(1, 0), (3, 0)], (2, 100))


def test_without_demands_only_jobs_limits() -> None:
    executor = BudgetExecutor([()] * 6, [0.05] * 6)
    scheduler = Scheduler([[]] * 6, list(range(6)), 3, False)
    assert scheduler.run(executor) == [State.SUCCESS] * 6
    assert executor.max_running == 3


@pytest.mark.parametrize("seed", range(5))
def test_summed_demands_never_exceed_the_capacity_on_a_random_dag(seed: int) -> None:
    rng = random.Random(seed)
    count = 30
    deps = [sorted(rng.sample(range(n), min(n, rng.randint(0, 2)))) for n in range(count)]
    demand = [(rng.randint(0, 3), rng.choice([0, 100, 400, 1000]), rng.randint(0, 2))
              for _ in range(count)]
    executor = BudgetExecutor(demand, [rng.uniform(0.005, 0.03) for _ in range(count)])
    assert run(deps, executor, (3, 1000, 2), jobs=8) == [State.SUCCESS] * count
    assert all(p <= c for p, c in zip(executor.peak, (3, 1000, 2)))
    assert executor.max_running <= 8
    for node, node_deps in enumerate(deps):  # dependencies still come first
        for dep in node_deps:
            assert executor.events.index(("end", dep)) < executor.events.index(("start", node))


def test_the_budget_is_used_when_nodes_fit_together() -> None:
    """Four cpu=1 nodes on cpu=2 run two at a time, not one by one."""
    executor = BudgetExecutor([(1, 0)] * 4, [0.15] * 4)
    started = time.monotonic()
    run([[]] * 4, executor, (2, 1000), jobs=4)
    assert executor.peak == [2, 0]
    assert time.monotonic() - started < 0.55  # two waves of 0.15 s, not four


def test_jobs_limits_even_when_the_budget_has_room() -> None:
    executor = BudgetExecutor([(1, 0)] * 6, [0.05] * 6)
    run([[]] * 6, executor, (8, 0), jobs=2)
    assert executor.max_running == 2


def test_a_node_that_fits_alongside_a_waiting_one_starts_at_once() -> None:
    """Node 1 (cpu=2) waits for node 0's processor; node 2 needs only memory, so it runs
    meanwhile."""
    executor = BudgetExecutor([(1, 0), (2, 0), (0, 500)], [0.3, 0.05, 0.05])
    run([[], [], []], executor, (2, 1000), jobs=3, patience=0)
    assert executor.starts[:2] == [0, 2]
    assert executor.events.index(("start", 2)) < executor.events.index(("end", 0))


def test_a_large_node_is_not_starved_by_a_stream_of_small_ones() -> None:
    """Two chains of cpu=1 nodes would keep a processor busy for their whole length; the cpu=2 node,
    last by priority, gets its reservation after `patience` overtakings, not after the chains."""
    chain = 12
    deps: list[list[int]] = []
    for start in (0, chain):
        deps += [[start + i - 1] if i else [] for i in range(chain)]
    big = len(deps)
    deps.append([])
    demand = [(1,)] * (2 * chain) + [(2,)]
    executor = BudgetExecutor(demand, [0.02] * (2 * chain) + [0.02])
    run(deps, executor, (2,), jobs=2, priority=[(0, n) for n in range(big)] + [(1, big)],
        patience=2)
    before = executor.starts.index(big)
    assert before <= 2 + 2 + 1  # the first wave, at most `patience` overtakings, one more to drain
    assert executor.peak == [2]


def test_without_aging_the_same_large_node_would_wait_for_both_chains() -> None:
    """The control case: with unlimited patience the large node goes last."""
    chain = 6
    deps: list[list[int]] = []
    for start in (0, chain):
        deps += [[start + i - 1] if i else [] for i in range(chain)]
    big = len(deps)
    deps.append([])
    executor = BudgetExecutor([(1,)] * (2 * chain) + [(2,)], [0.02] * (2 * chain + 1))
    run(deps, executor, (2,), jobs=2, priority=[(0, n) for n in range(big)] + [(1, big)],
        patience=10**6)
    assert executor.starts[-1] == big


@pytest.mark.parametrize("seed", range(3))
def test_demands_given_back_before_conclude_are_reused_within_the_budget(seed: int) -> None:
    """Each node gives its demand back when its command ends and then concludes for as long
    again: the commands never exceed the budget or the jobs, and every node runs."""
    rng = random.Random(seed)
    demand = [(rng.randint(0, 2), rng.choice((0, 200, 600))) for _ in range(20)]
    executor = BudgetExecutor(demand, [0.01] * 20, wrap_up=0.01)
    states = run([[] for _ in range(20)], executor, (2, 1000), jobs=3)
    assert states == [State.SUCCESS] * 20
    assert executor.peak[0] <= 2 and executor.peak[1] <= 1000 and executor.max_running <= 3


def test_critical_path_priorities_start_the_longest_chain_first() -> None:
    # 0 -> 1 -> 2 (each 5 s) is the critical path; 3, 4 (1 s each, unknown durations) are not
    deps = [[], [0], [1], [], []]
    durations = {0: 5.0, 1: 5.0, 2: 5.0}
    labels = ["//p:c", "//p:d", "//p:e", "//p:a", "//p:b"]
    priority = critical_path(deps, labels, durations.get)
    assert priority == [(-15.0, "//p:c"), (-10.0, "//p:d"), (-5.0, "//p:e"), (-1.0, "//p:a"),
                        (-1.0, "//p:b")]
    executor = BudgetExecutor([(1,)] * 5, [0.01] * 5)
    run(deps, executor, (1,), jobs=1, priority=priority)
    # the critical path first, although //p:a sorts first by label
    assert executor.starts == [0, 1, 2, 3, 4]


def test_ties_in_path_length_are_broken_by_label() -> None:
    deps = [[], [], []]
    priority = critical_path(deps, ["//p:z", "//p:m", "//p:a"], lambda node: None)
    executor = BudgetExecutor([(1,)] * 3, [0.0] * 3)
    run(deps, executor, (1,), jobs=1, priority=priority)
    assert executor.starts == [2, 1, 0]


def test_the_start_order_is_deterministic() -> None:
    rng = random.Random(7)
    count = 25
    deps = [sorted(rng.sample(range(n), min(n, rng.randint(0, 2)))) for n in range(count)]
    demand = [(rng.randint(1, 2), rng.choice([0, 300])) for _ in range(count)]
    priority = critical_path(deps, [f"//p:{n:02d}" for n in range(count)], lambda node: None)
    orders = []
    for _ in range(3):
        executor = BudgetExecutor(demand, [0.0] * count)
        run(deps, executor, (2, 600), jobs=1, priority=priority)
        orders.append(executor.starts)
    assert orders[0] == orders[1] == orders[2]
