"""The stat memo: a file is hashed once per stat signature, and racy files are never memoised."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

import posbuild.engine.filestate as filestate
from posbuild.core.digest import hash_bytes
from posbuild.engine.filestate import RACY_WINDOW_NS, FileStates
from posbuild.core.records import UNSETTLED, signature
from posbuild.store.lmdbstore import Store

# A fixed, old modification time for files; `files` gives a clock far enough after their ctime
# (the real time they were written: the kernel sets it) that they are not racy.
T0 = 1_600_000_000_000_000_000


def ctime(path: Path) -> int:
    return path.stat().st_ctime_ns


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store")
    yield opened
    opened.close()


def write(root: Path, rel: str, content: bytes, mtime_ns: int = T0) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def files(root: Path, store: Store, now: int | None = None) -> FileStates:
    """File states read at `now`; by default well after any file a test has written so far (read
    when called: a suite on a busy machine runs long after this module was imported)."""
    later = time.time_ns() + 1_000 * RACY_WINDOW_NS if now is None else now
    return FileStates(root, store, clock_ns=lambda: later)


def forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: object) -> bytes:
        raise AssertionError(f"file content was read: {path}")

    monkeypatch.setattr(filestate, "hash_file", refuse)


def memoise(fs: FileStates, store: Store) -> None:
    store.commit(memo=fs.take_pending())


def test_first_lookup_hashes_the_file(root: Path, store: Store) -> None:
    write(root, "a.txt", b"alpha")
    fs = files(root, store)
    assert fs.state("a.txt").digest == hash_bytes(b"alpha")
    assert fs.hashed == 1


def test_state_carries_the_current_signature(root: Path, store: Store) -> None:
    path = write(root, "a.txt", b"alpha")
    state = files(root, store).state("a.txt")
    assert state.signature == signature(os.stat(path))
    assert state.signature[0] == T0


def test_repeated_lookup_in_one_build_hashes_once(root: Path, store: Store) -> None:
    write(root, "a.txt", b"alpha")
    fs = files(root, store)
    first = fs.state("a.txt")
    assert fs.state("a.txt") is first
    assert fs.hashed == 1


def test_take_pending_returns_learned_rows_sorted_then_clears(root: Path, store: Store) -> None:
    write(root, "b.txt", b"beta")
    write(root, "a.txt", b"alpha")
    fs = files(root, store)
    fs.state("b.txt").digest
    fs.state("a.txt").digest
    rows = fs.take_pending()
    assert [(path, state.digest) for path, state in rows] == [
        ("a.txt", hash_bytes(b"alpha")),
        ("b.txt", hash_bytes(b"beta")),
    ]
    assert fs.take_pending() == []


def test_memoised_unchanged_file_is_not_read(root: Path, store: Store,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write(root, "pkg/a.txt", b"alpha")
    first = files(root, store)
    digest = first.state("pkg/a.txt").digest
    memoise(first, store)

    forbid_hashing(monkeypatch)
    second = files(root, store)
    assert second.state("pkg/a.txt").digest == digest
    assert second.hashed == 0
    assert second.take_pending() == []


def test_memo_survives_reopening_the_store(tmp_path: Path, root: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    write(root, "a.txt", b"alpha")
    store = Store(tmp_path / "store2")
    first = files(root, store)
    digest = first.state("a.txt").digest
    memoise(first, store)
    store.close()

    forbid_hashing(monkeypatch)
    reopened = Store(tmp_path / "store2")
    try:
        second = files(root, reopened)
        assert second.state("a.txt").digest == digest
        assert second.hashed == 0
    finally:
        reopened.close()


def test_touched_file_is_rehashed_with_same_digest(root: Path, store: Store) -> None:
    path = write(root, "a.txt", b"alpha")
    first = files(root, store)
    digest = first.state("a.txt").digest
    memoise(first, store)

    os.utime(path, ns=(T0 + 5 * RACY_WINDOW_NS, T0 + 5 * RACY_WINDOW_NS))
    second = files(root, store)
    assert second.state("a.txt").digest == digest
    assert second.hashed == 1
    (row,) = second.take_pending()
    assert row[0] == "a.txt"
    assert row[1].signature[0] == T0 + 5 * RACY_WINDOW_NS


def test_changed_content_gives_new_digest(root: Path, store: Store) -> None:
    write(root, "a.txt", b"alpha")
    first = files(root, store)
    old = first.state("a.txt").digest
    memoise(first, store)

    write(root, "a.txt", b"omega!", mtime_ns=T0 + 5 * RACY_WINDOW_NS)
    second = files(root, store)
    new = second.state("a.txt").digest
    assert new == hash_bytes(b"omega!")
    assert new != old
    assert second.hashed == 1


def test_same_size_rewrite_with_restored_mtime_is_still_detected(root: Path, store: Store) -> None:
    """mtime and size alone would miss this edit; the ctime in the signature catches it."""
    write(root, "a.txt", b"alpha")
    first = files(root, store)
    first.state("a.txt").digest
    memoise(first, store)

    write(root, "a.txt", b"ALPHA", mtime_ns=T0)  # same size, same mtime, new content
    second = files(root, store)
    assert second.state("a.txt").digest == hash_bytes(b"ALPHA")


@pytest.mark.parametrize("age", [0, 1, RACY_WINDOW_NS // 2, RACY_WINDOW_NS - 1])
def test_racy_file_is_used_but_not_memoised(root: Path, store: Store, age: int) -> None:
    path = write(root, "a.txt", b"alpha")
    first = files(root, store, now=ctime(path) + age)
    assert first.state("a.txt").digest == hash_bytes(b"alpha")
    assert first.hashed == 1
    assert first.take_pending() == []
    memoise(first, store)
    assert store.get_memo("a.txt") is None

    second = files(root, store)  # the next build must hash that file again
    assert second.state("a.txt").digest == hash_bytes(b"alpha")
    assert second.hashed == 1


def test_file_older_than_racy_window_is_memoised(root: Path, store: Store) -> None:
    path = write(root, "a.txt", b"alpha")
    fs = files(root, store, now=ctime(path) + RACY_WINDOW_NS + 1)
    fs.state("a.txt").digest
    memoise(fs, store)
    memo = store.get_memo("a.txt")
    assert memo is not None
    assert memo.digest == hash_bytes(b"alpha")


def test_missing_file_raises_file_not_found(root: Path, store: Store) -> None:
    with pytest.raises(FileNotFoundError):
        files(root, store).state("nope.txt")


def test_unchanged_is_true_for_untouched_file(root: Path, store: Store) -> None:
    write(root, "a.txt", b"alpha")
    fs = files(root, store)
    assert fs.unchanged("a.txt", fs.state("a.txt").signature)


def test_unchanged_detects_modification(root: Path, store: Store) -> None:
    write(root, "a.txt", b"alpha")
    fs = files(root, store)
    sig = fs.state("a.txt").signature
    write(root, "a.txt", b"alpha and more", mtime_ns=T0 + 1)
    assert not fs.unchanged("a.txt", sig)


def test_unchanged_detects_same_size_modification_with_restored_mtime(root: Path,
                                                                      store: Store) -> None:
    write(root, "a.txt", b"alpha")
    fs = files(root, store)
    sig = fs.state("a.txt").signature
    write(root, "a.txt", b"ALPHA", mtime_ns=T0)
    assert not fs.unchanged("a.txt", sig)


def test_unchanged_detects_deletion(root: Path, store: Store) -> None:
    path = write(root, "a.txt", b"alpha")
    fs = files(root, store)
    sig = fs.state("a.txt").signature
    path.unlink()
    assert not fs.unchanged("a.txt", sig)


class _Clock:
    """A settable clock, so one FileStates can see a file first as racy, then as aged."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_racy_file_is_memoised_at_the_end_of_the_build_once_it_has_aged(root: Path,
                                                                        store: Store) -> None:
    path = write(root, "a.txt", b"fresh\n")
    clock = _Clock(ctime(path) + RACY_WINDOW_NS // 2)
    fs = FileStates(root, store, clock_ns=clock)
    digest = fs.state("a.txt").digest
    assert fs.take_pending() == [] and fs.recorded("a.txt").signature == UNSETTLED
    clock.now = ctime(path) + 2 * RACY_WINDOW_NS
    fs.settle_racy()
    assert [(p, s.digest) for p, s in fs.take_pending()] == [("a.txt", digest)]
    assert fs.recorded("a.txt") == fs.state("a.txt")


def test_racy_file_rewritten_in_the_same_tick_is_not_memoised(root: Path, store: Store) -> None:
    path = write(root, "a.txt", b"first\n")
    clock = _Clock(ctime(path) + RACY_WINDOW_NS // 2)
    fs = FileStates(root, store, clock_ns=clock)
    fs.state("a.txt").digest
    path.write_bytes(b"other\n")  # same size, and the mtime is put back: same signature
    os.utime(path, ns=(T0, T0))
    os.utime(path, ns=(T0, T0))
    clock.now = ctime(path) + 2 * RACY_WINDOW_NS
    fs.settle_racy()
    assert fs.take_pending() == []
    assert fs.recorded("a.txt").signature == UNSETTLED


def test_an_old_mtime_put_back_on_fresh_bytes_is_still_racy(root: Path, store: Store) -> None:
    """`cp -p`, tar and the Nix store (mtime 1) write bytes now and set an old mtime: the age that
    counts is the ctime's, or a same-size rewrite within the same tick would keep a stale digest."""
    path = write(root, "a.txt", b"alpha", mtime_ns=1_000_000_000)
    fs = files(root, store, now=ctime(path) + RACY_WINDOW_NS // 2)
    assert fs.state("a.txt").digest == hash_bytes(b"alpha")
    assert fs.take_pending() == [] and fs.recorded("a.txt").signature == UNSETTLED
