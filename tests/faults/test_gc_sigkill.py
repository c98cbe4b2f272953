"""SIGKILL `posbuild gc` mid-way: the store must stay consistent (every remaining result and
generation finds its blobs), a build after `posbuild clean` must restore the current version
without executing anything, and the next gc must finish the job, after which fsck passes.

The store holds 300 actions (three with outputs large enough to live as files under cas/) built
in four versions, so evicting the older versions takes more than one transaction. Kills are
injected at exact points (inside a transaction, after a commit before its cas/ files are
deleted, between transactions) by running the real CLI under a wrapper that SIGKILLs its own
process there, and at instants that are fractions of a measured gc.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import POSBUILD, Workspace, counts
from oracle import assert_correct_build

N_ACTIONS = 300
LARGE = 3  # actions whose output exceeds the store's inline limit
VERSIONS = 4
GC_ARGS = ["gc", "--max-size", "1", "--keep-generations", "1"]

# Runs `posbuild gc` with a SIGKILL of its own process at an exact point of Store.remove().
INJECT = r"""
import os, pathlib, signal, sys
from posbuild import cli
from posbuild.store import lmdbstore as store_module

point = sys.argv[1]
original = store_module.Store.remove
calls = 0

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def dying_after(rows, n):
    for i, row in enumerate(rows):
        if i == n:
            die()
        yield row

