"""Layer 0: the hash chain that makes a store's execution records tamper-evident.

Every build row, once its build is over (finished, refused or interrupted), is sealed:

    seal(n) = H(TAG || seal(previous) || H(row n without its seal) || H(records of n))

where `previous` is the build sealed just before it in the same store and H(records of n)
covers every record key and value byte of build n in key order. The row keeps
[previous number, seal]; the store's meta row keeps the head (the last sealed build). A record
or row edited afterwards no longer hashes to its seal, a deleted build leaves its successor
pointing at nothing, and a deleted last build leaves the head pointing at nothing: `posbuild
fsck` reports each as ORCH-03 naming the build. Sealing reads only the head and the build's own
records, so its cost does not grow with history.

This detects edits made without posbuild; it is not a signature: whoever can write the store
and recompute BLAKE3 can forge a consistent chain. Keep a copy of the head (`posbuild log
--json` prints it per build) where the store's writers cannot reach it to anchor it.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgpack

from posbuild.core.digest import Digest, hash_bytes

TAG = b"posbuild records 1\0"
GENESIS = bytes(32)  # the "previous seal" of the first sealed build of a store
CHAIN = "chain"  # the row field holding [previous number (0: none), seal]


def row_digest(row: dict[str, Any]) -> Digest:
    """The digest of a build row without its seal, over its msgpack form (fields in stored
    order)."""
    return hash_bytes(msgpack.packb({k: v for k, v in row.items() if k != CHAIN},
                                    use_bin_type=True))


def records_digest(records: Iterable[tuple[bytes, bytes]]) -> Digest:
    """The digest of one build's (record key, packed record) rows, given in key order."""
    return hash_bytes(b"".join(key + hash_bytes(value) for key, value in records))


def seal(previous: Digest, row: dict[str, Any], records: Digest) -> Digest:
    """The seal of a build row chained after the build sealed `previous`."""
    return hash_bytes(TAG + previous + row_digest(row) + records)
