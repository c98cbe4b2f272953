"""Layer 0: the resource side of a build (DESIGN §10) — the budget check, priorities, usage checks.

Every action declares `resources = {"cpu": N, "mem_mb": M, "io": K}` (defaults cpu=1, mem_mb=0,
io=0; analysis stores them as `Action.resources`, a (cpu, mem_mb, io) tuple) and `[resources]` in
posbuild.toml sets the budget they are taken from. The scheduler enforces the sums; this module:

* refuses, before anything runs, an action that could never fit (`check_budget`, ORCH-05). `-j`
  counts actions, not processors: an action with cpu=4 under `-j 1` runs (alone), as long as the
  budget has 4 processors;
* orders ready actions by their longest remaining path (`critical_path`), measured with the
  durations of earlier builds, so the chain that bounds the build's wall time starts first;
* compares what an action used with what it declared once it has ended (`memory_overrun`).

mem_mb=0 means "untracked": the action takes no memory from the budget and is never checked.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Callable, Iterable, Sequence

from posbuild.core.action import Action
from posbuild.workspace.config import RESOURCE_NAMES, Budget
from posbuild.errors import ResourceOversubscription

UNKNOWN_DURATION = 1.0  # seconds, for an action that has never run


def fits(requests: Iterable[tuple[int, int, int]], budget: Budget) -> bool:
    """Whether every one of these (cpu, mem_mb, io) requests fits within the budget."""
    limits = budget.as_tuple()
    return all(all(r <= limit for r, limit in zip(request, limits)) for request in requests)


def check_budget(actions: Sequence[Action], budget: Budget) -> None:
    """ORCH-05 for the first action (by label) that declares more of a resource than the budget
    holds."""
    # few distinct requests, however many actions
    if fits(set(map(attrgetter("resources"), actions)), budget):
        # the common case; this runs on every build that is not settled from the graph's facts alone
        return
    limits = budget.as_tuple()
    for action in sorted((a for a in actions
                          if any(r > cap for r, cap in zip(a.resources, limits))),
                         key=lambda a: a.label)[:1]:
        name, asked, limit = next((n, r, cap) for n, r,
                                  cap in zip(RESOURCE_NAMES, action.resources, limits)
                                  if r > cap)
        raise ResourceOversubscription(
            f"{action.label} requests {name}={asked} but the budget is {name}={limit} ([resources] "
            "in posbuild.toml)"
        )


def critical_path(deps: Sequence[Sequence[int]], labels: Sequence[str],
                  duration: Callable[[int], float | None]) -> list[tuple[float, str]]:
    """Scheduler priorities: (−longest remaining path, label) per node, smaller first.

    A node's remaining path is its own duration plus the longest remaining path among its
    dependents; `deps` must list dependencies before dependents (the order of a build's actions).
    `duration(node)` is the duration recorded in an earlier build, or None (then 1 s).
    """
    dependents: list[list[int]] = [[] for _ in deps]
    for node, node_deps in enumerate(deps):
        for dep in node_deps:
            dependents[dep].append(node)
    path = [0.0] * len(deps)
    for node in reversed(range(len(deps))):
        own = duration(node)
        path[node] = (UNKNOWN_DURATION if own is None else own) + max(
            (path[d] for d in dependents[node]), default=0.0)
    return [(-round(length, 3), label) for length, label in zip(path, labels)]


def memory_overrun(action: Action, max_rss_kb: int | None) -> ResourceOversubscription | None:
    """ORCH-05 when the action's measured peak memory exceeds its declared mem_mb."""
    declared = action.resources[1]
    if not declared or max_rss_kb is None:
        return None
    used_mb = -(-max_rss_kb // 1024)
    if used_mb <= declared:
        return None
    return ResourceOversubscription(
        f"{action.label} used {used_mb} MB of memory but declared mem_mb={declared}")
