"""One store, several workspaces: each one's stat memo, build rows, records, build numbers, chain
and start logs are keyed by its tag; the workspace's own store (tag "") keeps the keys stores
had before tags, so a store written then still reads the same."""

from __future__ import annotations

import ast
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from posbuild.core.digest import hash_bytes
from posbuild.engine.fsck import record_chain_problems
from posbuild.core.records import BuildRow, ExecutionRecord, FileState, RecordState
from posbuild.store.lmdbstore import Store

A, B = "/work/a", "/work/a-b"  # one tag a prefix of the other: keys must still not mix
MEMO = FileState((1, 2, 3, 4), hash_bytes(b"x"))


@contextmanager
def opened(path: Path, tag: str) -> Iterator[Store]:
    """The store at `path` as the workspace tagged `tag` sees it (LMDB allows one open per
    process)."""
    store = Store(path, tag)
    try:
        yield store
    finally:
        store.close()


def _record(label: str, build: int) -> bytes:
    return ExecutionRecord(str(build), label, RecordState.SUCCESS, None, "", "", 0.0, (), (), (),
                           None, 0, "", b"").pack()


def _build(store: Store, label: str) -> int:
    """A build that records one action, concluded and sealed."""
    number = store.begin_build(BuildRow.of({"started": "x", "status": "running",
                                            "patterns": ["//..."]}))
    store.start_log(number)(label)
    store.commit(records=[(store.build_key(number) + bytes(4), label, _record(label, number))])
    store.update_build(number, {"ended": "y"})
    return number


def test_build_numbers_rows_records_and_chains_are_per_workspace(tmp_path: Path) -> None:
    path = tmp_path / "store"
    numbers = []
    for tag, label in ((A, "//p:t"), (B, "//p:t"), (A, "//p:t"), ("", "//p:u")):
        with opened(path, tag) as store:
            numbers.append(_build(store, label))
    assert numbers == [1, 1, 2, 1]
    with opened(path, A) as a:
        assert [row.number for row in a.builds()] == [1, 2]
        assert [r.build_id for r in a.records_of_label("//p:t")] == ["1", "2"]
        assert a.latest_record("//p:t").build_id == "2"
        assert [number for number, _, _ in a.raw_records()] == [1, 2]
        assert a.chain_meta()["head"][0] == 2 and record_chain_problems(a) == []
    with opened(path, B) as b:
        assert [row.number for row in b.builds()] == [1]
        assert [r.build_id for r in b.records_of_label("//p:t")] == ["1"]
        assert b.latest_record("//p:t").build_id == "1"
        assert b.chain_meta()["head"][0] == 1 and record_chain_problems(b) == []
    with opened(path, "") as own:
        assert [row.number for row in own.builds()] == [1]
        assert own.records_of_label("//p:t") == [] and own.latest_record("//p:t") is None
        assert [r.label for r in own.records_of(1)] == ["//p:u"]
        assert own.chain_meta()["head"][0] == 1 and record_chain_problems(own) == []


def test_the_own_store_keeps_the_keys_of_stores_written_before_tags(tmp_path: Path) -> None:
    with opened(tmp_path / "store", "") as own:
        number = _build(own, "//p:t")
        own.commit(memo=[("posbuild-out/p/t", MEMO)])
        with own._env.begin() as txn:
            assert txn.get(number.to_bytes(8, "big"), db=own._builds) is not None
            assert txn.get(number.to_bytes(8, "big") + bytes(4), db=own._records) is not None
            assert txn.get(b"//p:t", db=own._latest) is not None
            assert txn.get(b"records", db=own._meta) is not None
            assert txn.get(b"posbuild-out/p/t", db=own._memo) is not None


def test_stat_memo_rows_are_per_workspace(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with opened(path, A) as a:
        a.commit(memo=[("posbuild-out/p/t", MEMO)])
    for tag in (B, ""):
        with opened(path, tag) as other:
            assert other.get_memo("posbuild-out/p/t") is None
            other.remove(memo=["posbuild-out/p/t"])
    with opened(path, A) as a:
        assert a.get_memo("posbuild-out/p/t") == MEMO


def test_a_dead_build_is_settled_only_by_its_own_workspace(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with opened(path, A) as a:
        number = a.begin_build(BuildRow.of({"started": "x", "status": "running", "patterns": []}))
        a.start_log(number)("//p:slow")
        os.close(a._held.pop(number))  # as if its process died: the start log stays, unlocked
    with opened(path, B) as b:
        assert b.settle_interrupted() == [] and b.chain_meta()["running"] == []
        assert b.begin_build(BuildRow.of({"started": "x", "status": "finished", "patterns": []})) \
                == 1
    with opened(path, A) as a:
        assert a.chain_meta()["running"] == [number]
        assert a.settle_interrupted() == [number]
        [row] = a.builds()
        assert row.status == "interrupted" and [label for label, _ in row.in_flight] == ["//p:slow"]
        assert record_chain_problems(a) == []


def test_every_store_a_command_opens_names_its_workspace() -> None:
    """The class, not one instance: a Store opened without the workspace's tag reads and writes the
    rows of another workspace ("" in a shared store). Only a look at shared rows may omit it."""
    allowed = {("upstate.py", "revalidate")}  # results and blobs only: shared by every workspace
    root = Path(__file__).resolve().parents[2] / "posbuild"
    missing = []
    for source in sorted(root.rglob("*.py")):
        tree = ast.parse(source.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for call in ast.walk(function):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                    and call.func.id == "Store"
                        and len(call.args) + len(call.keywords) < 2
                        and (source.name, function.name) not in allowed):
                    missing.append(f"{source.relative_to(root)}:{call.lineno} in {function.name}")
    assert missing == []
