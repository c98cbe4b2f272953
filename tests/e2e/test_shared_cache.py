"""Two workspaces on one `[cache] dir`: blobs and action results are shared, everything else
(generations, stat memo, execution records, build numbers, up-to-date state) stays per workspace,
and gc from one never takes what another's newest generation or running build needs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import POSBUILD, Workspace, executed_labels

BUILD = """
    genrule(name = "stamp", srcs = ["in.txt"], outs = ["stamp.txt"], cmd = "cat $< > $@", tags = ["no-cache"])
    genrule(name = "gen", srcs = ["in.txt"], outs = ["out.txt"], cmd = "cat $< > $@; echo built >> $@")
    genrule(name = "big", srcs = ["in.txt"], outs = ["big.bin"],
            cmd = "for i in $$(seq 3000); do cat $<; done > $@")
"""  # noqa: E501
STAMP = ["//pkg:stamp"]  # tagged no-cache: it runs in every build


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Workspace, Workspace]:
    """Two checkouts of one repository (same packages, same labels) sharing one store."""
    shared = tmp_path / "cache"
    spaces = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        space = Workspace(root)
        space.write({"posbuild.toml": f'[cache]\ndir = "{shared}"\n', "pkg/BUILD": BUILD,
                     "pkg/in.txt": f"{name}\n"})
        spaces.append(space)
    return spaces[0], spaces[1]


def fsck_ok(space: Workspace) -> None:
    result = space.run("fsck")
    assert result.returncode == 0, result.stdout + result.stderr


def builds(space: Workspace) -> list[dict]:
    result = space.run("log", "--builds", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_rollback_in_one_workspace_restores_its_own_tree_not_the_others(pair):
    a, b = pair
    a.ok("//...")
    b.ok("//...")
    (a.root / "posbuild-out/pkg/out.txt").unlink()
    result = a.run("rollback")
    assert result.returncode == 0, result.stderr
    assert a.out("pkg/out.txt") == "a\nbuilt\n"
    assert b.out("pkg/out.txt") == "b\nbuilt\n"
    assert len(generation_ids(a)) == 1
    fsck_ok(a)
    fsck_ok(b)


def generation_ids(space: Workspace) -> list[int]:
    listed = space.run("rollback", "--list")
    assert listed.returncode == 0, listed.stderr
    return [int(line[2:].split()[0]) for line in listed.stdout.splitlines()[1:]]


def test_rollback_to_an_older_generation_after_the_other_workspace_built(pair):
    a, b = pair
    a.ok("//...")
    a.write({"pkg/in.txt": "a2\n"})
    a.ok("//...")
    b.ok("//...")
    first, _ = generation_ids(a)
    result = a.run("rollback", "--to", str(first))
    assert result.returncode == 0, result.stderr
    assert a.out("pkg/out.txt") == "a\nbuilt\n"
    [theirs] = generation_ids(b)
    refused = a.run("rollback", "--to", str(theirs))
    assert refused.returncode != 0 and "no generation" in refused.stderr
    b.write({"pkg/in.txt": "b2\n"})
    b.ok("//...")
    assert a.run("rollback").returncode == 0
    assert a.out("pkg/out.txt") == "a\nbuilt\n"
    fsck_ok(a)


def test_fsck_in_one_workspace_after_the_other_built_finds_nothing_and_repair_keeps_its_outputs(
    pair):
    a, b = pair
    a.ok("//...")
    b.ok("//...")
    fsck_ok(a)
    fsck_ok(b)
    repaired = a.run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert a.out("pkg/out.txt") == "a\nbuilt\n"
    assert b.out("pkg/out.txt") == "b\nbuilt\n"
    assert executed_labels(a.ok("//...")) == STAMP
    fsck_ok(b)


def test_fsck_checks_outputs_without_memo_rows_against_its_own_generation(pair):
    """With its stat-memo rows gone, fsck falls back to the latest generation for an output no
    action result records (a no-cache action's): it must be this workspace's generation, or a
    correct output reads as corrupt and repair deletes it."""
    import lmdb

    a, b = pair
    a.ok("//...")
    b.ok("//...")
    env = lmdb.open(str(a.root.parent / "cache" / "db"), max_dbs=16)
    with env.begin(write=True) as txn:
        memo = env.open_db(b"statmemo", txn=txn)
        for key in [k for k, _ in txn.cursor(db=memo)
                    if k.startswith(str(a.root).encode() + b"\0")]:
            txn.delete(key, db=memo)
    env.close()
    fsck_ok(a)
    assert a.run("fsck", "--repair").returncode == 0
    assert a.out("pkg/stamp.txt") == "a\n"


def test_build_numbers_and_records_are_per_workspace(pair):
    a, b = pair
    a.ok("//...")
    b.ok("//...")
    b.write({"pkg/in.txt": "b2\n"})
    b.ok("//...")
    a.ok("//...")
    assert [x["build"] for x in builds(a)] == ["1", "2"]
    assert [x["build"] for x in builds(b)] == ["1", "2"]
    assert [x["state"] for x in builds(a)] == ["FINISHED"] * 2
    log = a.run("log", "--build", "1", "--json", "//pkg:gen")
    assert log.returncode == 0, log.stderr
    [record] = [json.loads(line) for line in log.stdout.splitlines()]
    assert record["state"] == "SUCCESS" and record["build"] == "1"
    latest = a.run("log", "--json", "//pkg:gen")
    assert [json.loads(line)["state"] for line in latest.stdout.splitlines()] == ["CACHED"]
    theirs = b.run("log", "--build", "2", "--json", "//pkg:gen")
    assert [json.loads(line)["state"] for line in theirs.stdout.splitlines()] == ["SUCCESS"]
    assert a.run("log", "--build", "3").returncode != 0
    explained = a.run("explain", "//pkg:gen")
    assert explained.returncode == 0, explained.stderr
    fsck_ok(a)
    fsck_ok(b)


def test_the_other_workspaces_builds_leave_the_up_to_date_state_alone(pair):
    a, b = pair
    a.ok("//...")
    b.ok("//...")
    assert executed_labels(a.ok("//...")) == STAMP
    assert a.out("pkg/out.txt") == "a\nbuilt\n"
    b.write({"pkg/in.txt": "b2\n"})
    b.ok("//...")
    noop = a.ok("//...")
    assert executed_labels(noop) == STAMP
    assert a.out("pkg/out.txt") == "a\nbuilt\n"
    a.write({"pkg/in.txt": "b2\n"})  # now the same input as b: a cache hit from b's build
    hit = a.ok("//...")
    assert executed_labels(hit) == STAMP and a.out("pkg/out.txt") == "b2\nbuilt\n"


def test_gc_in_a_loop_beside_builds_of_another_workspace_never_loses_what_they_need(pair):
    a, b = pair
    _gc_loop_beside_builds(collector=a, builder=b, store=a.root.parent / "cache")


def test_gc_of_a_workspace_using_anothers_own_store_waits_for_its_builds(pair):
    """The store a workspace made for itself (tag "") can be another's `[cache] dir` too: the
    owner's builds must still keep that other's gc out."""
    a, b = pair
    a.write({"posbuild.toml": ""})
    a.ok("//...")
    b.write({"posbuild.toml": f'[cache]\ndir = "{a.root / ".posbuild/store"}"\n'})
    _gc_loop_beside_builds(collector=b, builder=a, store=a.root / ".posbuild/store")


def _gc_loop_beside_builds(collector: Workspace, builder: Workspace, store: Path) -> None:
    """Builds in `builder` (new inputs, and inputs seen before: cache hits) while `collector` runs
    `gc --max-size 1` in a loop; then every generation and result must still hold its blobs."""
    collector.ok("//...")
    stop = collector.root.parent / "stop"
    gc_loop = subprocess.Popen(
        ["bash", "-c",
         f'while [ ! -e {stop} ]; do "$@" gc --max-size 1 --keep-generations 1 || exit 9; done',
         "gc-loop", *POSBUILD], cwd=collector.root, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    name = builder.root.name
    try:
        deadline = time.monotonic() + 25
        for rounds in range(20):
            builder.write({"pkg/in.txt": f"{name}{rounds % 4}\n"})
            result = builder.build("//...")
            assert result.returncode == 0, result.stdout + result.stderr
            assert builder.out("pkg/out.txt") == f"{name}{rounds % 4}\nbuilt\n"
            if time.monotonic() > deadline and rounds >= 6:
                break
    finally:
        stop.touch()
        gc_loop.wait(timeout=120)
    assert gc_loop.returncode == 0, gc_loop.stderr.read()
    fsck_ok(collector)
    fsck_ok(builder)
    _every_generation_and_result_holds_its_blobs(store)
    for space in (collector, builder):
        (space.root / "posbuild-out").rename(space.root / "gone")
        assert space.run("rollback").returncode == 0
    assert collector.out("pkg/out.txt") == f"{collector.root.name}\nbuilt\n"
    assert builder.out("pkg/out.txt") == f"{name}{rounds % 4}\nbuilt\n"


def _every_generation_and_result_holds_its_blobs(path: Path) -> None:
    from posbuild.core.records import unpack_manifest
    from posbuild.store.lmdbstore import Store

    store = Store(path)
    try:
        newest = {}
        for generation in store.generations():
            newest[generation.workspace] = generation
        for generation in newest.values():
            for rel, (digest, _, _) in unpack_manifest(store.get_blob(generation.manifest)).items():
                assert store.has_blob(digest), f"{rel} of generation {generation.id}"
                store.get_blob(digest)
        for key, result in store.iter_results():
            for digest in result.blobs():
                assert store.has_blob(digest), f"result {key.hex()} names a missing blob"
    finally:
        store.close()