def remove(self, results=(), blobs=(), memo=(), generations=()):
    global calls
    calls += 1
    blobs = list(blobs)
    if point == "inside-first-transaction" and calls == 1:
        blobs = dying_after(blobs, len(blobs) // 2)
    elif point == "after-first-commit":
        pathlib.Path.unlink = die  # the first cas/ file deleted after a commit
    elif point == "between-transactions" and calls == 2:
        die()
    return original(self, results, blobs, memo, generations)

store_module.Store.remove = remove
cli.main(sys.argv[2:])
"""


def _files() -> dict[str, str]:
    rules = []
    for i in range(N_ACTIONS):
        big = "; head -c 300000 /dev/zero" if i < LARGE else ""
        rules.append(f'genrule(name = "t{i}", srcs = ["src.txt"], outs = ["t{i}.txt"], '
                     f'cmd = "{{ echo t{i}; cat $< | cksum{big}; }} > $@")')
    return {"p/BUILD": "\n".join(rules) + "\n"}


def _outputs(root: Path) -> dict[str, bytes]:
    out = root / "posbuild-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A workspace built in VERSIONS versions, and the outputs of the last one."""
    ws = Workspace(tmp_path_factory.mktemp("gc-template") / "ws")
    ws.root.mkdir()
    ws.write({"posbuild.toml": "", **_files()})
    for version in range(1, VERSIONS + 1):
        ws.write({"p/src.txt": f"version {version}\n"})
        assert counts(ws.ok("//..."))["executed"] == N_ACTIONS
    return ws.root, _outputs(ws.root)


def _copy(template: Path, dest: Path) -> Workspace:
    shutil.copytree(template, dest, symlinks=True)
    return Workspace(dest)


def _check_store(root: Path) -> tuple[int, int, int]:
    """Every result's and generation's blobs are present and verify.

    Returns the numbers of generations, of action results and of files under cas/ without a row.
    """
    from posbuild.core.records import unpack_manifest
    from posbuild.store.lmdbstore import Store

    store = Store(root / ".posbuild" / "store")
    try:
        results = list(store.iter_results())
        for _, result in results:
            for digest in {*(o.digest for o in result.outputs), result.stdout_digest,
                           result.stderr_digest}:
                store.get_blob(digest)  # ORCH-03 if missing or wrong
        generations = store.generations()
        for generation in generations:
            for digest, _, _ in unpack_manifest(store.get_blob(generation.manifest)).values():
                store.get_blob(digest)
        rows = {digest.hex() for digest, _ in store.iter_blobs()}
        orphans = [p for p in store.external_files() if p.name not in rows]
        return len(generations), len(results), len(orphans)
    finally:
        store.close()


def _assert_recovers(ws: Workspace, expected: dict[str, bytes]) -> None:
    _check_store(ws.root)
    assert ws.run("clean").returncode == 0
    rebuilt = ws.ok("//...")
    assert counts(rebuilt)["executed"] == 0  # what the kept generation needs survived the kill
    assert _outputs(ws.root) == expected
    assert_correct_build(ws)
    finish = ws.run(*GC_ARGS)
    assert finish.returncode == 0, finish.stderr
    assert_correct_build(ws)  # the current version's results are never collected
    # the next gc finished the job, orphan files included
    assert _check_store(ws.root) == (1, N_ACTIONS, 0)
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.mark.parametrize("point",
                         ["inside-first-transaction", "after-first-commit", "between-transactions"])
def test_sigkill_at_an_exact_point_of_gc(template: tuple[Path, dict[str, bytes]], tmp_path: Path,
                                         point: str) -> None:
    root, expected = template
    ws = _copy(root, tmp_path / "ws")
    proc = subprocess.run([sys.executable, "-c", INJECT, point, *GC_ARGS], cwd=ws.root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (
        f"gc was not killed at {point}: {proc.stdout}{proc.stderr}")
    generations, results, orphans = _check_store(ws.root)
    if point == "inside-first-transaction":
        # nothing was committed
        assert (generations, results, orphans) == (VERSIONS, VERSIONS * N_ACTIONS, 0)
    else:
        assert generations == 1 and N_ACTIONS < results < VERSIONS * N_ACTIONS
        # rows committed gone, their files not yet
        assert (orphans > 0) == (point == "after-first-commit")
    _assert_recovers(ws, expected)


def test_sigkill_at_instants_of_a_measured_gc(template: tuple[Path, dict[str, bytes]],
                                              tmp_path: Path) -> None:
    root, expected = template
    reference = _copy(root, tmp_path / "reference")
    started = time.monotonic()
    assert reference.run(*GC_ARGS).returncode == 0
    duration = time.monotonic() - started
    alive = []
    for n, fraction in enumerate((0.6, 0.75, 0.85, 0.95)):
        ws = _copy(root, tmp_path / f"ws{n}")
        proc = subprocess.Popen([*POSBUILD, *GC_ARGS], cwd=ws.root, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ))
        time.sleep(duration * fraction)
        alive.append(proc.poll() is None)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        _assert_recovers(ws, expected)
    assert any(alive), "every kill came after gc had finished; the instants say nothing"


def test_a_build_after_a_killed_gc_executes_exactly_the_results_it_evicted(tmp_path: Path) -> None:
    """No generation pins a failed build's results: a gc killed between two of its transactions
    has evicted some of them, and the next build executes those and no others (never reporting
    an evicted one as cached)."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    rules = [f'genrule(name = "t{i}", srcs = ["src.txt"], outs = ["t{i}.txt"], cmd = "echo t{i} > '
             '$@")'
             for i in range(40)]
    ws.write({"posbuild.toml": "", "p/src.txt": "x\n",
              "p/BUILD": "\n".join(
                  [*rules, 'genrule(name = "bad", outs = ["bad.txt"], cmd = "exit 1")']) + "\n"})
    assert counts(ws.build("-k", "//..."))["executed"] == 40
    small_batches = "from posbuild.store import gc; gc.collect.__kwdefaults__['batch_rows'] = 7\n"
    proc = subprocess.run([sys.executable, "-c", small_batches + INJECT, "between-transactions",
                           *GC_ARGS],
                          cwd=ws.root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    _, results, _ = _check_store(ws.root)
    assert 0 < results < 40  # the kill came after some evictions, before all of them
    rebuilt = ws.build("-k", "//...")
    assert counts(rebuilt) == {"executed": 40 - results, "cached": results,
                               "failed": 1}, rebuilt.stdout
    assert _check_store(ws.root)[1] == 40
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
