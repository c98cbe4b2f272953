"""Layer 0: graph algorithms over named nodes — deterministic topological order and cycle paths.

Kept apart from targets and actions so that the two properties the spec is strictest about
(§2 acyclicity, §6 a deterministic order) live in one small, separately tested place. Nodes are
plain strings (labels); ties are always broken by sorting, never by dict or set order.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from posbuild.errors import CycleError


def toposort(roots: Iterable[str], edges: Callable[[str], Sequence[str]]) -> list[str]:
    """Every node reachable from `roots`, dependencies first; raises CycleError with the full path.

    An iterative depth-first search (BUILD graphs can be deeper than Python's recursion limit).
    `path` holds the grey nodes in order, so when an edge points back into it the cycle is the
    slice of `path` from that node on.
    """
    order: list[str] = []
    done: set[str] = set()
    on_path: dict[str, int] = {}
    path: list[str] = []
    for root in sorted(set(roots)):
        if root in done:
            continue
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(edges(root)))]
        on_path[root] = 0
        path.append(root)
        while stack:
            node, children = stack[-1]
            for child in children:
                if child in done:
                    continue
                if child in on_path:
                    cycle = path[on_path[child]:] + [child]
                    raise CycleError(" -> ".join(cycle), tuple(cycle))
                on_path[child] = len(path)
                path.append(child)
                stack.append((child, iter(edges(child))))
                break
            else:
                stack.pop()
                path.pop()
                del on_path[node]
                done.add(node)
                order.append(node)
    return order
