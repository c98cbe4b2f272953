"""Layer 0: counts in messages as English says them: `1 action`, `2 actions`."""

from __future__ import annotations


def quantity(number: int, noun: str, plural: str = "") -> str:
    """`number` and `noun`, in the plural unless it is one (`plural` where adding -s is wrong:
    `quantity(n, "miss", "misses")`)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
