"""The graph cache: an entry is reused while its stamps hold, and a process that builds again and
again decodes an unchanged entry once."""

from __future__ import annotations

from pathlib import Path

from posbuild.engine.resolve import resolve
from posbuild.load.graphcache import GraphCache


def _workspace(root: Path) -> Path:
    root.mkdir()
    (root / "posbuild.toml").write_text("")
    (root / "p").mkdir()
    (root / "p/BUILD").write_text('genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")\n')
    return root


def test_an_unchanged_entry_is_decoded_once_per_process(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws")
    resolve(root, ["//..."])  # evaluates the BUILD file and writes the entry
    cache = GraphCache(root, root / ".posbuild/graphs")
    first = cache.load(["//..."])
    assert first is not None
    assert cache.load(["//..."]) is first  # the same decoded graph, not a second decoding


def test_a_rewritten_entry_or_a_stale_stamp_is_not_reused(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws")
    resolve(root, ["//..."])
    cache = GraphCache(root, root / ".posbuild/graphs")
    before = cache.load(["//..."])
    assert before is not None and [a.label for a in before.graph().actions] == ["//p:a"]
    (root / "p/BUILD").write_text('genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")\n')
    assert cache.load(["//..."]) is None  # the BUILD file's stamp no longer holds
    after = resolve(root, ["//..."])  # rewrites the entry
    assert [a.label for a in after.actions] == ["//p:b"]
    reloaded = cache.load(["//..."])
    assert reloaded is not None and reloaded is not before
    assert [a.label for a in reloaded.graph().actions] == ["//p:b"]
