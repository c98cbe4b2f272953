"""The LMDB store: one-transaction commits, idempotent results, verified blobs (ORCH-03), large
blobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from posbuild.core.digest import hash_bytes, hash_file
from posbuild.errors import ChecksumMismatch, PartialState
from posbuild.core.records import ActionResult, BuildRow, FileState, OutputFile
from posbuild.core.records import Commit
from posbuild.store.lmdbstore import _INLINE, INLINE_LIMIT, PAYLOAD_CHUNK, Store

KEY = hash_bytes(b"action key")
OUT = b"model weights\n"
OUT_DIGEST = hash_bytes(OUT)
EMPTY = hash_bytes(b"")
RESULT = ActionResult(
    outputs=(OutputFile("posbuild-out/pkg/model.bin", OUT_DIGEST, len(OUT), False),),
    exit_code=0,
    stdout_digest=EMPTY,
    stderr_digest=EMPTY,
)
MEMO = FileState((1_600_000_000_000_000_000, 5, 1234, 1_600_000_000_000_000_001),
                 hash_bytes(b"alpha"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store")
    yield opened
    opened.close()


def last_txnid(store: Store) -> int:
    return store._env.info()["last_txnid"]


def test_empty_store_has_nothing(store: Store) -> None:
    assert store.get_result(KEY) is None
    assert store.get_memo("pkg/a.txt") is None
    assert not store.has_blob(OUT_DIGEST)


def test_commit_writes_result_blobs_and_memo(store: Store) -> None:
    store.commit(result=(KEY, RESULT), blobs=[(OUT_DIGEST, OUT), (EMPTY, b"")],
                 memo=[("pkg/a.txt", MEMO)])
    assert store.get_result(KEY) == RESULT
    assert store.get_blob(OUT_DIGEST) == OUT
    assert store.get_blob(EMPTY) == b""
    assert store.get_memo("pkg/a.txt") == MEMO


def test_committed_rows_survive_reopening(tmp_path: Path) -> None:
    first = Store(tmp_path / "s")
    first.commit(result=(KEY, RESULT), blobs=[(OUT_DIGEST, OUT)], memo=[("pkg/a.txt", MEMO)])
    first.flush()
    first.close()
    second = Store(tmp_path / "s")
    try:
        assert second.get_result(KEY) == RESULT
        assert second.get_blob(OUT_DIGEST) == OUT
        assert second.get_memo("pkg/a.txt") == MEMO
    finally:
        second.close()


def test_reads_see_commits_made_after_an_earlier_read(store: Store) -> None:
    assert store.get_result(KEY) is None  # opens the cached read snapshot
    store.commit(result=(KEY, RESULT), memo=[("pkg/a.txt", MEMO)])
    assert store.get_result(KEY) == RESULT
    assert store.get_memo("pkg/a.txt") == MEMO


def test_commit_is_one_transaction(store: Store) -> None:
    """A failure part-way through a commit leaves none of its rows behind."""

    def memo_rows() -> Iterator[tuple[str, FileState]]:
        yield "pkg/a.txt", MEMO
        raise RuntimeError("killed mid-commit")

    with pytest.raises(RuntimeError):
        store.commit(result=(KEY, RESULT), blobs=[(OUT_DIGEST, OUT)], memo=memo_rows())
    assert not store.has_blob(OUT_DIGEST)
    assert store.get_memo("pkg/a.txt") is None
    assert store.get_result(KEY) is None


def test_logged_actions_are_seen_at_once_and_written_in_one_later_transaction(store: Store) -> None:
    class Exploding:
        def pack(self) -> bytes:
            raise RuntimeError("killed mid-commit")

    first = Commit((KEY, RESULT), ((OUT_DIGEST, OUT),), (("pkg/a.txt", MEMO),))
    other = hash_bytes(b"another action key")
    with pytest.raises(RuntimeError):
        store.log([first, Commit(memo=(("pkg/b.txt", Exploding()),))])  # type: ignore[arg-type]
    assert store.get_result(KEY) is None and not store.has_blob(OUT_DIGEST) \
            and store.get_memo("pkg/a.txt") is None
    before = last_txnid(store)
    store.log([first, Commit((other, RESULT), used=((other, 7),))])
    assert last_txnid(store) == before  # in the log only: no LMDB transaction yet
    assert store.get_result(KEY) == RESULT and store.get_result(other) == RESULT
    assert store.get_memo("pkg/a.txt") == MEMO and store.get_blob(OUT_DIGEST) == OUT
    # any write applies the log first, in the same transaction
    store.commit(memo=[("pkg/c.txt", MEMO)])
    assert last_txnid(store) == before + 1
    with store._env.begin() as txn:
        assert txn.get(KEY, db=store._results) == RESULT.pack()
        assert txn.get(other, db=store._usage) == (7).to_bytes(8, "big")
    assert not store._logged
    assert store._log.path.read_bytes()[:4] == bytes(4)  # type: ignore[union-attr]  # an empty frame: nothing to replay


def test_a_full_group_of_logged_actions_is_written_without_waiting(store: Store) -> None:
    from posbuild.store.lmdbstore import LOG_GROUP

    before = last_txnid(store)
    for i in range(LOG_GROUP):
        store.log([Commit((hash_bytes(b"%d" % i), RESULT))])
    assert last_txnid(store) == before + 1 and not store._logged


_LOG_AND_DIE = """
import os, signal, sys
from pathlib import Path
from posbuild.core.digest import hash_bytes
from posbuild.core.records import Commit
from posbuild.store.lmdbstore import Store
from tests.unit.test_store import KEY, MEMO, OUT, OUT_DIGEST, RESULT
store = Store(Path(sys.argv[1]))
store.log([Commit((KEY, RESULT), ((OUT_DIGEST, OUT),), (("pkg/a.txt", MEMO),))])
store.log([Commit((hash_bytes(b"torn"), RESULT))])
if sys.argv[2] == "torn":  # the last frame cut short, as by a kill in the middle of its write
    os.truncate(store._log.path, os.path.getsize(store._log.path) - 3)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("tail", ["whole", "torn"])
