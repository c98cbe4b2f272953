"""graph.toposort (dependencies first, deterministic, full cycle paths)."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import pytest

from posbuild.errors import CycleError
from posbuild.load.graph import toposort


def edges_of(graph: Mapping[str, Sequence[str]]) -> Callable[[str], Sequence[str]]:
    return lambda node: graph.get(node, ())


def assert_dependencies_first(order: list[str], graph: Mapping[str, Sequence[str]]) -> None:
    position = {node: i for i, node in enumerate(order)}
    for node in order:
        for dep in graph.get(node, ()):
            assert position[dep] < position[node], f"{dep} must come before {node} in {order}"


DIAMOND = {"top": ["left", "right"], "left": ["base"], "right": ["base"], "base": []}


def test_dependencies_come_first() -> None:
    order = toposort(["top"], edges_of(DIAMOND))
    assert_dependencies_first(order, DIAMOND)
    assert order == ["base", "left", "right", "top"]


def test_each_node_appears_once() -> None:
    order = toposort(["top", "left", "base"], edges_of(DIAMOND))
    assert sorted(order) == ["base", "left", "right", "top"]


def test_only_reachable_nodes_are_returned() -> None:
    graph = {"a": ["b"], "b": [], "unrelated": ["b"]}
    assert toposort(["a"], edges_of(graph)) == ["b", "a"]


def test_empty_roots() -> None:
    assert toposort([], edges_of(DIAMOND)) == []


def test_duplicate_edges_are_harmless() -> None:
    graph = {"a": ["b", "b", "c", "b"], "b": ["c", "c"], "c": []}
    assert toposort(["a"], edges_of(graph)) == ["c", "b", "a"]


def test_order_is_deterministic_for_equal_inputs() -> None:
    graph = {f"n{i}": [f"n{j}" for j in range(i) if (i * j) % 7 == 1] for i in range(60)}
    first = toposort(list(graph), edges_of(graph))
    for _ in range(5):
        assert toposort(list(graph), edges_of(graph)) == first
    assert_dependencies_first(first, graph)
    assert len(first) == 60


def test_root_order_and_duplicates_do_not_matter() -> None:
    graph = {"a": ["x"], "b": ["y"], "c": [], "x": [], "y": []}
    expected = toposort(["a", "b", "c"], edges_of(graph))
    assert toposort(["c", "b", "a"], edges_of(graph)) == expected
    assert toposort(["b", "a", "c", "a", "b"], edges_of(graph)) == expected
    assert expected == ["x", "a", "y", "b", "c"]  # roots are visited in sorted order


def test_edges_are_asked_once_per_node() -> None:
    calls: list[str] = []

    def edges(node: str) -> Sequence[str]:
        calls.append(node)
        return DIAMOND[node]

    toposort(["top", "left", "right"], edges)
    assert sorted(calls) == ["base", "left", "right", "top"]


def test_cycle_message_is_the_full_path() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"]}
    with pytest.raises(CycleError) as info:
        toposort(["a"], edges_of(graph))
    assert info.value.detail == "a -> b -> c -> a"
    assert info.value.render() == "ORCH-01 DAG cycle detected: a -> b -> c -> a"
    assert info.value.exit_code == 11


def test_cycle_path_starts_at_the_repeated_node_not_at_the_root() -> None:
    graph = {"root": ["lead"], "lead": ["x"], "x": ["y"], "y": ["z"], "z": ["x"]}
    with pytest.raises(CycleError) as info:
        toposort(["root"], edges_of(graph))
    assert info.value.detail == "x -> y -> z -> x"


def test_cycle_behind_an_explored_branch_is_found() -> None:
    graph = {"a": ["b", "c"], "b": [], "c": ["d"], "d": ["c"]}
    with pytest.raises(CycleError) as info:
        toposort(["a"], edges_of(graph))
    assert info.value.detail == "c -> d -> c"


def test_self_loop() -> None:
    with pytest.raises(CycleError) as info:
        toposort(["a"], edges_of({"a": ["a"]}))
    assert info.value.detail == "a -> a"


def test_diamond_is_not_a_cycle() -> None:
    graph = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert toposort(["a"], edges_of(graph)) == ["d", "b", "c", "a"]


def test_deep_chain_does_not_recurse() -> None:
    n = 10_000
    graph = {f"n{i:05d}": [f"n{i + 1:05d}"] if i + 1 < n else [] for i in range(n)}
    order = toposort(["n00000"], edges_of(graph))
    assert len(order) == n
    assert order[0] == f"n{n - 1:05d}"
    assert order[-1] == "n00000"
    assert order == sorted(graph, reverse=True)


def test_deep_cycle_reports_the_whole_path() -> None:
    n = 10_000
    graph = {f"n{i}": [f"n{(i + 1) % n}"] for i in range(n)}
    with pytest.raises(CycleError) as info:
        toposort(["n0"], edges_of(graph))
    path = info.value.detail.split(" -> ")
    assert len(path) == n + 1
    assert path[0] == path[-1] == "n0"
    assert path[1] == "n1" and path[-2] == f"n{n - 1}"
