"""Layer 0: byte comparison of two versions of one output, and the one-line account of a difference.

Used wherever posbuild holds two versions of an output that must be identical — two runs of the
same action under `posbuild verify`, a re-run and the cached result under `build --verify` — and
has to tell the user precisely how they differ:

    posbuild-out/pkg/x.txt: run 1 has 120 bytes, run 2 has 121 bytes, first difference at byte 57:
    run 1 "…built at 12:01:07\\n", run 2 "…built at 12:01:08\\n"

Offsets count from 0. When one version is a prefix of the other, the first difference is at the
length of the shorter one (the first byte that only one of them has). Large files are compared in
chunks (`first_file_difference`), so an output never has to fit in memory.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

CHUNK = 1 << 20
CONTEXT = 12  # bytes quoted on each side of a difference

Source = bytes | str | os.PathLike[str]


def first_difference(a: bytes, b: bytes) -> int | None:
    """The offset of the first byte where `a` and `b` differ, or None when they are equal."""
    if a == b:
        return None
    shorter = min(len(a), len(b))
    if a[:shorter] == b[:shorter]:
        return shorter
    low, high = 0, shorter  # the prefixes of length `low` agree; those of length `high` do not
    while high - low > 1:  # bisect with slice comparisons (C speed) rather than a Python byte loop
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return low


def format_difference(path: str, label_a: str, size_a: int, label_b: str, size_b: int,
                      offset: int, a: Source | None = None, b: Source | None = None) -> str:
    """The one-line account of a difference already located; given the two versions, it also
    quotes a few bytes of each around the difference, which is often all a user needs to see
    (a timestamp, a path, a random seed)."""
    line = (f"{path}: {label_a} has {_bytes(size_a)}, {label_b} has {_bytes(size_b)}, "
            f"first difference at byte {offset}")
    if a is None or b is None:
        return line
    return f"{line}: {label_a} {excerpt(a, offset)}, {label_b} {excerpt(b, offset)}"


def excerpt(source: Source, offset: int, width: int = CONTEXT) -> str:
    """The bytes of `source` from `width` before `offset` to `width` after it, quoted with
    Python's escapes, an ellipsis where they were cut."""
    start = max(0, offset - width)
    with _open(source) as stream:
        stream.seek(start)
        data = stream.read(offset - start + width + 1)
    cut_after = len(data) > offset - start + width
    data = data[:offset - start + width]
    return (f'"{"…" if start else ""}{repr(data)[2:-1].replace(chr(34), chr(92) + chr(34))}'
            f'{"…" if cut_after else ""}"')


def first_file_difference(a: Source, b: Source) -> tuple[int, int, int | None]:
    """Sizes of `a` and `b` (each a file path or bytes) and their first difference, read in
    chunks."""
    with _open(a) as stream_a, _open(b) as stream_b:
        offset = 0
        found: int | None = None
        while found is None:
            chunk_a, chunk_b = stream_a.read(CHUNK), stream_b.read(CHUNK)
            if not chunk_a and not chunk_b:
                break
            at = first_difference(chunk_a, chunk_b)
            if at is not None:
                found = offset + at
            offset += len(chunk_a)
        return _size(a, stream_a), _size(b, stream_b), found


def _open(source: Source) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    return open(source, "rb")


def _size(source: Source, stream: BinaryIO) -> int:
    if isinstance(source, bytes):
        return len(source)
    return os.fstat(stream.fileno()).st_size


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"
