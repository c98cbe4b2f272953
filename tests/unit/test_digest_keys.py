"""Digests, the canonical encoding every key is built from, action keys and analysed def_hashes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import blake3
import pytest

from posbuild.core import digest
from posbuild.engine import keys
from posbuild.core.action import Action
from posbuild.engine.resolve import resolve
from posbuild.core.digest import DIGEST_SIZE, canonical, hash_bytes, hash_canonical, hash_file

# -- canonical encoding
# -----------------------------------------------------------------------------

PINNED_VALUE = {
    "schema": 1,
    "name": "train",
    "inputs": ["data/a.txt", "data/b.txt"],
    "nested": {"z": [1, -2, True, None], "a": b"\x00\xff"},
    "big": 2**40,
}
# Computed once from PINNED_VALUE. If this changes, every cache key in every existing store changes:
# bump the key schema on purpose rather than updating this constant casually.
PINNED_HEX = "451618f485bd6eeb9fc5c8aed20f63a4c12ca3c58a5d0d778d29b440b065d06e"


def test_hash_canonical_of_fixed_value_is_pinned() -> None:
    assert hash_canonical(PINNED_VALUE).hex() == PINNED_HEX


def test_canonical_bytes_of_small_map_are_pinned() -> None:
    # a map is a msgpack array of [key, value] arrays, sorted by key; strings are str, not bin
    assert canonical({"b": 1, "a": [1, 2]}).hex() == "9292a16192010292a16201"


def test_hash_canonical_is_blake3_of_canonical_bytes() -> None:
    assert hash_canonical(PINNED_VALUE) == blake3.blake3(canonical(PINNED_VALUE)).digest()
    assert len(hash_canonical(PINNED_VALUE)) == DIGEST_SIZE


def test_dict_key_order_does_not_matter() -> None:
    forward = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1]}
    backward = {"c": [1], "b": {"y": 2, "x": 1}, "a": 1}
    assert list(forward) != list(backward)
    assert canonical(forward) == canonical(backward)
    assert hash_canonical(forward) == hash_canonical(backward)


def test_tuple_and_list_encode_alike() -> None:
    assert canonical((1, ("a", b"b"), [None])) == canonical([1, ["a", b"b"], [None]])


def test_list_order_matters() -> None:
    assert hash_canonical(["a", "b"]) != hash_canonical(["b", "a"])


def test_str_and_bytes_are_distinct() -> None:
    assert hash_canonical("abc") != hash_canonical(b"abc")


def test_bool_and_int_are_distinct() -> None:
    assert hash_canonical(True) != hash_canonical(1)
    assert hash_canonical(False) != hash_canonical(0)


@pytest.mark.parametrize("value",
                         [1.5, {"a": 0.0}, [1, [2.0]], {1, 2}, frozenset({"a"}), {"k": {"x"}}])
def test_floats_and_sets_are_rejected(value: object) -> None:
    with pytest.raises(TypeError):
        canonical(value)
    with pytest.raises(TypeError):
        hash_canonical(value)


def test_arbitrary_objects_are_rejected() -> None:
    with pytest.raises(TypeError, match="cannot encode object canonically"):
        canonical([object()])


# -- hash_bytes / hash_file
# ---------------------------------------------------------------------------


def test_hash_bytes_is_blake3_256() -> None:
    assert hash_bytes(b"") == blake3.blake3(b"").digest()
    assert hash_bytes(b"").hex() == (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
    assert len(hash_bytes(b"abc")) == DIGEST_SIZE


@pytest.mark.parametrize("content", [b"", b"hello\n", bytes(range(256)) * 10])
def test_hash_file_equals_hash_bytes_of_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(content)
    assert hash_file(path) == hash_bytes(content)
    assert hash_file(str(path)) == hash_bytes(content)


def test_hash_file_streams_across_chunk_boundaries(tmp_path: Path) -> None:
    size = 2 * digest._CHUNK + 12345  # more than two whole chunks plus a partial one
    content = os.urandom(1024) * (size // 1024) + b"tail"
    assert len(content) > 2 * digest._CHUNK
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    assert hash_file(path) == hash_bytes(content)


def test_hash_file_of_exactly_one_chunk(tmp_path: Path) -> None:
    content = b"x" * digest._CHUNK
    path = tmp_path / "chunk.bin"
    path.write_bytes(content)
    assert hash_file(path) == hash_bytes(content)


# -- keys.action_key
# ------------------------------------------------------------------------------------


def _action(def_hash: bytes = hash_bytes(b"def"), **changes: object) -> Action:
    fields: dict[str, object] = dict(
        label="//pkg:t", kind="genrule", command="cp a b", inputs=("pkg/a", "pkg/b"), tools=(),
        outputs=("posbuild-out/pkg/out",), env=(), versions=(), timeout=0, tags=(),
        def_hash=def_hash, deps=(), sources=("pkg/a", "pkg/b"), message="",
    )
    fields.update(changes)
    return Action(**fields)  # type: ignore[arg-type]


ENV = hash_bytes(b"env")
D1, D2, D3 = hash_bytes(b"one"), hash_bytes(b"two"), hash_bytes(b"three")


def _key(action: Action | None = None, inputs: tuple[bytes, ...] = (D1, D2), env: bytes = ENV,
         passed: tuple[tuple[str, str], ...] = (("HOME", "/h"),)) -> bytes:
    return keys.action_key(action or _action(), list(inputs), env, passed)


def test_action_key_is_equal_for_equal_inputs() -> None:
    assert _key() == _key()
    assert _key(_action()) == _key(_action())
    assert len(_key()) == DIGEST_SIZE


def test_action_key_accepts_tuples_and_lists_alike() -> None:
    action = _action()
    assert keys.action_key(action, (D1, D2), ENV, (("HOME", "/h"),)) == keys.action_key(
        action, [D1, D2], ENV, [("HOME", "/h")]
    )


def test_action_key_changes_with_def_hash() -> None:
    assert _key(_action(def_hash=hash_bytes(b"other def"))) != _key()


def test_action_key_changes_with_env_hash() -> None:
    assert _key(env=hash_bytes(b"other env")) != _key()


@pytest.mark.parametrize("inputs", [(D3, D2), (D1, D3), (D1,), (D1, D2, D3)])
def test_action_key_changes_with_any_input_digest(inputs: tuple[bytes, ...]) -> None:
    assert _key(inputs=inputs) != _key()


def test_action_key_changes_with_input_order() -> None:
    assert _key(inputs=(D2, D1)) != _key(inputs=(D1, D2))


@pytest.mark.parametrize("passed", [(), (("HOME", "/other"),), (("HOME", "/h"), ("LANG", "C")),
                                    (("USER", "/h"),)])
def test_action_key_changes_with_passed_env(passed: tuple[tuple[str, str], ...]) -> None:
    assert _key(passed=passed) != _key()


def test_action_key_ignores_fields_already_covered_by_def_hash() -> None:
    # the key is defined to depend on def_hash, not on re-reading the Action's other fields
    assert _key(_action(message="a new description")) == _key()
    assert _key(_action(label="//pkg:renamed")) == _key()


def test_action_key_is_pinned_to_its_documented_formula() -> None:
    action = _action()
    expected = hash_canonical([keys.KEY_SCHEMA, action.def_hash, ENV, [D1, D2], [["HOME", "/h"]]])
    assert _key(action) == expected


# -- def_hash of analysed actions
# -----------------------------------------------------------------------

BASE_RULE = dict(
    cmd='"cat $(SRCS) > $@"',
    outs='["out.txt"]',
    env='{"MODE": "fast"}',
    version='{"model": "1"}',
    tools='["tool.sh"]',
    message='"making out.txt"',
)


def _def_hash(root: Path, **changes: str) -> bytes:
    """def_hash of //pkg:t analysed in a fresh workspace whose genrule has `changes` applied."""
    attrs = {**BASE_RULE, **changes}
    root.mkdir(parents=True)
    (root / "posbuild.toml").write_text("")
    (root / "pkg").mkdir()
    (root / "pkg" / "in.txt").write_text("input\n")
    (root / "pkg" / "tool.sh").write_text("#!/bin/sh\n")
    (root / "pkg" / "tool2.sh").write_text("#!/bin/sh\n")
    rule = ", ".join(f"{name} = {value}" for name, value in attrs.items())
    (root / "pkg" / "BUILD").write_text(
        textwrap.dedent(f'genrule(name = "t", srcs = ["in.txt"], {rule})\n'))
    graph = resolve(root, ["//pkg:t"])
    (action,) = graph.actions
    return action.def_hash


