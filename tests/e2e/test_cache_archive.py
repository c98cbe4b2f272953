"""`posbuild cache export|import`: one archive carries a build's results and blobs to a fresh
workspace, which then builds with zero executions; a tampered archive is ORCH-03 and nothing of
it is imported."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import msgpack
import pytest

from conftest import Workspace, counts, executed_labels

KEY = {"POSBUILD_CACHE_KEY": "archive key"}

SOURCES = {
    "pkg/raw.txt": "3\n1\n2\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@; echo sorted")
        genrule(name = "report", srcs = [":sorted"], outs = ["report.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "big", srcs = ["raw.txt"], outs = ["big.bin"],
                cmd = "python3 -c 'import sys; open(sys.argv[1], \\"wb\\").write(bytes(range(256)) * 2048)' $@")
    """,
    "other/BUILD": """
        genrule(name = "x", srcs = [], outs = ["x.txt"], cmd = "echo x > $@")
    """,
}


def fresh(base: Path, name: str) -> Workspace:
    root = base / name
    root.mkdir()
    (root / "posbuild.toml").write_text("")
    ws = Workspace(root)
    ws.write(SOURCES)
    return ws


def store_files(ws: Workspace) -> dict[str, bytes]:
    """Every file of the store (LMDB's data and cas/; not LMDB's table of readers), to prove an
    import changed nothing."""
    store = ws.root / ".posbuild" / "store"
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def store_rows(ws: Workspace) -> tuple[int, int]:
    """(action results, blobs) in the store."""
    from posbuild.store import Store

    store = Store(ws.root / ".posbuild" / "store")
    try:
        return sum(1 for _ in store.iter_results()), sum(1 for _ in store.iter_blobs())
    finally:
        store.close()


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    a = fresh(tmp_path, "a")
    assert a.build("//pkg/...").returncode == 0
    result = a.run("cache", "export", str(tmp_path / "cache.tar"), "//pkg/...", env=KEY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("exported build 1 (//pkg/...): 3 action result(s), ")
    return tmp_path / "cache.tar"


def test_export_then_import_into_a_fresh_workspace_builds_with_zero_executions(tmp_path, exported):
    b = fresh(tmp_path, "b")
    result = b.run("cache", "import", str(exported), env=KEY)
    assert result.returncode == 0, result.stderr
    assert "imported 3 action result(s) (3 new)" in result.stdout and "(signature verified)" in result.stdout
    build = b.build("//pkg/...")
    assert counts(build) == {"executed": 0, "cached": 3, "failed": 0}
    assert b.out("pkg/sorted.txt") == "1\n2\n3\n"
    assert (b.root / "posbuild-out/pkg/big.bin").read_bytes() == bytes(range(256)) * 2048
    assert b.run("fsck").returncode == 0
    again = b.run("cache", "import", str(exported), env=KEY)  # merging twice adds nothing
    assert "(0 new)" in again.stdout


def test_the_archive_holds_only_what_the_patterns_last_successful_build_used(tmp_path):
    a = fresh(tmp_path, "a")
    a.build("//other:x")
    a.build("//...")  # a later build of other patterns does not count
    archive = tmp_path / "x.tar.gz"
    result = a.run("cache", "export", str(archive), "//other:x")
    assert result.returncode == 0, result.stderr
    assert "1 action result(s), 2 blob(s)" in result.stdout  # x.txt and the (empty) stderr; stdout "" too
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "posbuild-cache/manifest" and len(names) == 3
    b = fresh(tmp_path, "b")
    assert b.run("cache", "import", str(archive)).returncode == 0
    build = b.build("//...")
    assert executed_labels(build) == ["//pkg:big", "//pkg:report", "//pkg:sorted"]


def test_export_follows_the_latest_successful_build_of_the_patterns(tmp_path):
    a = fresh(tmp_path, "a")
    a.build("//pkg:sorted")
    a.write({"pkg/raw.txt": "5\n4\n"})
    a.build("//pkg:sorted")
    archive = tmp_path / "c.tar"
    a.run("cache", "export", str(archive), "//pkg:sorted")
    b = fresh(tmp_path, "b")
    b.write({"pkg/raw.txt": "5\n4\n"})
    b.run("cache", "import", str(archive))
    assert counts(b.build("//pkg:sorted"))["executed"] == 0
    assert b.out("pkg/sorted.txt") == "4\n5\n"


def test_export_without_a_successful_build(tmp_path):
    a = fresh(tmp_path, "a")
    a.build("//pkg:sorted")
    result = a.run("cache", "export", str(tmp_path / "c.tar"), "//other/...")
    assert result.returncode == 2
    assert result.stderr == ("posbuild: no successful build of //other/... is recorded in this store (builds "
                             "recorded for: //pkg:sorted); run `posbuild build //other/...` first\n")
    assert not (tmp_path / "c.tar").exists()


def test_a_failed_build_is_not_exported(tmp_path):
    a = fresh(tmp_path, "a")
    a.write({"other/BUILD": 'genrule(name = "x", srcs = [], outs = ["x.txt"], cmd = "exit 3")'})
    assert a.build("//other/...").returncode == 1
    assert a.run("cache", "export", str(tmp_path / "c.tar"), "//other/...").returncode == 2


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _member_offset(archive: Path, predicate) -> int:  # type: ignore[no-untyped-def]
    """Where the data of the first member matching `predicate` starts in the (plain) tar file."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if predicate(member):
                return member.offset_data
    raise AssertionError("no such member")


def _assert_refused(b: Workspace, archive: Path, detail: str, env: dict[str, str] | None = None) -> None:
    b.build("//other/...")  # the store exists and holds something
    rows = store_rows(b)
    files = store_files(b)
    result = b.run("cache", "import", str(archive), env=env)
    assert result.returncode == 13, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"posbuild: ORCH-03 checksum inconsistency: cache archive {archive}")
    assert detail in line and line.endswith("nothing was imported")
    assert store_files(b) == files  # the store is byte for byte unchanged
    assert store_rows(b) == rows
    assert not list((b.root / ".posbuild" / "tmp").glob("import-*"))
    assert counts(b.build("//pkg/..."))["executed"] == 3


def test_a_flipped_byte_in_a_blob_is_orch_03_and_nothing_is_imported(tmp_path, exported):
    offset = _member_offset(exported, lambda m: m.size == 512 * 1024)  # big.bin: goes to cas/ files
    _flip(exported, offset + 1000)
    _assert_refused(fresh(tmp_path, "b"), exported, "hashes to", KEY)


def test_a_flipped_byte_in_a_small_blob_is_orch_03(tmp_path, exported):
    offset = _member_offset(exported, lambda m: m.name.startswith("posbuild-cache/blobs/") and 0 < m.size < 100)
    _flip(exported, offset)
    _assert_refused(fresh(tmp_path, "b"), exported, "hashes to", KEY)


def test_a_flipped_byte_in_the_manifest_is_orch_03(tmp_path, exported):
    offset = _member_offset(exported, lambda m: m.name == "posbuild-cache/manifest")
    with tarfile.open(exported) as tar:
        size = tar.getmember("posbuild-cache/manifest").size
    _flip(exported, offset + size - 40)  # inside the body
    _assert_refused(fresh(tmp_path, "b"), exported, "manifest", KEY)


def test_a_flipped_byte_anywhere_in_a_compressed_archive(tmp_path):
    a = fresh(tmp_path, "a")
    a.build("//pkg/...")
    archive = tmp_path / "c.tar.gz"
    assert a.run("cache", "export", str(archive), "//pkg/...").returncode == 0
    _flip(archive, archive.stat().st_size // 2)
    _assert_refused(fresh(tmp_path, "b"), archive, "")


def test_a_result_rewritten_in_the_manifest_with_a_fixed_digest_is_refused_with_the_key(tmp_path, exported):
    """Someone without the key recomputes the manifest digest after changing it: the signature fails."""
    with tarfile.open(exported) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    form, magic, _, body, signature = msgpack.unpackb(members[0][1])
    decoded = msgpack.unpackb(body)
    decoded["results"] = decoded["results"][:1]
    from posbuild.digest import hash_bytes

    new_body = msgpack.packb(decoded, use_bin_type=True)
    manifest = msgpack.packb([form, magic, hash_bytes(new_body), new_body, signature], use_bin_type=True)
    forged = tmp_path / "forged.tar"
    with tarfile.open(forged, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(members[0][0].name)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for member, data in members[1:]:
            tar.addfile(member, io.BytesIO(data))
    _assert_refused(fresh(tmp_path, "b"), forged, "wrong signature", KEY)
    c = fresh(tmp_path, "c")
    env = {k: v for k, v in os.environ.items() if k != "POSBUILD_CACHE_KEY"}
    result = c.run("cache", "import", str(forged), env={**env, "XDG_CONFIG_HOME": str(tmp_path)})
    assert result.returncode == 0  # without the key only the digests can be checked, and they match
    assert "signature is not checked" in result.stderr


def test_an_unsigned_archive_is_refused_when_the_key_is_set(tmp_path):
    a = fresh(tmp_path, "a")
    a.build("//pkg/...")
    archive = tmp_path / "c.tar"
    env = {k: v for k, v in os.environ.items() if k != "POSBUILD_CACHE_KEY"}
    assert a.run("cache", "export", str(archive), "//pkg/...",
                 env={**env, "XDG_CONFIG_HOME": str(tmp_path)}).returncode == 0
    _assert_refused(fresh(tmp_path, "b"), archive, "it is not signed", KEY)


def test_an_archive_signed_with_another_key_is_refused(tmp_path, exported):
    _assert_refused(fresh(tmp_path, "b"), exported, "wrong signature", {"POSBUILD_CACHE_KEY": "other"})


def test_a_truncated_archive_is_refused(tmp_path, exported):
    data = exported.read_bytes()
    exported.write_bytes(data[: len(data) // 2])
    _assert_refused(fresh(tmp_path, "b"), exported, "", KEY)


def test_a_file_that_is_not_an_archive(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello, world\n" * 100)
    _assert_refused(fresh(tmp_path, "b"), junk, "", KEY)


def test_importing_a_missing_file_is_a_usage_error(tmp_path):
    b = fresh(tmp_path, "b")
    result = b.run("cache", "import", str(tmp_path / "nope.tar"))
    assert result.returncode == 2
    assert result.stderr.endswith(f"no cache archive {tmp_path / 'nope.tar'}\n")
