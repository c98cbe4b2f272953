"""gc on a real Store: what is pinned, what is garbage, LRU eviction, batches a crash cannot
tear."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import click
import pytest

from posbuild.cli.gc import ByteSize, human
from posbuild.core.digest import Digest, hash_bytes
from posbuild.errors import ChecksumMismatch, UsageError
from posbuild.store.gc import collect, plan_gc, take_inventory
from posbuild.core.records import ActionResult, OutputFile, pack_manifest, unpack_manifest
from posbuild.store.lmdbstore import INLINE_LIMIT, Store

NOW = 1_700_000_000_000_000_000
HOUR = 3600 * 10**9


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store")
    yield opened
    opened.close()


@dataclass(frozen=True)
class Made:
    """An action result committed by a test: its key and every blob it references."""

    key: Digest
    result: ActionResult

    @property
    def blobs(self) -> set[Digest]:
        return {*(o.digest for o in self.result.outputs), self.result.stdout_digest,
                self.result.stderr_digest}


def key_of(name: str) -> Digest:
    return hash_bytes(f"key {name}".encode())


def put(store: Store, name: str, outputs: dict[str, bytes], used: int | None = None,
        log: bytes | None = None) -> Made:
    """Commit a result for action `name`; stdout is unique to it unless `log` is given."""
    stdout = log if log is not None else f"stdout of {name}\n".encode()
    stderr = b""
    blobs = [(hash_bytes(data), data) for data in (*outputs.values(), stdout, stderr)]
    result = ActionResult(
        tuple(OutputFile(f"posbuild-out/{path}", hash_bytes(data), len(data), False)
              for path, data in outputs.items()),
        0, hash_bytes(stdout), hash_bytes(stderr),
    )
    store.commit((key_of(name), result), blobs,
                 used=[(key_of(name), used)] if used is not None else ())
    return Made(key_of(name), result)


def generation(store: Store, *made: Made, extra: dict[str, bytes] | None = None) -> int:
    """Record a generation whose manifest lists the outputs of `made` (and `extra` files, no
    result)."""
    manifest = {o.path: (o.digest, o.size, o.executable) for m in made for o in m.result.outputs}
    for path, data in (extra or {}).items():
        store.commit(blobs=[(hash_bytes(data), data)])
        manifest[f"posbuild-out/{path}"] = (hash_bytes(data), len(data), False)
    return store.add_generation("2024-01-01T00:00:00", ("//...",), pack_manifest(manifest),
                                len(manifest), 0).id


def blob_digests(store: Store) -> set[Digest]:
    return {digest for digest, _ in store.iter_blobs()}


def result_keys(store: Store) -> set[Digest]:
    return {key for key, _ in store.iter_results()}


def total_size(store: Store) -> int:
    return sum(store.blob_size(digest) for digest in blob_digests(store))


def assert_consistent(store: Store) -> None:
    """Every remaining result and generation finds all of its blobs."""
    present = blob_digests(store)
    for key, result in store.iter_results():
        missing = {*(o.digest for o in result.outputs), result.stdout_digest,
                   result.stderr_digest} - present
        assert not missing, f"result {key.hex()} lost blobs"
    for gen in store.generations():
        assert gen.manifest in present
        listed = {digest for digest, _, _ in unpack_manifest(store.get_blob(gen.manifest)).values()}
        assert listed <= present, f"generation {gen.id} lost blobs"


# -- garbage and generations
# -------------------------------------------------------------------------------


def test_unreferenced_blobs_are_garbage_and_referenced_ones_stay(store: Store) -> None:
    kept = put(store, "a", {"p/a.txt": b"alpha\n"})
    store.commit(blobs=[(hash_bytes(b"nobody's"), b"nobody's")])
    generation(store, kept)
    report = collect(store, None, 3, NOW)
    assert report.blobs_removed == 1 and report.results_removed == 0
    assert not store.has_blob(hash_bytes(b"nobody's"))
    assert result_keys(store) == {kept.key}
    assert kept.blobs <= blob_digests(store)
    assert report.bytes_freed == len(b"nobody's")


def test_without_a_bound_unpinned_results_stay(store: Store) -> None:
    old = put(store, "old", {"p/a.txt": b"version 1\n"})
    new = put(store, "new", {"p/a.txt": b"version 2\n"})
    generation(store, new)
    collect(store, None, 3, NOW)
    assert result_keys(store) == {old.key, new.key}
    assert old.blobs <= blob_digests(store)


def test_keep_generations_drops_older_rows_and_their_manifests(store: Store) -> None:
    made = [put(store, f"v{i}", {"p/a.txt": f"version {i}\n".encode()}) for i in range(5)]
    for m in made:
        generation(store, m)
    manifests = [g.manifest for g in store.generations()]
    report = collect(store, None, 2, NOW)
    assert [g.id for g in store.generations()] == [4, 5]
    assert report.generations_removed == 3 and report.generations_kept == 2
    assert not any(store.has_blob(d) for d in manifests[:3])
    assert all(store.has_blob(d) for d in manifests[3:])
    assert result_keys(store) == {m.key for m in made}  # results are evicted only under a bound
    assert_consistent(store)


def test_a_shared_store_keeps_the_newest_generations_of_each_workspace(store: Store) -> None:
    made = [put(store, f"w{i}", {f"p/{i}.txt": f"{i}\n".encode()}) for i in range(4)]
    for workspace, m in zip(("/ws/one", "/ws/one", "/ws/two", "/ws/one"), made):
        manifest = {o.path: (o.digest, o.size, o.executable) for o in m.result.outputs}
        store.add_generation("2024-01-01T00:00:00", ("//...",), pack_manifest(manifest), 1, 0,
                             workspace)
    collect(store, 1, 1, NOW)
    assert [(g.id, g.workspace) for g in store.generations()] == [(3, "/ws/two"), (4, "/ws/one")]
    assert result_keys(store) == {made[2].key, made[3].key}  # pinned by each workspace's latest
    assert store.latest_generation("/ws/two").id == 3 and store.latest_generation("") is None
    assert_consistent(store)


def test_files_only_a_dropped_generation_listed_are_garbage(store: Store) -> None:
    generation(store, extra={"p/untracked.txt": b"no-cache output, old\n"})
    generation(store, extra={"p/untracked.txt": b"no-cache output, new\n"})
    collect(store, None, 1, NOW)
    assert not store.has_blob(hash_bytes(b"no-cache output, old\n"))
    # pinned by the kept manifest, no result needed
    assert store.has_blob(hash_bytes(b"no-cache output, new\n"))


def test_keep_generations_must_be_at_least_one(store: Store) -> None:
    with pytest.raises(UsageError, match="at least 1"):
        collect(store, None, 0, NOW)


def test_an_empty_store_collects_nothing(store: Store) -> None:
    report = collect(store, 0, 3, NOW)
    assert (report.generations_removed, report.results_removed, report.blobs_removed) == (0, 0, 0)
    assert report.size_after == 0 and not report.over_budget


def test_a_missing_manifest_is_orch_03_and_nothing_is_removed(store: Store) -> None:
    made = put(store, "a", {"p/a.txt": b"alpha\n"})
    generation(store, made)
    store.commit(blobs=[(hash_bytes(b"garbage"), b"garbage")])
    store.remove(blobs=[store.latest_generation().manifest])  # type: ignore[union-attr]
    with pytest.raises(ChecksumMismatch, match="manifest of generation 1"):
        collect(store, 0, 3, NOW)
    assert store.has_blob(hash_bytes(b"garbage")) and result_keys(store) == {made.key}


def test_results_with_missing_blobs_are_left_to_fsck(store: Store) -> None:
    broken = put(store, "broken", {"p/b.txt": b"lost\n"})
    store.remove(blobs=[hash_bytes(b"lost\n")])
    collect(store, None, 3, NOW)
    assert result_keys(store) == {broken.key}


# -- pinning and LRU eviction
# ---------------------------------------------------------------------------


def test_pinned_results_survive_any_bound(store: Store) -> None:
    old = put(store, "old", {"p/a.txt": b"version 1\n"}, used=NOW)
    pinned = put(store, "pinned", {"p/a.txt": b"version 2\n", "p/b.txt": b"bee\n"}, used=NOW - HOUR)
    generation(store, pinned)
    report = collect(store, 0, 3, NOW)
    assert result_keys(store) == {pinned.key}
    assert pinned.blobs <= blob_digests(store)  # stdout/stderr stay with the result
    assert not (old.blobs - pinned.blobs) & blob_digests(store)
    assert report.over_budget and report.results_removed == 1
    assert report.pinned_size == report.size_after == total_size(store)


def test_a_result_is_pinned_only_if_every_output_is_in_a_kept_manifest(store: Store) -> None:
    both = put(store, "both", {"p/a.txt": b"A\n", "p/b.txt": b"B\n"})
    half = put(store, "half", {"p/a.txt": b"A\n", "p/b.txt": b"other B\n"})
    moved = put(store, "moved", {"p/elsewhere.txt": b"A\n"})  # same bytes, another path
    generation(store, both)
    collect(store, 0, 3, NOW)
    assert result_keys(store) == {both.key}
    assert store.has_blob(hash_bytes(b"A\n"))  # still listed by the kept manifest
    assert not store.has_blob(hash_bytes(b"other B\n"))
    assert not store.has_blob(half.result.stdout_digest) \
            and not store.has_blob(moved.result.stdout_digest)


def test_results_of_older_kept_generations_are_pinned_too(store: Store) -> None:
    made = [put(store, f"v{i}", {"p/a.txt": f"version {i}\n".encode()}) for i in range(4)]
    for m in made:
        generation(store, m)
    collect(store, 0, 2, NOW)
    assert result_keys(store) == {made[2].key, made[3].key}
    assert_consistent(store)


def test_eviction_follows_least_recent_use_and_stops_at_the_bound(store: Store) -> None:
    # four unpinned results of equal size; keys never used count as oldest
    made = {
        "t3": put(store, "t3", {"p/x.txt": b"x" * 100}, used=NOW - 1 * HOUR),
        "t1": put(store, "t1", {"p/y.txt": b"y" * 100}, used=NOW - 3 * HOUR),
        "never": put(store, "never", {"p/z.txt": b"z" * 100}),
        "t2": put(store, "t2", {"p/w.txt": b"w" * 100}, used=NOW - 2 * HOUR),
    }
    generation(store)
    one = sum(store.blob_size(d) for d in made["t3"].blobs - {hash_bytes(b"")})
    bound = total_size(store) - 2 * one  # exactly two results must go
    report = collect(store, bound, 3, NOW)
    assert result_keys(store) == {made["t3"].key, made["t2"].key}
    assert report.results_removed == 2 and not report.over_budget
    assert report.size_after == total_size(store) <= bound


def test_eviction_stops_as_soon_as_the_store_fits(store: Store) -> None:
    for i in range(10):
        put(store, f"r{i}", {f"p/{i}.txt": bytes([i]) * 1000}, used=NOW - i)
    before = total_size(store)
    report = collect(store, before - 1, 3, NOW)
    assert report.results_removed == 1  # the oldest one, r9, is enough
    assert key_of("r9") not in result_keys(store)
    assert total_size(store) == report.size_after <= before - 1


def test_a_blob_shared_by_two_results_goes_with_the_last_of_them(store: Store) -> None:
    shared = b"shared output\n" * 50
    first = put(store, "first", {"p/a.txt": shared}, used=NOW - 2 * HOUR)
    put(store, "second", {"p/b.txt": shared}, used=NOW - 1 * HOUR)
    put(store, "newest", {"p/c.txt": b"c" * 4000}, used=NOW)
    bound = total_size(store) - store.blob_size(first.result.stdout_digest)
    collect(store, bound, 3, NOW)
    assert result_keys(store) == {key_of("second"), key_of("newest")}
    assert store.has_blob(hash_bytes(shared))
    collect(store, total_size(store) - 1, 3, NOW)
    assert result_keys(store) == {key_of("newest")}
    assert not store.has_blob(hash_bytes(shared))


def test_evicted_blobs_listed_by_a_kept_manifest_stay(store: Store) -> None:
    unpinned = put(store, "unpinned", {"p/a.txt": b"same bytes\n", "p/b.txt": b"not listed\n"})
    generation(store, extra={"p/a.txt": b"same bytes\n"})
    collect(store, 0, 3, NOW)
    assert unpinned.key not in result_keys(store)
    assert store.has_blob(hash_bytes(b"same bytes\n"))
    assert not store.has_blob(hash_bytes(b"not listed\n"))


def test_large_blobs_in_cas_files_are_counted_and_freed(store: Store, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(INLINE_LIMIT + 10))
    digest = hash_bytes(big.read_bytes())
    store.store_external(digest, big)
    result = ActionResult((OutputFile("posbuild-out/p/big.bin", digest, INLINE_LIMIT + 10, False),),
                          0, hash_bytes(b""), hash_bytes(b""))
    store.commit((key_of("big"), result), [(digest, None), (hash_bytes(b""), b"")])
    small = put(store, "small", {"p/s.txt": b"small\n"}, used=NOW)
    report = collect(store, 1000, 3, NOW)
    assert report.results_removed == 1 and report.bytes_freed == INLINE_LIMIT + 10
    assert not store.external_path(digest).exists()
    assert result_keys(store) == {small.key}


def test_orphan_cas_files_go_once_old_enough(store: Store, tmp_path: Path) -> None:
    orphan = store.external_path(hash_bytes(b"orphan"))
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    temp = orphan.parent / ".tmp-interrupted"
    temp.write_bytes(b"half")
    written = os.stat(temp).st_mtime_ns
    # maybe in flight
    assert collect(store, None, 3, written + HOUR // 2, orphan_grace_ns=HOUR).orphans_removed == 0
    assert orphan.exists() and temp.exists()
    report = collect(store, None, 3, written + 2 * HOUR, orphan_grace_ns=HOUR)
    assert report.orphans_removed == 2 and report.bytes_freed == len(b"orphan") + len(b"half")
    assert not orphan.exists() and not temp.exists()


# -- determinism and transactions
# --------------------------------------------------------------------------


def _populate(store: Store, order: list[int]) -> None:
    for i in order:
        put(store, f"r{i}", {f"p/{i % 7}.txt": f"content {i}\n".encode() * 20},
            used=None if i % 3 == 0 else NOW - (i % 4) * HOUR)
    store.commit(blobs=[(hash_bytes(b"loose"), b"loose")])


def test_the_plan_is_deterministic(tmp_path: Path) -> None:
    plans = []
    for name, order in (("a", list(range(40))), ("b", list(reversed(range(40))))):
        opened = Store(tmp_path / name)
        try:
            _populate(opened, order)
            plans.append(plan_gc(take_inventory(opened, 3), 5000, batch_rows=7))
        finally:
            opened.close()
    assert plans[0] == plans[1]
    assert plans[0].results > 0


def test_ties_in_last_use_are_broken_by_key_bytes(store: Store) -> None:
    made = [put(store, f"r{i}", {f"p/{i}.txt": bytes([i]) * 500}) for i in range(6)]
    one = total_size(store) // len(made)
    report = collect(store, total_size(store) - 2 * one, 3, NOW)
    expected_gone = sorted(m.key for m in made)[: report.results_removed]
    assert report.results_removed >= 2
    assert result_keys(store) == {m.key for m in made} - set(expected_gone)


def test_batches_are_bounded_and_every_prefix_is_consistent(
    store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    made = [put(store, f"r{i}", {f"p/{i % 5}.txt": f"v{i}\n".encode() * 30}, used=NOW - i)
            for i in range(30)]
    for m in made[-4:]:
        generation(store, m)
    for i in range(12):
        store.commit(blobs=[(hash_bytes(f"loose {i}".encode()), f"loose {i}".encode())])
    calls: list[int] = []
    original = store.remove

    def checked_remove(**rows):  # type: ignore[no-untyped-def]
        calls.append(sum(len(tuple(v)) for v in rows.values()))
        freed = original(**rows)
        assert_consistent(store)  # what a crash right after this transaction would leave
        return freed

    monkeypatch.setattr(store, "remove", checked_remove)
    report = collect(store, 0, 2, NOW, batch_rows=5)
    assert len(calls) > 5 and max(calls) <= 5 + 3  # one unit (a result and its blobs) may overflow
    assert report.results_removed == 28 and report.generations_removed == 2
    assert result_keys(store) == {made[-1].key, made[-2].key}


# -- the size option
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("1", 1), ("1500", 1500), ("1K", 1024), ("1k", 1024), ("2KB", 2048), ("2kib", 2048),
    ("10M", 10 << 20), ("10MiB", 10 << 20), ("10 mb", 10 << 20), ("3G", 3 << 30), ("3GB", 3 << 30),
    ("1.5G", 3 << 29), ("512B", 512), ("0.5K", 512),
])
def test_size_values(text: str, size: int) -> None:
    assert ByteSize().convert(text, None, None) == size


@pytest.mark.parametrize("text", ["", "x", "-1", "1x", "K", "1KK", "1 K B", "1e3", "1,000"])
def test_bad_size_values_are_usage_errors_naming_the_value(text: str) -> None:
    with pytest.raises(click.BadParameter, match=re.escape(repr(text))):
        ByteSize().convert(text, None, None)


@pytest.mark.parametrize("size, text",
                         [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                        (5 << 20, "5.0 MiB"), (3 << 30, "3.0 GiB"),
                          (2 << 40, "2.0 TiB")])
def test_sizes_for_people(size: int, text: str) -> None:
    assert human(size) == text
