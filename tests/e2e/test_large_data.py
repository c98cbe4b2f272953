"""Large outputs: shared between the store and posbuild-out/ without a second copy, and the store
kept right when a user edits such a file in place; sandboxes move to disk for large data."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import counts

BIG = 3 * 1024 * 1024  # above materialize.SHARE_LIMIT
PIPELINE = {
    "data/BUILD": f"""
        genrule(name = "big", outs = ["big.bin"],
                cmd = "head -c {BIG} /dev/zero | tr '\\\\0' a > $@")
        genrule(name = "count", srcs = [":big"], outs = ["count.txt"],
                cmd = "tr -d a < $< | wc -c > $@; wc -c < $< >> $@")
    """,
}


def _blob_files(ws) -> list[Path]:
    return [p for p in (ws.root / ".posbuild" / "store" / "cas").rglob("*") if p.is_file()]


def test_a_large_output_is_one_file_shared_by_the_store_and_posbuild_out(ws):
    ws.write(PIPELINE)
    ws.ok("//data:count")
    out = ws.root / "posbuild-out" / "data" / "big.bin"
    shared = [p for p in _blob_files(ws) if os.path.samefile(p, out)]
    assert len(shared) == 1, "posbuild-out/ holds a second copy of the blob"
    assert out.stat().st_nlink == 2
    assert out.stat().st_mode & 0o777 == 0o444
    assert ws.out("data/count.txt").split() == ["0", str(BIG)]
    assert ws.run("fsck").returncode == 0


def test_a_small_output_stays_a_copy(ws):
    ws.write({"BUILD": 'genrule(name = "s", outs = ["s.txt"], cmd = "echo hi > $@")'})
    ws.ok("//:s")
    assert (ws.root / "posbuild-out" / "s.txt").stat().st_nlink == 1


def test_an_in_place_edit_of_a_shared_output_never_comes_back_from_the_cache(ws):
    ws.write(PIPELINE)
    ws.ok("//data:count")
    out = ws.root / "posbuild-out" / "data" / "big.bin"
    # what an editor told to write a read-only file anyway does: into the same inode
    os.chmod(out, 0o644)
    with open(out, "r+b") as handle:
        handle.write(b"EDITED")
    again = ws.ok("//data:count")
    assert "was changed in place" in again.stdout + again.stderr
    assert counts(again)["executed"] == 1  # the producer; its consumer's inputs are unchanged
    assert out.read_bytes() == b"a" * BIG
    assert ws.out("data/count.txt").split() == ["0", str(BIG)]
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # the blob file under cas/ is right again and shared again
    assert any(os.path.samefile(p, out) for p in _blob_files(ws))
    assert counts(ws.ok("//data:count"))["executed"] == 0


def test_an_edit_found_by_fsck_is_reported_as_an_edit_through_the_link(ws):
    ws.write(PIPELINE)
    ws.ok("//data:big")
    out = ws.root / "posbuild-out" / "data" / "big.bin"
    os.chmod(out, 0o644)
    with open(out, "r+b") as handle:
        handle.write(b"EDITED")
    fsck = ws.run("fsck")
    assert fsck.returncode == 13, fsck.stdout + fsck.stderr
    assert "hard link" in fsck.stdout + fsck.stderr
    assert ws.run("fsck", "--repair").returncode in (0, 13)
    ws.ok("//data:big")
    assert out.read_bytes() == b"a" * BIG
    assert ws.run("fsck").returncode == 0


def test_clean_then_build_restores_a_large_output_by_link_from_the_verified_blob(ws):
    ws.write(PIPELINE)
    ws.ok("//data:big")
    out = ws.root / "posbuild-out" / "data" / "big.bin"
    out.unlink()
    again = ws.ok("//data:big")
    assert counts(again) == {"executed": 0, "cached": 1, "failed": 0}
    assert out.stat().st_nlink == 2
    assert out.read_bytes() == b"a" * BIG


def test_gc_and_cache_export_keep_linked_blobs_right(ws, tmp_path):
    ws.write(PIPELINE)
    ws.ok("//data:count")
    archive = tmp_path / "cache.tar"
    exported = ws.run("cache", "export", str(archive), "//data:count")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    # a second workspace takes the archive in and restores the large output from it
    other = type(ws)(tmp_path / "other")
    other.root.mkdir()
    other.write({**PIPELINE, "posbuild.toml": ""})
    imported = other.run("cache", "import", str(archive), "--allow-unsigned")  # no key set
    assert imported.returncode == 0, imported.stdout + imported.stderr
    built = other.ok("//data:count")
    assert counts(built)["executed"] == 0
    assert (other.root / "posbuild-out/data/big.bin").read_bytes() == b"a" * BIG
    # gc of everything leaves posbuild-out/ whole and fsck clean
    ws.write({"data/BUILD": 'genrule(name = "s", outs = ["s.txt"], cmd = "echo hi > $@")'})
    ws.ok("//data:s")
    collected = ws.run("gc", "--max-size", "0")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert ws.run("fsck").returncode == 0
