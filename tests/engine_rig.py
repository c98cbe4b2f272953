"""What the engine's unit tests share: a workspace with one source file, a real LMDB store in it,
small actions, and the environment their keys are computed in."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from posbuild.core.action import Action
from posbuild.core.digest import hash_bytes
from posbuild.engine.plan import BuildEnvironment
from posbuild.store.lmdbstore import Store

ENV = b"E" * 32
ENVIRONMENT = BuildEnvironment(ENV, ENV, ())


def make_action(label: str, inputs: tuple[str, ...], output: str, tags: tuple[str, ...] = (),
                deps: tuple[int, ...] = ()) -> Action:
    """A genrule-like action of one output, its definition hash derived from its label."""
    return Action(label, "genrule", f"make {output}", inputs, (), (output,), (), (), 60, tags,
                  hash_bytes(label.encode()), deps,
                  tuple(p for p in inputs if not p.startswith("posbuild-out/")))


A = make_action("//pkg:a", ("pkg/src.txt",), "posbuild-out/pkg/a.txt")
B = make_action("//pkg:b", ("posbuild-out/pkg/a.txt",), "posbuild-out/pkg/b.txt", deps=(0,))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/src.txt").write_text("source\n")
    return tmp_path


@pytest.fixture
def store(root: Path) -> Iterator[Store]:
    opened = Store(root / ".posbuild/store")
    yield opened
    opened.close()
