"""Layer 2: the bytes an action is expected to move, known before its sandbox is made.

Its inputs' sizes (sources from their signatures taken for its key, generated ones from this
build's products or the last saved state) plus the sizes its outputs had when it last ran. The
local sandboxes weigh it against the free space of a memory base (exec/placement.py). Dictionary
lookups only: this runs for every action that executes.
"""

from __future__ import annotations

from posbuild.core.action import Action
from posbuild.engine.filestate import FileStates
from posbuild.engine.products import BuildProducts


def expected_bytes(action: Action, products: BuildProducts, files: FileStates) -> int:
    """Input sizes now plus output sizes at the last run (0 for what is not known)."""
    produced, previous = products.produced, products.previous.signatures
    total = 0
    for path in action.inputs:
        state = produced.get(path) or files.seen(path)
        if state is not None:
            total += state.signature[1]
        else:
            sig = previous.get(path)
            total += sig[1] if sig is not None else 0
    for path in action.outputs:
        sig = previous.get(path)
        total += sig[1] if sig is not None else 0
    return total