def test_def_hash_is_independent_of_workspace_location(tmp_path: Path) -> None:
    assert _def_hash(tmp_path / "one") == _def_hash(tmp_path / "two")


@pytest.mark.parametrize(
    ("attr", "value"),
    [
        ("cmd", '"cat $(SRCS) >> $@"'),
        ("env", '{"MODE": "slow"}'),
        ("env", '{"MODE": "fast", "EXTRA": "1"}'),
        ("version", '{"model": "2"}'),
        ("tools", '["tool2.sh"]'),
        ("tools", '["tool.sh", "tool2.sh"]'),
    ],
)
def test_def_hash_changes_with_definition(tmp_path: Path, attr: str, value: str) -> None:
    assert _def_hash(tmp_path / "changed", **{attr: value}) != _def_hash(tmp_path / "base")


@pytest.mark.parametrize("outs", ['["other.txt"]', '["out.txt", "extra.txt"]'])
def test_def_hash_changes_with_outputs_even_when_cmd_text_does_not(tmp_path: Path,
                                                                   outs: str) -> None:
    fixed_cmd = '"true"'  # no $@ or $(OUTS): the expanded command is identical in both workspaces
    changed = _def_hash(tmp_path / "changed", cmd=fixed_cmd, outs=outs)
    assert changed != _def_hash(tmp_path / "base", cmd=fixed_cmd)


def test_def_hash_ignores_message(tmp_path: Path) -> None:
    assert _def_hash(tmp_path / "changed",
                     message='"a completely different description"') == _def_hash(
        tmp_path / "base"
    )


def test_def_hash_ignores_message_in_same_workspace(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    before = _def_hash(root)
    build = root / "pkg" / "BUILD"
    build.write_text(build.read_text().replace('"making out.txt"', '"renamed step"'))
    (after,) = resolve(root, ["//pkg:t"]).actions
    assert after.message == "renamed step"
    assert after.def_hash == before
