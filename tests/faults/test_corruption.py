"""Corrupted bytes, in the store and in posbuild-out/: `posbuild fsck` names them (ORCH-03), a build
never serves them, and `fsck --repair` plus the next build bring back the right bytes.

Blobs are corrupted behind posbuild's back: inline blobs by rewriting their LMDB row (a row is
b"\\x00" + the bytes), large ones by flipping a byte of their file under cas/.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

from conftest import Workspace, counts, executed_labels
from posbuild.core.digest import hash_bytes
from posbuild.store.lmdbstore import MAP_SIZE

BIG_SIZE = 300_000  # above the store's inline limit, so the blob is a file under cas/
PIPELINE = {
    "pkg/raw.txt": "3\n1\n2\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@")
        genrule(name = "count", srcs = [":sorted"], outs = ["count.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "big", srcs = ["raw.txt"], outs = ["big.bin"],
                cmd = "{ cat $<; head -c %d /dev/zero; } > $@")
    """ % BIG_SIZE,
}
SORTED = b"1\n2\n3\n"
BIG = b"3\n1\n2\n" + bytes(BIG_SIZE)


def flipped(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:]


def corrupt_inline_blob(root: Path, content: bytes) -> str:
    """Rewrite the LMDB row of an inline blob with one byte flipped; returns the digest in hex."""
    digest = hash_bytes(content)
    env = lmdb.open(str(root / ".posbuild/store/db"), map_size=MAP_SIZE, max_dbs=8)
    try:
        blobs = env.open_db(b"blobs")
        with env.begin(write=True) as txn:
            row = txn.get(digest, db=blobs)
            assert row == b"\x00" + content
            txn.put(digest, b"\x00" + flipped(content), db=blobs)
    finally:
        env.close()
    return digest.hex()


def corrupt_file(path: Path, at: int = 0) -> None:
    """Flip one byte of a read-only file in place, keeping its size and inode."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x20]))


def outputs(root: Path) -> dict[str, bytes]:
    out = root / "posbuild-out"
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def fsck_is_clean(ws: Workspace) -> None:
    result = ws.run("fsck")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems" in result.stdout


def _refuses_then_repairs(ws: Workspace, digest: str, corrupted: bytes, action: str) -> None:
    """After `clean`, the build stops with ORCH-03 rather than write `corrupted`; repair,
    rebuild."""
    assert ws.run("clean").returncode == 0
    refused = ws.build("//...")
    assert refused.returncode == 13, refused.stdout + refused.stderr
    assert f"posbuild: ORCH-03 checksum inconsistency: blob {digest} " in refused.stderr
    assert corrupted not in outputs(ws.root).values()

    repaired = ws.run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: removed 1 corrupt blob, 1 action result" in repaired.stdout

    rebuilt = ws.ok("//...")
    assert executed_labels(rebuilt) == [action]
    assert outputs(ws.root) == {"pkg/big.bin": BIG, "pkg/count.txt": b"3\n",
                                "pkg/sorted.txt": SORTED}
    fsck_is_clean(ws)


def test_a_corrupt_inline_blob_is_found_never_served_and_repaired(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    digest = corrupt_inline_blob(ws.root, SORTED)
    found = ws.run("fsck")
    assert found.returncode == 13
    assert f"ORCH-03 blob {digest}: stored bytes hash to {hash_bytes(flipped(SORTED)).hex()}\n" \
            in found.stdout
    assert found.stderr == ("posbuild: ORCH-03 checksum inconsistency: fsck found 1 problem, "
                            "listed above; run `posbuild fsck --repair`\n")
    _refuses_then_repairs(ws, digest, flipped(SORTED), "//pkg:sorted")


def test_a_corrupt_large_blob_file_is_found_never_served_and_repaired(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    digest = hash_bytes(BIG).hex()
    blob_file = ws.root / ".posbuild/store/cas" / digest[:2] / digest
    corrupt_file(blob_file, at=1000)
    found = ws.run("fsck")
    assert found.returncode == 13
    assert f"ORCH-03 blob {digest}: stored bytes hash to {hash_bytes(flipped(BIG, 1000)).hex()}\n" \
            in found.stdout
    _refuses_then_repairs(ws, digest, flipped(BIG, 1000), "//pkg:big")


def test_a_corrupt_output_is_found_and_the_next_build_restores_it_from_the_store(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    corrupt_file(ws.root / "posbuild-out/pkg/sorted.txt")
    found = ws.run("fsck")
    assert found.returncode == 13
    assert ("ORCH-03 output posbuild-out/pkg/sorted.txt: bytes hash to "
            f"{hash_bytes(flipped(SORTED)).hex()}, "
            f"recorded {hash_bytes(SORTED).hex()}\n") in found.stdout
    rebuilt = ws.ok("//...")
    assert counts(rebuilt)["executed"] == 0
    assert ws.out("pkg/sorted.txt") == SORTED.decode()
    fsck_is_clean(ws)


def test_repair_deletes_a_corrupt_output_and_the_next_build_restores_it(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    corrupt_file(ws.root / "posbuild-out/pkg/count.txt")
    repaired = ws.run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: removed 1 file under posbuild-out/" in repaired.stdout
    assert not (ws.root / "posbuild-out/pkg/count.txt").exists()
    fsck_is_clean(ws)
    rebuilt = ws.ok("//...")
    assert counts(rebuilt)["executed"] == 0
    assert ws.out("pkg/count.txt") == "3\n"
    fsck_is_clean(ws)


def test_an_output_replaced_by_another_file_reads_as_partial_state(ws):
    """A file renamed over an output (what a build killed before its commit leaves) is not
    corruption."""
    ws.write(PIPELINE)
    ws.ok("//...")
    target = ws.root / "posbuild-out/pkg/sorted.txt"
    temp = target.with_name("sorted.txt.new")
    temp.write_bytes(b"9\n")
    os.replace(temp, target)
    found = ws.run("fsck")
    assert found.returncode == 16, found.stdout + found.stderr
    assert "ORCH-06 output posbuild-out/pkg/sorted.txt: replaced since posbuild wrote it" \
            in found.stdout
    assert ws.run("fsck", "--repair").returncode == 0
    rebuilt = ws.ok("//...")
    assert counts(rebuilt)["executed"] == 0
    assert ws.out("pkg/sorted.txt") == SORTED.decode()
