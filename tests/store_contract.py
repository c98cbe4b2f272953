"""The store's contract, written once: the guarantees store/protocols.py states, as test cases.

One class of cases per facet. tests/unit/test_store_contract.py runs them against every store
(the LMDB store, the in-memory fake) by subclassing them with a `store` fixture and a `reopen`;
a subclass that cannot honour a case (a fake does not outlive its process) overrides it with an
explicit skip. Writes go through `Commits.commit`, or `Commits.log` where `via_log` says so, so
that the LMDB store's reads of rows not yet applied from its log are held to the same contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import pytest

from posbuild.core.digest import hash_bytes
from posbuild.core.records import (ActionResult, BuildRow, Commit, ExecutionRecord, FileState,
                                   OutputFile, RecordState, pack_manifest)
from posbuild.errors import ChecksumMismatch

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import (ActionCache, Blobs, BuildLog, Commits, Generations,
                                          StatMemo, Sweep)

    class AnyStore(Blobs, ActionCache, StatMemo, Commits, BuildLog, Generations, Sweep,
                   Protocol):
        """A store with every facet, as the contract drives it."""

DATA = b"model weights\n"
DIGEST = hash_bytes(DATA)
BIG = bytes(range(256)) * 1200  # the size the LMDB store keeps as a file, though any size may be
BIG_DIGEST = hash_bytes(BIG)
EMPTY = hash_bytes(b"")
KEY, OTHER_KEY = hash_bytes(b"action key"), hash_bytes(b"another action key")
RESULT = ActionResult((OutputFile("posbuild-out/pkg/model.bin", DIGEST, len(DATA), False),),
                      0, EMPTY, EMPTY)
FAILED = ActionResult((), 1, EMPTY, DIGEST)
MEMO = FileState((1_600_000_000_000_000_000, 5, 1234, 1_600_000_000_000_000_001),
                 hash_bytes(b"alpha"))
NEWER_MEMO = FileState((1_700_000_000_000_000_000, 6, 1234, 1_700_000_000_000_000_001),
                       hash_bytes(b"beta"))
OTHER_WORKSPACE = "/work/other"


def record(build: int, label: str) -> ExecutionRecord:
    return ExecutionRecord(str(build), label, RecordState.SUCCESS, KEY, "2026-01-01T00:00:00Z",
                           "2026-01-01T00:00:01Z", 1.0, (("pkg/in.txt", DIGEST),), (),
                           (("pkg/out.txt", DIGEST),), None, 0, "", EMPTY)


def running_row() -> BuildRow:
    return BuildRow.of({"started": "2026-01-01T00:00:00Z", "status": "running",
                        "patterns": ["//pkg:all"], "actions": 2})


def refused_row() -> BuildRow:
    return BuildRow.of({"started": "2026-01-01T00:00:00Z", "status": "refused",
                        "patterns": ["//pkg:all"], "ended": "2026-01-01T00:00:01Z",
                        "error": "ORCH-02", "message": "a cycle"})


class Contract:
    """The hooks every implementation provides."""

    via_log: ClassVar[bool] = False

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[AnyStore]:
        raise NotImplementedError

    def reopen(self, store: AnyStore, workspace: str = "") -> AnyStore:
        """The same store in a new handle (the old one closed), as workspace `workspace` sees
        it."""
        raise NotImplementedError

    def killed_while_logging(self, store: AnyStore, commits: list[Commit]) -> AnyStore:
        """The store reopened after another process logged `commits` and was killed."""
        raise NotImplementedError

    def write(self, store: AnyStore, **rows: Any) -> None:
        """One action's rows, by `commit` or by `log`."""
        if self.via_log:
            store.log([Commit(**{name: tuple(value) if isinstance(value, list) else value
                                 for name, value in rows.items()})])
        else:
            store.commit(**rows)

    def applied(self, store: AnyStore) -> None:
        """Make logged rows visible to every read, not only to those a build makes."""
        if self.via_log:
            store.flush()


def big_file(folder: Path) -> Path:
    path = folder / "big.bin"
    path.write_bytes(BIG)
    return path


