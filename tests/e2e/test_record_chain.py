"""The execution records of a store form a hash chain (recordchain.py): editing or deleting a
record or a build row behind posbuild's back makes `posbuild fsck` fail with ORCH-03 (exit 13)
naming the build; an untouched store passes, however its builds ended. The edits are made with
the lmdb package directly on the store's database, as an outsider would."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator

import lmdb
import msgpack

WORKSPACE = {
    "pkg/raw.txt": "b\na\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@")
        genrule(name = "count", srcs = [":sorted"], outs = ["count.txt"], cmd = "wc -l < $< > $@")
    """,
}


@contextmanager
def database(ws, name: bytes) -> Iterator[tuple[lmdb.Transaction, object]]:  # type: ignore[no-untyped-def]
    """A write transaction on one named database of the workspace's store."""
    env = lmdb.open(str(ws.root / ".posbuild" / "store" / "db"), max_dbs=16)
    try:
        db = env.open_db(name)
        with env.begin(write=True, db=db) as txn:
            yield txn, db
    finally:
        env.close()


def three_builds(ws) -> None:  # type: ignore[no-untyped-def]
    """Build 1 executes both actions, build 2 is a no-op, build 3 re-executes after an edit."""
    ws.write(WORKSPACE)
    ws.ok("//...")
    ws.ok("//...")
    ws.write({"pkg/raw.txt": "c\nb\na\n"})
    ws.ok("//...")


def fsck_fails_naming(ws, number: int) -> str:  # type: ignore[no-untyped-def]
    result = ws.run("fsck")
    assert result.returncode == 13, result.stdout + result.stderr
    assert result.stderr.startswith("posbuild: ORCH-03 checksum inconsistency: ")
    lines = [line for line in result.stdout.splitlines() if line.startswith("ORCH-03 build ")]
    assert lines and lines[0].startswith(f"ORCH-03 build {number}: "), result.stdout
    return lines[0]


def test_an_untouched_store_passes_fsck(ws):
    three_builds(ws)
    result = ws.run("fsck")
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_byte_changed_in_a_record_is_orch_03_naming_its_build(ws):
    three_builds(ws)
    with database(ws, b"records") as (txn, _):
        key, value = next((k, v) for k, v in txn.cursor() if k[:8] == (3).to_bytes(8, "big"))
        at = value.index(b"SUCCESS")
        txn.put(key, value[:at] + b"F" + value[at + 1:])  # still a readable record, saying FUCCESS
    assert "no longer hash to its seal" in fsck_fails_naming(ws, 3)
    assert ws.run("fsck", "--repair").returncode == 13  # records are evidence: never rewritten


def test_a_deleted_record_is_orch_03_naming_its_build(ws):
    three_builds(ws)
    with database(ws, b"records") as (txn, _):
        key = next(k for k, _ in txn.cursor() if k[:8] == (1).to_bytes(8, "big"))
        txn.delete(key)
    fsck_fails_naming(ws, 1)


def test_an_edited_build_row_is_orch_03_naming_the_build(ws):
    three_builds(ws)
    with database(ws, b"builds") as (txn, _):
        key = (2).to_bytes(8, "big")
        row = msgpack.unpackb(txn.get(key))
        row["patterns"] = ["//other/..."]
        txn.put(key, msgpack.packb(row, use_bin_type=True))
    fsck_fails_naming(ws, 2)


def test_a_deleted_build_is_orch_03_naming_it(ws):
    three_builds(ws)
    with database(ws, b"builds") as (txn, _):
        txn.delete((2).to_bytes(8, "big"))
    assert "deleted" in fsck_fails_naming(ws, 2)


def test_the_deleted_last_build_is_orch_03_naming_it(ws):
    three_builds(ws)
    with database(ws, b"builds") as (txn, _):
        txn.delete((3).to_bytes(8, "big"))
    with database(ws, b"records") as (txn, _):
        for key in [k for k, _ in txn.cursor() if k[:8] == (3).to_bytes(8, "big")]:
            txn.delete(key)
    assert "deleted" in fsck_fails_naming(ws, 3)


def test_an_unreadable_build_row_is_a_clear_error_in_log(ws):
    three_builds(ws)
    with database(ws, b"builds") as (txn, _):
        txn.put((3).to_bytes(8, "big"), b"\xc1garbage")
    result = ws.run("log")
    assert result.returncode == 13
    assert result.stderr.strip().startswith(
        "posbuild: ORCH-03 checksum inconsistency: the row of build 3 ")
    fsck_fails_naming(ws, 3)


def test_a_no_op_build_writes_exactly_one_row_and_is_sealed(ws):
    ws.write(WORKSPACE)
    ws.ok("//...")

    def rows(name: bytes) -> int:
        with database(ws, name) as (txn, _):
            return txn.stat()["entries"]

    builds, records = rows(b"builds"), rows(b"records")
    ws.ok("//...")
    assert (rows(b"builds"), rows(b"records")) == (builds + 1, records)
    [_,
     noop] = [json.loads(line) for line in ws.run("log", "--builds", "--json").stdout.splitlines()]
    assert noop["state"] == "FINISHED" and len(noop["seal"]) == 64
    assert ws.run("fsck").returncode == 0


def test_builds_of_two_workspaces_sharing_a_store_keep_a_consistent_chain_each(tmp_path):
    import subprocess

    from conftest import POSBUILD, Workspace

    shared = tmp_path / "shared-store"
    spaces = []
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        (root / "posbuild.toml").write_text(f'[cache]\ndir = "{shared}"\n')
        space = Workspace(root)
        space.write({f"{name}/BUILD": "\n".join(
            f'genrule(name = "t{i}", outs = ["t{i}.txt"], cmd = "sleep 0.2; echo {name} {i} > $@")'
            for i in range(6))})
        spaces.append(space)
    for round_ in range(3):
        for space in spaces:
            # packages differ: the stat memo is keyed by path
            build_file = next(space.root.glob("*/BUILD"))
            build_file.write_text(build_file.read_text().replace("> $@", f"{round_} > $@"))
        running = [subprocess.Popen([*POSBUILD, "build", "-j2", "//..."], cwd=s.root,
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True) for s in spaces]
        for process in running:
            assert process.wait(timeout=120) == 0, process.stderr.read()
    for space in spaces:
        assert space.run("fsck").returncode == 0, space.run("fsck").stdout
    for space in spaces:
        builds = [json.loads(line)
                  for line in space.run("log", "--builds", "--json").stdout.splitlines()]
        assert [(b["build"], b["state"]) for b in builds] == [(str(n), "FINISHED")
                                                              for n in (1, 2, 3)]
