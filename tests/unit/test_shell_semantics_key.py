"""The shell that runs a command is part of what an action means: its version feeds every def_hash
(and so every action key) and the graph cache, so no result made under another shell is served."""

from __future__ import annotations

from pathlib import Path

from posbuild.load import analysis, graphcache
from posbuild.engine.resolve import resolve
from posbuild.exec.shellfree import shell_argv

# def_hash of RULE before commands ran under strict bash (`/bin/sh -c`, action schema 1) and since.
FORMER_DEF_HASH = "e747adac8cc8005ccbe0503174c631eb387c5649605fa959a02bcdf476eb122c"
STRICT_DEF_HASH = "60fa24e0033239c77c72700f76f16d242d2c4ae16d7d1414badf2d589be24f04"
RULE = (
    'genrule(name = "t", srcs = ["in.txt"], outs = ["out.txt"], cmd = "cat $(SRCS) | gzip > $@")\n')


def _def_hash(root: Path) -> str:
    root.mkdir(parents=True)
    (root / "posbuild.toml").write_text("")
    (root / "pkg").mkdir()
    (root / "pkg/in.txt").write_text("input\n")
    (root / "pkg/BUILD").write_text(RULE)
    (action,) = resolve(root, ["//pkg:t"]).actions
    return action.def_hash.hex()


def test_the_def_hash_under_strict_bash_differs_from_the_former_one(tmp_path: Path) -> None:
    """If this fails, the meaning of an action changed: bump ACTION_SCHEMA, then update the pin."""
    assert shell_argv("x") == ["/bin/bash", "-euo", "pipefail", "-c", "x"]
    assert _def_hash(tmp_path / "ws") == STRICT_DEF_HASH != FORMER_DEF_HASH


def test_the_action_schema_feeds_the_def_hash_and_the_graph_cache(tmp_path: Path,
                                                                  monkeypatch) -> None:
    strict = _def_hash(tmp_path / "strict")
    version = graphcache._version()
    monkeypatch.setattr(analysis, "ACTION_SCHEMA", 1)
    monkeypatch.setattr(graphcache, "ACTION_SCHEMA", 1)
    assert _def_hash(tmp_path / "former") == FORMER_DEF_HASH != strict
    assert graphcache._version() != version
