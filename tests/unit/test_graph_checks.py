"""A graph cached before a new analysis check is analysed again, so the check also holds for it."""

from __future__ import annotations

from pathlib import Path

import pytest

import posbuild.load.graphcache as graphcache
from posbuild.engine.resolve import resolve
from posbuild.errors import BuildFileError


def test_a_graph_cached_under_older_checks_is_not_reused(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "ws"
    (root / "p").mkdir(parents=True)
    (root / "posbuild.toml").write_text("")
    (root / "p/data.txt").write_text("a source\n")
    (root / "p/BUILD").write_text('genrule(name = "a", outs = ["data.txt"], cmd = "echo > $@")\n')
    # An older posbuild, without the ownership check, analysed and cached this graph.
    monkeypatch.setattr(graphcache, "CHECKS", graphcache.CHECKS - 1)
    monkeypatch.setattr("posbuild.load.owners.Owners.claim", lambda *args: None)
    assert [a.label for a in resolve(root, ["//..."]).actions] == ["//p:a"]
    graphcache._decoded.clear()
    monkeypatch.undo()
    with pytest.raises(BuildFileError, match="conflicts with source file p/data.txt"):
        resolve(root, ["//..."])