class BlobsContract(Contract):

    def test_a_missing_blob_is_absent_and_not_served(self, store: AnyStore) -> None:
        assert not store.has_blob(DIGEST)
        assert store.blob_source(DIGEST) is None
        assert store.blob_size(DIGEST) == 0
        with pytest.raises(ChecksumMismatch):
            store.get_blob(DIGEST)

    def test_an_inline_blob_round_trips(self, store: AnyStore) -> None:
        self.write(store, blobs=[(DIGEST, DATA), (EMPTY, b"")])
        assert store.has_blob(DIGEST) and store.has_blob(EMPTY)
        assert store.get_blob(DIGEST) == DATA and store.get_blob(EMPTY) == b""
        assert store.blob_source(DIGEST) == DATA
        self.applied(store)
        assert store.blob_size(DIGEST) == len(DATA)

    def test_an_external_blob_round_trips(self, store: AnyStore, tmp_path: Path) -> None:
        store.store_external(BIG_DIGEST, big_file(tmp_path))
        self.write(store, blobs=[(BIG_DIGEST, None)])
        assert store.has_blob(BIG_DIGEST)
        assert store.get_blob(BIG_DIGEST) == BIG
        assert store.blob_source(BIG_DIGEST) == store.external_path(BIG_DIGEST)
        assert store.external_path(BIG_DIGEST).read_bytes() == BIG
        self.applied(store)
        assert store.blob_size(BIG_DIGEST) == len(BIG)
        assert list(store.external_files()) == [store.external_path(BIG_DIGEST)]

    def test_a_file_that_does_not_hash_to_its_digest_is_not_stored(self, store: AnyStore,
                                                                   tmp_path: Path) -> None:
        with pytest.raises(ChecksumMismatch):
            store.store_external(DIGEST, big_file(tmp_path))
        assert not store.external_path(DIGEST).exists()
        assert list(store.external_files()) == []

    def test_a_corrupt_external_blob_is_not_served(self, store: AnyStore,
                                                   tmp_path: Path) -> None:
        store.store_external(BIG_DIGEST, big_file(tmp_path))
        self.write(store, blobs=[(BIG_DIGEST, None)])
        file = store.external_path(BIG_DIGEST)
        file.chmod(0o644)
        file.write_bytes(BIG[:-1] + b"!")
        with pytest.raises(ChecksumMismatch):
            store.get_blob(BIG_DIGEST)
        file.unlink()
        with pytest.raises(ChecksumMismatch):
            store.get_blob(BIG_DIGEST)

    def test_a_blob_already_held_is_kept(self, store: AnyStore, tmp_path: Path) -> None:
        self.write(store, blobs=[(DIGEST, DATA)])
        (tmp_path / "small").write_bytes(DATA)
        store.store_external(DIGEST, tmp_path / "small")  # a writer that keeps it as a file
        self.write(store, blobs=[(DIGEST, None)])
        assert store.get_blob(DIGEST) == DATA
        self.applied(store)
        assert store.blob_source(DIGEST) == DATA

    def test_blobs_survive_reopening(self, store: AnyStore, tmp_path: Path) -> None:
        store.store_external(BIG_DIGEST, big_file(tmp_path))
        self.write(store, blobs=[(DIGEST, DATA), (BIG_DIGEST, None)])
        store = self.reopen(store)
        assert store.get_blob(DIGEST) == DATA and store.get_blob(BIG_DIGEST) == BIG


class ActionCacheContract(Contract):

    def test_a_missing_result_is_none(self, store: AnyStore) -> None:
        assert store.get_result(KEY) is None

    def test_a_result_round_trips_and_is_not_duplicated(self, store: AnyStore) -> None:
        self.write(store, result=(KEY, RESULT), blobs=[(DIGEST, DATA), (EMPTY, b"")])
        self.write(store, result=(KEY, RESULT))
        assert store.get_result(KEY) == RESULT
        self.applied(store)
        assert list(store.iter_results()) == [(KEY, RESULT)]
        store = self.reopen(store)
        assert list(store.iter_results()) == [(KEY, RESULT)]

    def test_a_commit_replaces_the_result_of_its_key(self, store: AnyStore) -> None:
        self.write(store, result=(KEY, RESULT))
        self.write(store, result=(KEY, FAILED))
        assert store.get_result(KEY) == FAILED
        self.applied(store)
        assert list(store.iter_results()) == [(KEY, FAILED)]

    def test_added_results_keep_the_ones_held_and_count_the_new(self, store: AnyStore) -> None:
        self.write(store, result=(KEY, RESULT))
        added = store.add_results([(KEY, FAILED.pack()), (OTHER_KEY, RESULT.pack())],
                                  [(DIGEST, DATA)], when=1234)
        assert added == 1
        assert store.get_result(KEY) == RESULT and store.get_result(OTHER_KEY) == RESULT
        assert store.get_blob(DIGEST) == DATA
        assert store.usage() == {OTHER_KEY: 1234}

    def test_usage_keeps_the_last_use(self, store: AnyStore) -> None:
        self.write(store, used=[(KEY, 5)])
        self.write(store, used=[(KEY, 9), (OTHER_KEY, 7)])
        self.applied(store)
        assert store.usage() == {KEY: 9, OTHER_KEY: 7}