def test_a_killed_process_s_logged_actions_are_replayed_by_the_next_opening(tmp_path: Path,
                                                                            tail: str) -> None:
    import subprocess
    import sys

    died = subprocess.run([sys.executable, "-c", _LOG_AND_DIE, str(tmp_path / "s"), tail],
                          cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert died.returncode == -9, died.stderr
    assert len(list((tmp_path / "s" / "wal").iterdir())) == 1
    reopened = Store(tmp_path / "s")
    try:
        with reopened._env.begin() as txn:  # in LMDB itself, not only in a log
            assert txn.get(KEY, db=reopened._results) == RESULT.pack()
        assert reopened.get_blob(OUT_DIGEST) == OUT and reopened.get_memo("pkg/a.txt") == MEMO
        assert (reopened.get_result(hash_bytes(b"torn")) is not None) == (tail == "whole")
        assert not list((tmp_path / "s" / "wal").iterdir())
    finally:
        reopened.close()


def test_identical_result_commit_changes_nothing(store: Store) -> None:
    store.commit(result=(KEY, RESULT), blobs=[(OUT_DIGEST, OUT)])
    before = last_txnid(store)
    store.commit(result=(KEY, RESULT), blobs=[(OUT_DIGEST, OUT)])
    assert last_txnid(store) == before  # LMDB committed no new transaction: nothing was written
    assert store.get_result(KEY) == RESULT
    assert store.get_blob(OUT_DIGEST) == OUT


def test_different_result_for_same_key_is_written(store: Store) -> None:
    store.commit(result=(KEY, RESULT))
    other = ActionResult(RESULT.outputs, 0, hash_bytes(b"log"), EMPTY)
    before = last_txnid(store)
    store.commit(result=(KEY, other))
    assert last_txnid(store) > before
    assert store.get_result(KEY) == other


def test_existing_blob_is_not_overwritten(store: Store) -> None:
    store.commit(blobs=[(OUT_DIGEST, OUT)])
    before = last_txnid(store)
    store.commit(blobs=[(OUT_DIGEST, OUT)])
    assert last_txnid(store) == before


def corrupt_inline_blob(store: Store, digest: bytes, data: bytes) -> None:
    with store._env.begin(write=True) as txn:
        txn.put(digest, _INLINE + data, db=store._blobs)


def test_corrupt_inline_blob_raises_checksum_mismatch(store: Store) -> None:
    store.commit(blobs=[(OUT_DIGEST, OUT)])
    bad = b"model weightz\n"
    corrupt_inline_blob(store, OUT_DIGEST, bad)
    with pytest.raises(ChecksumMismatch) as info:
        store.get_blob(OUT_DIGEST)
    error = info.value
    assert error.code == "ORCH-03"
    assert error.exit_code == 13
    assert error.render() == (
        f"ORCH-03 checksum inconsistency: blob {OUT_DIGEST.hex()} in {store.path} hashes to "
        f"{hash_bytes(bad).hex()}; run `posbuild fsck --repair`"
    )


def test_truncated_inline_blob_raises_checksum_mismatch(store: Store) -> None:
    store.commit(blobs=[(OUT_DIGEST, OUT)])
    corrupt_inline_blob(store, OUT_DIGEST, OUT[:-1])
    with pytest.raises(ChecksumMismatch):
        store.get_blob(OUT_DIGEST)


def test_missing_blob_raises_checksum_mismatch(store: Store) -> None:
    with pytest.raises(ChecksumMismatch,
                       match=f"blob {OUT_DIGEST.hex()} .* missing from the store"):
        store.get_blob(OUT_DIGEST)


# -- large blobs in cas/
# -------------------------------------------------------------------------------------


@pytest.fixture
def large(tmp_path: Path) -> tuple[Path, bytes]:
    content = os.urandom(INLINE_LIMIT) + b"x" * (INLINE_LIMIT + 17)
    path = tmp_path / "large.bin"
    path.write_bytes(content)
    return path, hash_file(path)


def test_large_blob_lives_in_cas_and_round_trips(store: Store, large: tuple[Path, bytes]) -> None:
    source, digest = large
    store.store_external(digest, source)
    store.commit(blobs=[(digest, None)])
    target = store.external_path(digest)
    assert target == store.path / "cas" / digest.hex()[:2] / digest.hex()
    assert target.read_bytes() == source.read_bytes()
    assert store.has_blob(digest)
    assert store.get_blob(digest) == source.read_bytes()
    assert target.stat().st_mode & 0o222 == 0  # read-only
    assert [p.name for p in target.parent.iterdir()] == [digest.hex()]  # no temp file left behind


def test_store_external_is_idempotent(store: Store, large: tuple[Path, bytes]) -> None:
    source, digest = large
    store.store_external(digest, source)
    inode = store.external_path(digest).stat().st_ino
    store.store_external(digest, source)
    assert store.external_path(digest).stat().st_ino == inode


def test_store_external_rejects_a_wrong_digest(store: Store, large: tuple[Path, bytes]) -> None:
    source, _ = large
    wrong = hash_bytes(b"not the content")
    with pytest.raises(ChecksumMismatch):
        store.store_external(wrong, source)
    assert not store.external_path(wrong).exists()
    assert list(store.external_path(wrong).parent.iterdir()) == []  # the temp file was removed


def test_missing_external_file_raises_checksum_mismatch(store: Store,
                                                        large: tuple[Path, bytes]) -> None:
    source, digest = large
    store.store_external(digest, source)
    store.commit(blobs=[(digest, None)])
    store.external_path(digest).unlink()
    with pytest.raises(ChecksumMismatch, match="is missing"):
        store.get_blob(digest)


def test_corrupt_external_file_raises_checksum_mismatch(store: Store,
                                                        large: tuple[Path, bytes]) -> None:
    source, digest = large
    store.store_external(digest, source)
    store.commit(blobs=[(digest, None)])
    target = store.external_path(digest)
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="hashes to"):
        store.get_blob(digest)


