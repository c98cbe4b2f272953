"""The correctness oracle: after a build that said OK, recompute every action's key from the
files on disk and check that the store and `posbuild-out/` hold exactly what that key names.

After `correctBuild` in "Build Systems à la Carte": a build is correct when every output is what
its action's inputs, as they are now, say it must be. The oracle trusts nothing posbuild saved
about the build (the up-to-date state, the graph cache, the stat memo, the environment cache,
records): the graph is analysed afresh from the BUILD files, h_E is computed afresh, each input
is hashed from its bytes on disk, and the store is asked only for the result under the key so
computed. One Store open and one hash per file (and per blob the results name), so it is cheap
enough to run after every build of the incremental and kill tests.

    from oracle import assert_correct_build
    ws.ok("//...")
    assert_correct_build(ws)
"""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from posbuild.core.action import Action, ActionGraph
from posbuild.core.digest import Digest, hash_file
from posbuild.core.layout import NO_CACHE_TAG, STORE_DB
from posbuild.core.tree import member_blobs
from posbuild.engine.keys import action_key
from posbuild.errors import PosbuildError
from posbuild.store.lmdbstore import Store
from posbuild.workspace.config import Config, load_config
from posbuild.workspace.envfp import TEST_VARIABLE, passed_environment, sandbox_path

if TYPE_CHECKING:
    from conftest import Workspace


def assert_correct_build(ws: Workspace, patterns: Sequence[str] = ("//...",),
                         environ: Mapping[str, str] | None = None) -> None:
    """Assert that what the last build of `patterns` left is correct: for every action, in
    dependency order, the store holds a result under the key of its inputs as they are on disk
    now (unless it is tagged no-cache), that result names exactly the declared outputs, every
    output in `posbuild-out/` has exactly the bytes, size and executable bit the result names,
    and every blob it names is in the store and hashes to its digest.

    `environ` is what the test passed as `env=` to the CLI run: like the Workspace fixture, the
    oracle lays it over `os.environ` (it decides `[env] pass` and test fingerprint overrides).
    """
    config = load_config(ws.root)
    environment = {**os.environ, **(environ or {})}
    graph = _resolve_fresh(config, patterns)
    env_hashes = _environments(config, environment, graph.actions)
    passed = passed_environment(config.env_pass, environment)
    assert (config.store_dir / STORE_DB).is_dir(), (
        f"the build of {', '.join(patterns)} left no store at {config.store_dir}")
    store = Store(config.store_dir, config.workspace_tag)
    try:
        digests: dict[str, Digest] = {}  # every file hashed so far, by workspace-relative path
        for action in graph.actions:
            _check_action(ws.root, store, action, digests, env_hashes[action.programs], passed)
    finally:
        store.close()


def _resolve_fresh(config: Config, patterns: Sequence[str]) -> ActionGraph:
    """The request's ActionGraph, analysed from the BUILD files now (never from the graph cache,
    whose stamps are part of what is under test). The one place that names the loading API."""
    from posbuild.core.label import parse_pattern
    from posbuild.load.analysis import Analyzer, expand_patterns
    from posbuild.load.loader import Loader, discover_packages

    packages, _ = discover_packages(config.root, config.build_file_names)
    loader = Loader(config, packages)
    roots = expand_patterns([parse_pattern(p) for p in patterns], packages, loader)
    return Analyzer(loader).analyze(roots)


def _environments(config: Config, environ: Mapping[str, str],
                  actions: Sequence[Action]) -> dict[tuple[str, ...], Digest]:
    """The environment hash of each set of programs the actions run, as a build with `environ`
    computes it, but examined afresh (not from `.posbuild/envfp`) with the test's overrides."""
    sets = sorted({action.programs for action in actions})
    request = json.dumps([sandbox_path(config), list(config.env_tools),
                          environ.get(TEST_VARIABLE) or "", [list(p) for p in sets]])
    return {programs: bytes.fromhex(digest)
            for programs, digest in zip(sets, _digests(request), strict=True)}


_DIGESTS = ("import json, sys\n"
            "from posbuild.workspace.envfp import Environments, parse_overrides\n"
            "path, tools, overrides, sets = json.loads(sys.argv[1])\n"
            "environments = Environments(path, tools, None, parse_overrides(overrides))\n"
            "json.dump([environments.digest(tuple(p)).hex() for p in sets], sys.stdout)\n")


@functools.cache
def _digests(request: str) -> list[str]:
    """Computed in a child Python started as the tests start the CLI, since what an interpreter
    imports from follows `sys.path`, which pytest changes."""
    run = subprocess.run([sys.executable, "-c", _DIGESTS, request], capture_output=True,
                         text=True, env=dict(os.environ), check=False)
    assert run.returncode == 0, f"computing the environment fingerprint failed:\n{run.stderr}"
    digests: list[str] = json.loads(run.stdout)
    return digests


