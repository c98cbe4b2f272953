"""Layer 0: a request's action graph — from the graph cache, or by loading and analysing BUILD
files.

    patterns → request (its canonical patterns name its cache entry and its up-to-date state)
             → graph cache entry (a few hundred stat()s when nothing changed)
             | discover → load → analyse → save

`resolve()` is the loading half of a build on its own: `build`, `lock`, `verify`, the tests and
the benchmark of §15's DAG-resolution time use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from posbuild.core.action import ActionGraph
from posbuild.core.label import TargetPattern, parse_pattern
from posbuild.core.layout import CONFIG_NAME, GRAPHS
from posbuild.load.analysis import Analyzer, expand_patterns
from posbuild.load.graphcache import CachedGraph, GraphCache
from posbuild.workspace.config import Config, load_config


@dataclass(frozen=True, slots=True)
class Request:
    """The parsed patterns of one command, and where its per-request state lives."""

    patterns: tuple[TargetPattern, ...]
    state_stem: Path
    testing: bool = False  # `posbuild test`: the tests among the patterns' targets run

    @property
    def canonical(self) -> list[str]:
        """The request's name in the graph cache: a test run's graph is not a build's."""
        names = sorted({str(p) for p in self.patterns})
        return [*names, "(test)"] if self.testing else names

    @property
    def state_path(self) -> Path:
        """Where the request's up-to-date state (uptodate.py) is saved."""
        return self.state_stem.with_suffix(".state")


def make_request(config: Config, patterns: Sequence[str], cwd_package: str = "",
                 testing: bool = False) -> Request:
    parsed = tuple(parse_pattern(p, cwd_package) for p in patterns)
    request = Request(parsed, Path(), testing)
    stem = GraphCache(config.root, config.state_dir / GRAPHS).stem(request.canonical)
    return Request(parsed, stem, testing)


def resolve(root: Path, patterns: Sequence[str], cwd_package: str = "",
            config: Config | None = None) -> ActionGraph:
    """The ActionGraph for `patterns`, from the graph cache when nothing it depends on changed."""
    config = config or load_config(root)
    return graph_entry(config, make_request(config, patterns, cwd_package)).graph()


def graph_entry(config: Config, request: Request) -> CachedGraph:
    """The request's graph cache entry; BUILD files are evaluated and analysed only on a miss."""
    canonical = request.canonical
    cache = GraphCache(config.root, config.state_dir / GRAPHS, config.vars)
    cached = cache.load(canonical)
    if cached is not None:
        return cached
    from posbuild.load.loader import Loader, discover_packages

    packages, dirs = discover_packages(config.root, config.build_file_names)
    loader = Loader(config, packages)
    roots = expand_patterns(request.patterns, packages, loader)
    analyzer = Analyzer(loader, request.testing)
    graph = analyzer.analyze(roots)
    return cache.save(canonical, graph, dirs,
                      [*loader.files_read, *analyzer.files_read, CONFIG_NAME], loader.digests)