# -- metadata and format
# ------------------------------------------------------------------------------------


def test_store_of_another_format_is_refused(tmp_path: Path) -> None:
    first = Store(tmp_path / "s")
    with first._env.begin(write=True) as txn:
        txn.put(b"format", b"999", db=first._meta)
    first.close()
    with pytest.raises(PartialState, match="has format 999"):
        Store(tmp_path / "s")


def test_build_payloads_are_stored_in_page_sized_chunks_and_read_back_whole(store: Store) -> None:
    payload = os.urandom(5 * PAYLOAD_CHUNK + 17)
    digest = hash_bytes(payload)
    first = store.begin_build(BuildRow.of({"patterns": ["//..."]}), [(digest, payload)])
    # stored once
    second = store.begin_build(BuildRow.of({"patterns": ["//..."]}), [(digest, payload)])
    assert (first, second) == (1, 2)
    assert store.journal_blob(digest) == payload
    with store._env.begin() as txn:
        rows = list(txn.cursor(db=store._journal_blobs))
    assert [key for key, _ in rows] == [digest + i.to_bytes(4, "big") for i in range(6)]
    assert all(len(value) <= PAYLOAD_CHUNK for _, value in rows)
    assert store.journal_blob(hash_bytes(b"never stored")) is None


def test_a_payload_stored_whole_by_an_earlier_version_still_reads(store: Store) -> None:
    payload, other = b"graph entry" * 1000, b"another" * 10
    with store._env.begin(write=True) as txn:
        txn.put(hash_bytes(payload), payload, db=store._journal_blobs)
    store.begin_build(BuildRow.of({}), [(hash_bytes(other), other), (hash_bytes(payload), payload)])
    assert store.journal_blob(hash_bytes(payload)) == payload
    assert store.journal_blob(hash_bytes(other)) == other