def _check_action(root: Path, store: Store, action: Action, digests: dict[str, Digest],
                  env_hash: Digest, passed: Sequence[tuple[str, str]]) -> None:
    """Check one action; its outputs' digests join `digests` for the actions that read them."""
    inputs = [_digest(root, action, path, digests) for path in action.inputs]
    key = action_key(action, inputs, env_hash, passed)
    on_disk = {path: _output(root, action, path) for path in action.outputs}
    digests.update((path, digest) for path, (digest, _) in on_disk.items())
    if NO_CACHE_TAG in action.tags:
        return
    where = f"{action.label}: the store's result for key {key.hex()[:12]}"
    result = store.get_result(key)
    if result is None:
        listed = ", ".join(f"{path}={digest.hex()[:12]}"
                           for path, digest in zip(action.inputs, inputs))
        raise AssertionError(
            f"{action.label}: the store holds no result for key {key.hex()[:12]}, computed from "
            f"the inputs on disk ({listed or 'none'}) and h_E {env_hash.hex()[:12]}: the build "
            "said OK without a result for what its inputs are now")
    named = [output.path for output in result.outputs]
    assert sorted(named) == sorted(action.outputs), (
        f"{where} names the outputs {named}, the action declares {list(action.outputs)}")
    assert result.exit_code == 0, f"{where} has exit code {result.exit_code}"
    for output in result.outputs:
        digest, st = on_disk[output.path]
        executable = bool(st.st_mode & 0o111)
        assert digest == output.digest and st.st_size == output.size, (
            f"{action.label}: {output.path} on disk ({st.st_size} bytes, {digest.hex()[:12]}) is "
            f"not what the store's result for key {key.hex()[:12]} names ({output.size} bytes, "
            f"{output.digest.hex()[:12]})")
        assert executable == output.executable, (
            f"{action.label}: {output.path} is {'' if executable else 'not '}executable on disk, "
            f"the store's result for key {key.hex()[:12]} says "
            f"{'it is' if output.executable else 'it is not'}")
    files = [d for d, _ in member_blobs(result, store.get_blob)]
    for digest in (*result.blobs(), *files):
        try:
            store.get_blob(digest)  # verified against its digest as it is read
        except PosbuildError as error:
            raise AssertionError(f"{where}: blob {digest.hex()[:12]}: {error}") from None


def _folder_output(root: Path, action: Action, path: str) -> tuple[Digest, os.stat_result]:
    """A folder output's digest recomputed from disk: every entry must be a real folder or a
    regular file, and its manifest is built from what is there now."""
    from posbuild.core.tree import Tree, TreeFile

    top = root / path
    assert top.is_dir() and not top.is_symlink(), f"{action.label}: output {path} is no folder"
    files: list[TreeFile] = []
    folders: list[str] = []
    for folder, dirs, names in os.walk(top):
        for name in dirs + names:
            full = Path(folder, name)
            rel = full.relative_to(top).as_posix()
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                folders.append(rel)
            else:
                assert stat.S_ISREG(st.st_mode), (
                    f"{action.label}: {path}/{rel} is not a regular file (mode {oct(st.st_mode)})")
                files.append(TreeFile(rel, hash_file(full), st.st_size,
                                      bool(st.st_mode & 0o111)))
    tree = Tree.of(files, folders)
    size = tree.size
    fake = os.stat_result((stat.S_IFREG | 0o444, 0, 0, 0, 0, 0, size, 0, 0, 0))
    return tree.digest(), fake


def _digest(root: Path, action: Action, path: str, digests: dict[str, Digest]) -> Digest:
    """The BLAKE3 of the file at workspace-relative `path`, hashed once per check."""
    digest = digests.get(path)
    if digest is None:
        try:
            digest = digests[path] = hash_file(root / path)
        except OSError as error:
            raise AssertionError(
                f"{action.label}: input {path} cannot be read: {error.strerror}") from None
    return digest


def _output(root: Path, action: Action, path: str) -> tuple[Digest, os.stat_result]:
    """An output's digest and stat; it must be a regular file, never a link. A folder output
    (`out_dirs`) is recomputed from its files on disk: the digest of its manifest, and a stat
    whose size is its files' total, not executable."""
    if path in action.out_dirs:
        return _folder_output(root, action, path)
    try:
        st = os.lstat(root / path)
    except FileNotFoundError:
        raise AssertionError(f"{action.label}: output {path} is missing") from None
    assert stat.S_ISREG(st.st_mode), (
        f"{action.label}: output {path} is not a regular file (mode {oct(st.st_mode)})")
    return hash_file(root / path), st
