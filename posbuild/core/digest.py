"""Layer 0: content digests and the one canonical encoding every key is built from.

A digest is BLAKE3-256 kept as plain 32-byte `bytes` rather than a wrapper class: tens of
thousands of them are compared and hashed on every no-op build, and `bytes` already has `.hex()`.

`canonical()` is the only serialisation that feeds a key. It is msgpack with maps written as
sorted key/value arrays, tuples and lists written alike, and no floats (their text forms differ
across platforms), so the same value gives the same bytes on every machine and Python version.
"""

from __future__ import annotations

import os
from typing import Any

import blake3
import msgpack

Digest = bytes
DIGEST_SIZE = 32
_CHUNK = 1 << 20


def hash_bytes(data: bytes) -> Digest:
    """Digest of a byte string."""
    return blake3.blake3(data).digest()


def hash_file(path: str | os.PathLike[str]) -> Digest:
    """Digest of a file's content, streamed so that large data sets never sit in memory; read
    with plain `read()` calls (a buffered file object adds four system calls per file, and a
    cold build hashes every source once)."""
    hasher = blake3.blake3()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, _CHUNK):
            hasher.update(chunk)
    finally:
        os.close(fd)
    return hasher.digest()


def _normalise(value: Any) -> Any:
    """Turn a value into the sorted, list-only shape that `canonical` packs."""
    kind = type(value)
    # most values, before any isinstance
    if kind is str or kind is bytes or kind is int or value is None:
        return value
    if kind is list or kind is tuple:
        return [item if type(item) is str else _normalise(item) for item in value]
    if isinstance(value, dict):
        return [[_normalise(k), _normalise(v)] for k, v in sorted(value.items())]
    if isinstance(value, (list, tuple)):
        return [_normalise(item) for item in value]
    if value is None or isinstance(value, (str, bytes, bool, int)):
        return value
    raise TypeError(f"cannot encode {type(value).__name__} canonically")


def canonical(value: Any) -> bytes:
    """Deterministic msgpack bytes of a value made of dicts, lists, str, bytes, int, bool, None."""
    return msgpack.packb(_normalise(value), use_bin_type=True)


def hash_canonical(value: Any) -> Digest:
    """Digest of a value's canonical encoding."""
    return blake3.blake3(canonical(value)).digest()


def keyed_signature(secret: bytes, context: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of `body` under `secret`, in a `context` of its own (so that a signature made
    for one kind of thing, a cache entry say, is never valid for another, an archive manifest)."""
    import hashlib
    import hmac

    return hmac.new(secret, context + body, hashlib.sha256).digest()