def test_a_corrupt_payload_chunk_raises_checksum_mismatch(store: Store) -> None:
    payload = os.urandom(3 * PAYLOAD_CHUNK)
    digest = hash_bytes(payload)
    store.begin_build(BuildRow.of({}), [(digest, payload)])
    with store._env.begin(write=True) as txn:
        txn.put(digest + (1).to_bytes(4, "big"), b"x" * PAYLOAD_CHUNK, db=store._journal_blobs)
    with pytest.raises(ChecksumMismatch):
        store.journal_blob(digest)


def test_a_read_does_not_keep_freed_pages_from_being_reused(store: Store) -> None:
    # a build reads the store between commits made by its workers; a snapshot kept open across
    # those commits would make every commit's copy-on-write pages new ones, growing the file
    store.get_memo("src/a.txt")
    for index in range(600):
        data = index.to_bytes(4, "big") * 300
        store.commit(blobs=[(hash_bytes(data), data)], memo=[(f"src/{index % 7}.txt", MEMO)],
                     used=[(KEY, index)])
    with store._env.begin() as txn:
        used = sum(txn.stat(db)["leaf_pages"] + txn.stat(db)["branch_pages"] + txn.stat(
            db)["overflow_pages"]
                   for db in (store._blobs, store._memo, store._usage))
    allocated = store._env.info()["last_pgno"]
    assert allocated < 2 * used + 50, (allocated, used)


# -- build rows and their chain (recordchain.py) -------------------------------------------------

def _finished(**fields: object) -> BuildRow:
    return BuildRow.of({"started": "2026-01-01T00:00:00+00:00", "status": "finished",
                        "patterns": ["//..."], **fields})


def _chain_problems(store: Store) -> list[str]:
    from posbuild.engine.fsck import record_chain_problems

    return [str(p) for p in record_chain_problems(store)]


def test_concluded_builds_are_sealed_one_after_the_other(store: Store) -> None:
    from posbuild.store.recordchain import GENESIS, records_digest, seal

    first = store.begin_build(_finished())
    second = store.begin_build(_finished(status="running"))
    store.commit(records=[(second.to_bytes(8, "big") + bytes(4), "//p:t", b"record")])
    store.update_build(second, {"ended": "2026-01-01T00:00:01+00:00"})
    rows = {row.number: row for row in store.builds()}
    assert rows[first].chain[0] == 0 and rows[second].chain[0] == first
    body = {k: v for k, v in rows[second].fields().items() if k != "chain"}
    previous = seal(GENESIS, {k: v for k, v in rows[first].fields().items() if k != "chain"},
                    records_digest([]))
    assert rows[second].chain[1] == seal(previous, body, records_digest(
        [(second.to_bytes(8, "big") + bytes(4), b"record")]))
    assert store.chain_meta() == {"head": [second, rows[second].chain[1]], "running": []}
    assert _chain_problems(store) == []