class StatMemoContract(Contract):

    def test_the_memo_round_trips_and_replaces(self, store: AnyStore) -> None:
        assert store.get_memo("pkg/a.txt") is None
        self.write(store, memo=[("pkg/a.txt", MEMO)])
        assert store.get_memo("pkg/a.txt") == MEMO
        self.write(store, memo=[("pkg/a.txt", NEWER_MEMO)])
        assert store.get_memo("pkg/a.txt") == NEWER_MEMO
        store = self.reopen(store)
        assert store.get_memo("pkg/a.txt") == NEWER_MEMO

    def test_removed_memo_rows_are_gone(self, store: AnyStore) -> None:
        self.write(store, memo=[("pkg/a.txt", MEMO), ("pkg/b.txt", MEMO)])
        store.remove(memo=["pkg/a.txt"])
        assert store.get_memo("pkg/a.txt") is None and store.get_memo("pkg/b.txt") == MEMO

    def test_each_workspace_has_its_own_memo(self, store: AnyStore) -> None:
        self.write(store, memo=[("pkg/a.txt", MEMO)])
        other = self.reopen(store, OTHER_WORKSPACE)
        assert other.get_memo("pkg/a.txt") is None
        self.write(other, memo=[("pkg/a.txt", NEWER_MEMO)])
        assert self.reopen(other).get_memo("pkg/a.txt") == MEMO


class CommitsContract(Contract):

    def commits(self, store: AnyStore, number: int) -> list[Commit]:
        key = store.build_key(number)
        return [
            Commit((KEY, RESULT), ((DIGEST, DATA), (EMPTY, b"")), (("pkg/a.txt", MEMO),),
                   ((KEY, 11),), ((key + bytes(4), "//pkg:a", record(number, "//pkg:a").pack()),)),
            Commit((OTHER_KEY, FAILED), (), (("pkg/b.txt", NEWER_MEMO),), ((OTHER_KEY, 12),),
                   ((key + (1).to_bytes(4, "big"), "//pkg:b",
                     record(number, "//pkg:b").pack()),)),
        ]

    def assert_read_by_builds(self, store: AnyStore) -> None:
        assert store.get_result(KEY) == RESULT and store.get_result(OTHER_KEY) == FAILED
        assert store.has_blob(DIGEST) and store.blob_source(DIGEST) == DATA
        assert store.get_blob(DIGEST) == DATA and store.get_blob(EMPTY) == b""
        assert store.get_memo("pkg/a.txt") == MEMO and store.get_memo("pkg/b.txt") == NEWER_MEMO

    def assert_logged(self, store: AnyStore, number: int) -> None:
        self.assert_read_by_builds(store)
        assert store.usage() == {KEY: 11, OTHER_KEY: 12}
        assert store.records_of(number) == [record(number, "//pkg:a"), record(number, "//pkg:b")]
        assert store.latest_record("//pkg:b") == record(number, "//pkg:b")

    def test_logged_commits_are_read_at_once_and_after_flush_and_reopening(
            self, store: AnyStore) -> None:
        number = store.begin_build(running_row())
        store.log(self.commits(store, number))
        self.assert_read_by_builds(store)
        store.flush()
        self.assert_logged(store, number)
        store.update_build(number, {"ended": "2026-01-01T00:00:02Z"})
        store = self.reopen(store)
        self.assert_logged(store, number)

    def test_one_commit_writes_every_kind_of_row(self, store: AnyStore) -> None:
        number = store.begin_build(running_row())
        for commit in self.commits(store, number):
            store.commit(commit.result, commit.blobs, commit.memo, commit.used, commit.records)
        self.assert_logged(store, number)

    def test_logged_commits_survive_a_kill(self, store: AnyStore) -> None:
        number = store.begin_build(refused_row())
        store = self.killed_while_logging(store, self.commits(store, number))
        self.assert_logged(store, number)


