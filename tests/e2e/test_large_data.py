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
    # the next build touches nothing: no name of the file came or went after it was recorded
    before = out.stat()
    again = ws.ok("//data:count")
    assert counts(again)["executed"] == 0
    after = out.stat()
    assert (after.st_ino, after.st_ctime_ns, after.st_nlink) == \
        (before.st_ino, before.st_ctime_ns, before.st_nlink)


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


def _inode_line(result) -> int:
    """The inode the producer's command printed for its output (`stat -c %i` on stderr)."""
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip().isdigit():
            return int(line.strip())
    raise AssertionError(f"no inode printed:\n{result.stdout}\n{result.stderr}")


ON_DISK = {
    "data/in.bin": "",  # written by the test, large
    "data/BUILD": """
        genrule(name = "copy", srcs = ["in.bin"], outs = ["copy.bin"],
                cmd = "cat $< > $@; pwd >&2; stat -c %i $@ >&2")
    """,
}


def test_an_action_with_inputs_too_large_for_memory_runs_on_disk_and_its_output_is_not_copied(ws):
    ws.write(ON_DISK)
    (ws.root / "data" / "in.bin").write_bytes(b"x" * BIG)
    small_memory = {"POSBUILD_TEST_SANDBOX_MEMORY_FREE": str(BIG)}
    built = ws.build("//data:copy", env=small_memory)
    assert built.returncode == 0, built.stdout + built.stderr
    text = built.stdout + built.stderr
    assert str(ws.root / ".posbuild" / "sandbox") in text, text
    out = ws.root / "posbuild-out" / "data" / "copy.bin"
    # one inode: the file the command wrote is the store's blob and the output
    assert out.stat().st_ino == _inode_line(built)
    assert out.stat().st_nlink == 2
    assert ws.run("fsck").returncode == 0


def test_an_action_that_fits_in_memory_runs_in_the_memory_base(ws):
    ws.write(ON_DISK)
    (ws.root / "data" / "in.bin").write_bytes(b"x" * BIG)
    built = ws.build("//data:copy", env={"POSBUILD_TEST_SANDBOX_MEMORY_FREE": str(1 << 40)})
    assert built.returncode == 0, built.stdout + built.stderr
    assert str(ws.root / ".posbuild" / "sandbox") not in built.stdout + built.stderr


def test_the_last_run_s_output_sizes_send_an_action_to_disk(ws):
    ws.write(PIPELINE)
    ws.ok("//data:big")
    ws.write({"data/BUILD": PIPELINE["data/BUILD"].replace(
        "> $@", "> $@; pwd >&2", 1)})  # a new key: it runs again, knowing its last output size
    built = ws.build("//data:big", env={"POSBUILD_TEST_SANDBOX_MEMORY_FREE": str(BIG)})
    assert built.returncode == 0, built.stdout + built.stderr
    assert str(ws.root / ".posbuild" / "sandbox") in built.stdout + built.stderr


def test_an_edited_shared_output_is_replaced_when_a_new_run_makes_the_same_bytes(ws):
    ws.write(PIPELINE)
    ws.ok("//data:big")
    out = ws.root / "posbuild-out" / "data" / "big.bin"
    os.chmod(out, 0o644)
    with open(out, "r+b") as handle:
        handle.write(b"EDITED")
    # a new key (the command changed) whose run makes the blob's bytes again
    ws.write({"data/BUILD": PIPELINE["data/BUILD"].replace("> $@", "> $@; true", 1)})
    built = ws.ok("//data:count")
    assert counts(built)["executed"] == 2
    assert out.read_bytes() == b"a" * BIG
    assert ws.out("data/count.txt").split() == ["0", str(BIG)]
    assert ws.run("fsck").returncode == 0


def test_making_posbuild_out_writable_then_building_makes_the_shared_file_read_only_again(ws):
    ws.write(PIPELINE)
    ws.ok("//data:big")
    out = ws.root / "posbuild-out" / "data" / "big.bin"
    os.chmod(out, 0o644)  # `chmod -R u+w posbuild-out`: the store's file is the same inode
    again = ws.ok("//data:big")
    assert counts(again)["executed"] == 0
    assert out.stat().st_mode & 0o777 == 0o444 and out.stat().st_nlink == 2
    assert out.read_bytes() == b"a" * BIG
    assert ws.run("fsck").returncode == 0