def test_a_running_build_is_not_sealed_and_not_a_problem(store: Store) -> None:
    number = store.begin_build(_finished(status="running"))
    assert store.builds()[0].chain is None and store.chain_meta()["running"] == [number]
    assert store.build_running(number)
    assert _chain_problems(store) == []
    store.update_build(number, {})
    assert store.builds()[0].status == "finished" and not store.build_running(number)


def test_closing_the_store_records_its_unconcluded_build_as_interrupted(tmp_path: Path) -> None:
    opened = Store(tmp_path / "store")
    number = opened.begin_build(_finished(status="running"))
    started = opened.start_log(number)
    started("//p:done")
    started("//p:slow")
    opened.commit(records=[(number.to_bytes(8, "big") + bytes(4), "//p:done", _record("//p:done"))])
    opened.close()
    again = Store(tmp_path / "store")
    try:
        [row] = again.builds()
        assert row.status == "interrupted" and [label for label, _ in row.in_flight] == ["//p:slow"]
        assert _chain_problems(again) == [] and again.chain_meta()["running"] == []
        assert not (tmp_path / "store" / "running" / str(number)).exists()
    finally:
        again.close()


def _record(label: str) -> bytes:
    from posbuild.core.records import ExecutionRecord, RecordState

    return ExecutionRecord("1", label, RecordState.SUCCESS, None, "", "", 0.0, (), (), (), None, 0,
                           "", b"").pack()