class BuildLogContract(Contract):

    def test_builds_are_numbered_from_one(self, store: AnyStore) -> None:
        assert store.builds() == []
        numbers = [store.begin_build(refused_row()) for _ in range(3)]
        assert numbers == [1, 2, 3]
        assert [(row.number, row.status, row.error) for row in store.builds()] == \
            [(1, "refused", "ORCH-02"), (2, "refused", "ORCH-02"), (3, "refused", "ORCH-02")]
        assert store.settle_interrupted() == []

    def test_a_running_build_is_concluded(self, store: AnyStore) -> None:
        number = store.begin_build(running_row())
        row = store.builds()[-1]
        assert (row.number, row.status, row.pid) == (number, "running", os.getpid())
        store.start_log(number)("//pkg:a")
        assert store.settle_interrupted() == []  # its process is this one, alive
        store.update_build(number, {"ended": "2026-01-01T00:00:02Z", "failed": 1})
        row = store.builds()[-1]
        assert (row.status, row.ended, row.failed, row.patterns) == \
            ("finished", "2026-01-01T00:00:02Z", 1, ["//pkg:all"])
        assert self.reopen(store).builds()[-1].status == "finished"

    def test_records_come_back_per_build_and_per_label(self, store: AnyStore) -> None:
        first, second = store.begin_build(running_row()), store.begin_build(running_row())
        for number in (first, second):
            key = store.build_key(number)
            # written out of order: reads follow the sequence in the key
            self.write(store, records=[(key + (1).to_bytes(4, "big"), "//pkg:b",
                                        record(number, "//pkg:b").pack())])
            self.write(store, records=[(key + bytes(4), "//pkg:a",
                                        record(number, "//pkg:a").pack())])
        self.applied(store)
        self.assert_records(store, first, second)
        self.assert_records(self.reopen(store), first, second)

    def assert_records(self, store: AnyStore, first: int, second: int) -> None:
        assert store.records_of(first) == [record(first, "//pkg:a"), record(first, "//pkg:b")]
        assert [r.build_id for r in store.records_of_label("//pkg:a")] == ["1", "2"]
        assert store.latest_record("//pkg:a") == record(second, "//pkg:a")
        assert store.latest_record("//pkg:none") is None
        assert store.records_of(3) == []

    def test_the_latest_record_follows_the_newest(self, store: AnyStore) -> None:
        first, second = store.begin_build(running_row()), store.begin_build(running_row())
        self.write(store, records=[(store.build_key(second) + bytes(4), "//pkg:a",
                                    record(second, "//pkg:a").pack())])
        self.write(store, records=[(store.build_key(first) + bytes(4), "//pkg:a",
                                    record(first, "//pkg:a").pack())])  # older, written later
        self.applied(store)
        assert store.latest_record("//pkg:a") == record(second, "//pkg:a")

    def test_a_concluded_build_stores_the_payloads_a_later_row_will_name(
            self, store: AnyStore) -> None:
        payload = b"the state this build saved" * 500
        number = store.begin_build(BuildRow.of({"patterns": ["//..."], "status": "running"}))
        assert store.journal_blob(hash_bytes(payload)) is None
        store.update_build(number, {"ended": "2026-01-01T00:00:02Z"},
                           [(hash_bytes(payload), payload)])
        assert self.reopen(store).journal_blob(hash_bytes(payload)) == payload

    def test_payloads_round_trip_verified(self, store: AnyStore) -> None:
        payload = bytes(range(256)) * 40  # more than a page
        store.begin_build(refused_row(), [(hash_bytes(payload), payload)])
        assert store.journal_blob(hash_bytes(payload)) == payload
        assert store.journal_blob(DIGEST) is None
        assert self.reopen(store).journal_blob(hash_bytes(payload)) == payload

    def test_each_workspace_numbers_its_own_builds(self, store: AnyStore) -> None:
        store.begin_build(refused_row())
        number = store.begin_build(running_row())
        self.write(store, records=[(store.build_key(number) + bytes(4), "//pkg:a",
                                    record(number, "//pkg:a").pack())])
        store.update_build(number, {"ended": "2026-01-01T00:00:02Z"})
        other = self.reopen(store, OTHER_WORKSPACE)
        assert other.builds() == [] and other.latest_record("//pkg:a") is None
        assert other.begin_build(refused_row()) == 1
        assert other.records_of_label("//pkg:a") == [] and other.records_of(2) == []
        again = self.reopen(other)
        assert [row.number for row in again.builds()] == [1, 2]
        assert again.begin_build(refused_row()) == 3
        assert again.latest_record("//pkg:a") == record(number, "//pkg:a")

    def test_a_build_left_running_by_a_closed_store_is_interrupted(self,
                                                                    store: AnyStore) -> None:
        number = store.begin_build(running_row())
        store.start_log(number)("//pkg:a")
        row = self.reopen(store).builds()[-1]
        assert row.status == "interrupted"
        assert [label for label, _ in row.in_flight] == ["//pkg:a"]


