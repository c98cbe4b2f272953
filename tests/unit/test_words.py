"""Counts in messages: the singular for one, the plural otherwise."""

from __future__ import annotations

from posbuild.core.words import quantity


def test_one_is_singular_and_every_other_count_plural() -> None:
    assert quantity(1, "action") == "1 action"
    assert [quantity(n, "action") for n in (0, 2, 10)] == ["0 actions", "2 actions", "10 actions"]
    assert quantity(1, "running action") == "1 running action"
    assert quantity(2, "miss", "misses") == "2 misses" and quantity(1, "miss", "misses") == "1 miss"