KILLED_OWNER = """
import os, signal, sys
from pathlib import Path
from posbuild.core.records import BuildRow
from posbuild.store.lmdbstore import Store
store = Store(Path(sys.argv[1]))
number = store.begin_build(BuildRow.of({"started": "x", "status": "running", "patterns": []}))
store.start_log(number)("//p:slow")
print(number, flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


def test_a_build_whose_process_was_killed_is_settled_by_the_next_store_user(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    alive = subprocess.Popen([sys.executable, "-c", KILLED_OWNER, str(path), "wait"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    number = int(alive.stdout.readline())  # type: ignore[union-attr]
    store = Store(path)
    try:
        assert store.settle_interrupted() == []  # its owner still holds the lock
        assert store.builds()[0].status == "running"
        alive.kill()
        alive.wait()
        assert store.settle_interrupted() == [number]
        row = store.builds()[0]
        assert row.status == "interrupted" and [label for label, _ in row.in_flight] == ["//p:slow"]
        dead = subprocess.run([sys.executable, "-c", KILLED_OWNER, str(path), "die"],
                              capture_output=True, text=True, env=env)
        killed = int(dead.stdout)
        assert store.begin_build(_finished()) == killed + 1  # the next build settles it first
        assert [r.status for r in store.builds()] == ["interrupted", "interrupted", "finished"]
        assert _chain_problems(store) == []
    finally:
        store.close()


def test_a_store_written_before_the_chain_starts_one_at_its_next_build(store: Store) -> None:
    import msgpack

    # a row as earlier versions wrote it: no status, no seal
    with store._env.begin(write=True) as txn:
        txn.put((1).to_bytes(8, "big"), msgpack.packb({"started": "x", "ended": "y", "number": 1}),
                db=store._builds)
    number = store.begin_build(_finished())
    assert number == 2 and store.builds()[1].chain[0] == 0  # the genesis of this store's chain
    assert _chain_problems(store) == []


def test_generations_name_their_workspace_and_rows_written_before_still_read(store: Store) -> None:
    import msgpack

    from posbuild.core.records import Generation

    legacy = msgpack.packb([1, "2024-01-01T00:00:00", ["//..."], b"\x01" * 32, 2, 10])
    assert Generation.unpack(legacy) == Generation(1, "2024-01-01T00:00:00", ("//...",),
                                                   b"\x01" * 32, 2, 10, "")
    own = store.add_generation("t1", ("//...",), b"m1", 1, 1)
    shared = store.add_generation("t2", ("//a/...",), b"m2", 1, 1, "/ws/two")
    assert [g.workspace for g in store.generations()] == ["", "/ws/two"]
    assert store.latest_generation() == own and store.latest_generation("/ws/two") == shared
    assert store.latest_generation("/ws/three") is None


def test_a_store_without_an_epoch_gets_one_when_opened(tmp_path):
    """A store from before epochs: states saved against it named none, so until it has one they
    would trust it even after it was deleted and recreated (epoch.py)."""
    from posbuild.store.epoch import EPOCH_FILE, read_epoch
    from posbuild.store.lmdbstore import Store

    Store(tmp_path / "s").close()
    created = read_epoch(tmp_path / "s")
    assert created
    (tmp_path / "s" / EPOCH_FILE).unlink()
    Store(tmp_path / "s").close()
    assert read_epoch(tmp_path / "s") not in (b"", created)
    again = read_epoch(tmp_path / "s")
    Store(tmp_path / "s").close()
    assert read_epoch(tmp_path / "s") == again  # opening a store that has one changes nothing


def test_build_rows_keep_the_bytes_a_dict_gave_them(store: Store) -> None:
    """BuildRow writes a row field for field in the order a dict update put them, so rows (and the
    seals over them) are byte for byte what earlier versions wrote."""
    import msgpack

    from posbuild.store.recordchain import GENESIS, records_digest, seal

    info = {"started": "s", "status": "running", "patterns": ["//..."], "env_hash": b"e" * 32,
            "graph": None,
            "state": None, "actions": 2, "up_to_date": [1], "allow_env_drift": False,
            "verify": True, "passed_env": [["A", "1"]]}
    changes = {"ended": "e", "counts": {"cached": 1, "executed": 1, "failed": 0}, "failed": 0,
               "skipped": 0}
    number = store.begin_build(BuildRow.of(info))
    store.update_build(number, changes)
    refused = {"started": "s", "status": "refused", "patterns": [], "ended": "e",
               "error": "ORCH-07", "message": "m"}
    second = store.begin_build(BuildRow.of(refused))
    first_row = {**info, "number": number, "pid": os.getpid(), **changes, "status": "finished"}
    first_seal = seal(GENESIS, first_row, records_digest([]))
    second_row = {**refused, "number": second}
    expected = [msgpack.packb({**first_row, "chain": [0, first_seal]}, use_bin_type=True),
                msgpack.packb({**second_row,
                               "chain": [number, seal(first_seal, second_row, records_digest([]))]},
                              use_bin_type=True)]
    assert [value for _, value in store.raw_builds()] == expected
    assert [BuildRow.unpack(value).pack() for value in expected] == expected


def test_rows_of_an_existing_store_still_read_and_verify(store: Store) -> None:
    """Rows an earlier version sealed, with fields this version does not know, read as BuildRows,
    pack back to the same bytes, and the chain over them and a new build still verifies."""
    import msgpack

    from posbuild.store.recordchain import GENESIS, records_digest, seal

    old = {"started": "s", "status": "finished", "patterns": ["//a"], "ended": "e",
           "future": {"x": 1}, "number": 1}
    sealed = msgpack.packb({**old, "chain": [0, seal(GENESIS, old, records_digest([]))]},
                           use_bin_type=True)
    with store._env.begin(write=True) as txn:
        txn.put((1).to_bytes(8, "big"), sealed, db=store._builds)
        chain = {"head": [1, msgpack.unpackb(sealed)["chain"][1]], "running": []}
        txn.put(b"records", msgpack.packb(chain, use_bin_type=True), db=store._meta)
    [row] = store.builds()
    assert (row.number, row.patterns, row.concluded(), row.pack()) == (1, ["//a"], True, sealed)
    assert store.begin_build(_finished()) == 2
    assert store.raw_builds()[0] == (1, sealed) and _chain_problems(store) == []