class GenerationsContract(Contract):

    def test_generations_round_trip(self, store: AnyStore) -> None:
        assert store.generations() == [] and store.latest_generation() is None
        manifest = pack_manifest({"posbuild-out/pkg/model.bin": (DIGEST, len(DATA), False)})
        first = store.add_generation("2026-01-01T00:00:00Z", ("//pkg:all",), manifest, 1,
                                     len(DATA))
        other = store.add_generation("2026-01-01T00:00:01Z", ("//...",), manifest, 1, len(DATA),
                                     OTHER_WORKSPACE)
        second = store.add_generation("2026-01-01T00:00:02Z", ("//pkg:all",), pack_manifest({}),
                                      0, 0)
        assert [g.id for g in (first, other, second)] == [1, 2, 3]
        assert (first.patterns, first.manifest, first.files, first.size, first.workspace) == \
            (("//pkg:all",), hash_bytes(manifest), 1, len(DATA), "")
        for again in (False, True):
            check = self.reopen(store) if again else store
            assert check.generations() == [first, other, second]
            assert check.latest_generation() == second
            assert check.latest_generation(OTHER_WORKSPACE) == other
            assert check.get_blob(first.manifest) == manifest

    def test_removed_generations_are_gone(self, store: AnyStore) -> None:
        manifest = pack_manifest({})
        first = store.add_generation("2026-01-01T00:00:00Z", (), manifest, 0, 0)
        second = store.add_generation("2026-01-01T00:00:01Z", (), manifest, 0, 0)
        store.remove(generations=[first.id])
        assert store.generations() == [second]


class SweepContract(Contract):

    def test_walks_list_every_row(self, store: AnyStore, tmp_path: Path) -> None:
        store.store_external(BIG_DIGEST, big_file(tmp_path))
        self.write(store, result=(KEY, RESULT), blobs=[(DIGEST, DATA), (BIG_DIGEST, None)],
                   used=[(KEY, 3)])
        self.applied(store)
        assert sorted(store.iter_blobs()) == sorted([(DIGEST, DATA), (BIG_DIGEST, None)])
        assert list(store.iter_results()) == [(KEY, RESULT)]
        assert store.usage() == {KEY: 3}

    def test_remove_deletes_rows_and_files_and_counts_bytes(self, store: AnyStore,
                                                           tmp_path: Path) -> None:
        store.store_external(BIG_DIGEST, big_file(tmp_path))
        self.write(store, result=(KEY, RESULT), blobs=[(DIGEST, DATA), (BIG_DIGEST, None)],
                   used=[(KEY, 3)])
        freed = store.remove(results=[KEY], blobs=[DIGEST, BIG_DIGEST, EMPTY])
        assert freed == len(DATA) + len(BIG)
        assert store.get_result(KEY) is None and store.usage() == {}
        assert not store.has_blob(DIGEST) and not store.has_blob(BIG_DIGEST)
        assert not store.external_path(BIG_DIGEST).exists()
        assert list(self.reopen(store).iter_blobs()) == []


class StoreContract(BlobsContract, ActionCacheContract, StatMemoContract, CommitsContract,
                    BuildLogContract, GenerationsContract, SweepContract):
    """Every facet's cases."""
