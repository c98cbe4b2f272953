"""compare.py: the first differing byte, and the line that reports it."""

from __future__ import annotations

import random

import pytest

from posbuild.core import compare
from posbuild.core.compare import (excerpt, first_difference, first_file_difference,
                                   format_difference)


def describe_difference(path: str, label_a: str, a: bytes, label_b: str, b: bytes) -> str | None:
    """The line for two byte strings, or None when they are equal."""
    offset = first_difference(a, b)
    return None if offset is None \
        else format_difference(path, label_a, len(a), label_b, len(b), offset)


def _naive(a: bytes, b: bytes) -> int | None:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


@pytest.mark.parametrize(("a", "b", "expected"), [
    (b"", b"", None),
    (b"same", b"same", None),
    (b"abc", b"xbc", 0),
    (b"abc", b"abx", 2),
    (b"abcdef", b"abXdef", 2),
    (b"abc", b"abcd", 3),
    (b"abcd", b"abc", 3),
    (b"", b"x", 0),
])
def test_first_difference(a: bytes, b: bytes, expected: int | None) -> None:
    assert first_difference(a, b) == expected


def test_first_difference_agrees_with_a_byte_by_byte_scan() -> None:
    rng = random.Random(4)
    for _ in range(500):
        a = bytes(rng.randrange(3) for _ in range(rng.randrange(0, 300)))
        b = bytearray(a)
        for _ in range(rng.randrange(0, 3)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(3)
        if rng.random() < 0.3:
            b = b[: rng.randrange(len(b) + 1)]
        assert first_difference(a, bytes(b)) == _naive(a, bytes(b))


def test_describe_difference_names_path_labels_sizes_and_offset() -> None:
    text = describe_difference("posbuild-out/pkg/x.txt", "run 1", b"a" * 57 + b"b" * 63,
                               "run 2", b"a" * 57 + b"c" * 64)
    assert text == (
        "posbuild-out/pkg/x.txt: run 1 has 120 bytes, run 2 has 121 bytes, first difference at "
        "byte 57")


def test_describe_difference_is_none_when_equal() -> None:
    assert describe_difference("p", "run 1", b"x", "run 2", b"x") is None


def test_describe_difference_singular_and_empty() -> None:
    assert describe_difference("p", "cached result", b"", "run 1", b"x") == \
        "p: cached result has 0 bytes, run 1 has 1 byte, first difference at byte 0"


def test_format_difference() -> None:
    assert format_difference("out/a", "run 1", 3, "run 2", 4, 3) == \
        "out/a: run 1 has 3 bytes, run 2 has 4 bytes, first difference at byte 3"


def test_first_file_difference_streams_across_chunks(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(compare, "CHUNK", 7)
    data = bytes(range(200)) * 3
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(data)
    changed = bytearray(data)
    changed[450] ^= 1
    two.write_bytes(bytes(changed))
    assert first_file_difference(one, two) == (600, 600, 450)
    assert first_file_difference(one, one) == (600, 600, None)
    assert first_file_difference(one, data[:599]) == (600, 599, 599)
    assert first_file_difference(data + b"!", one) == (601, 600, 600)
    assert first_file_difference(b"", tmp_path / "one") == (0, 600, 0)


def test_first_file_difference_of_two_empty_sources(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert first_file_difference(empty, b"") == (0, 0, None)


def test_an_excerpt_quotes_the_bytes_around_an_offset_with_escapes_and_ellipses() -> None:
    data = b"0123456789abcdefghij\n\"quoted\"\x00tail"
    assert excerpt(data, 0, width=4) == '"0123…"'
    assert excerpt(data, 10, width=4) == '"…6789abcd…"'
    assert excerpt(data, len(data) - 2, width=4) == '"…\\"\\x00tail"'
    assert excerpt(data, 23, width=3) == '"…\\n\\"quot…"'


def test_a_located_difference_quotes_both_versions_when_given_them() -> None:
    one, two = b"stamp 1700000001\n", b"stamp 1700000002\n"
    size_one, size_two, offset = first_file_difference(one, two)
    assert format_difference("out.txt", "run 1", size_one, "run 2", size_two, offset, one, two) \
        == ('out.txt: run 1 has 17 bytes, run 2 has 17 bytes, first difference at byte 15: '
            'run 1 "…mp 1700000001\\n", run 2 "…mp 1700000002\\n"')
