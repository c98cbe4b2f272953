"""Layer 0: the action key — the one digest that decides between reuse and re-execution.

key = BLAKE3(canonical msgpack of [KEY_SCHEMA, def_hash, h_E, input digests, passed env]).

`def_hash` (computed once by analysis) already covers the rule kind and its implementation
version, the expanded command, input and output paths, the tool paths, the declared env and the
declared versions. What changes from build to build — file contents, the environment — is mixed
in here. The code hash h_C is the digests of the `tools` inputs, which are among the input
digests. Secret values never reach this module.
"""

from __future__ import annotations

from typing import Sequence

from posbuild.core.action import Action
from posbuild.core.digest import Digest, hash_canonical

KEY_SCHEMA = 1


def action_key(action: Action, input_digests: Sequence[Digest], env_hash: Digest,
               passed_env: Sequence[tuple[str, str]] = ()) -> Digest:
    """The key of `action` given the digests of its inputs, in `action.inputs` order."""
    return hash_canonical([KEY_SCHEMA, action.def_hash, env_hash, list(input_digests),
                           list(passed_env)])
