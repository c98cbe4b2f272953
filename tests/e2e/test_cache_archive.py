"""`posbuild cache export|import`: one archive carries a build's results and blobs to a fresh
workspace, which then builds with zero executions; a tampered archive, an unsigned one without
`--allow-unsigned`, and one naming an output path outside posbuild-out/ are refused and nothing
of them is imported."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

from conftest import Workspace, counts, executed_labels

KEY = {"POSBUILD_CACHE_KEY": "archive key"}
KEY_BYTES = KEY["POSBUILD_CACHE_KEY"].encode()

SOURCES = {
    "pkg/raw.txt": "3\n1\n2\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@; echo sorted")
        genrule(name = "report", srcs = [":sorted"], outs = ["report.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "big", srcs = ["raw.txt"], outs = ["big.bin"],
                cmd = "python3 -c 'import sys; open(sys.argv[1], \\"wb\\").write(bytes(range(256)) * 2048)' $@")
    """,  # noqa: E501
    "other/BUILD": """
        genrule(name = "x", srcs = [], outs = ["x.txt"], cmd = "echo x > $@")
    """,
}


@pytest.fixture(autouse=True)
def no_ambient_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No POSBUILD_CACHE_KEY unless a test passes one: not from the environment, and not from a
    secrets file of whoever runs the tests (the default file is looked up in an empty folder)."""
    monkeypatch.delenv("POSBUILD_CACHE_KEY", raising=False)
    monkeypatch.delenv("POSBUILD_SECRETS_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


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
    from posbuild.store.lmdbstore import Store

    store = Store(ws.root / ".posbuild" / "store")
    try:
        return sum(1 for _ in store.iter_results()), sum(1 for _ in store.iter_blobs())
    finally:
        store.close()


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """An archive of //pkg/... signed with KEY."""
    a = fresh(tmp_path, "a")
    assert a.build("//pkg/...").returncode == 0
    result = a.run("cache", "export", str(tmp_path / "cache.tar"), "//pkg/...", env=KEY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("exported build 1 (//pkg/...): 3 action results, ")
    assert ", signed to " in result.stdout and not result.stderr
    return tmp_path / "cache.tar"


@pytest.fixture
def unsigned(tmp_path: Path) -> Path:
    """An archive of //pkg/... exported without the key."""
    a = fresh(tmp_path, "a")
    assert a.build("//pkg/...").returncode == 0
    result = a.run("cache", "export", str(tmp_path / "unsigned.tar"), "//pkg/...")
    assert result.returncode == 0, result.stderr
    return tmp_path / "unsigned.tar"


def test_export_then_import_into_a_fresh_workspace_builds_with_zero_executions(tmp_path, exported):
    b = fresh(tmp_path, "b")
    result = b.run("cache", "import", str(exported), env=KEY)
    assert result.returncode == 0, result.stderr
    assert "imported 3 action results (3 new)" in result.stdout \
            and "(signature verified)" in result.stdout
    assert not result.stderr  # no note: the signature was checked
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
    result = a.run("cache", "export", str(archive), "//other:x", env=KEY)
    assert result.returncode == 0, result.stderr
    # x.txt and the (empty) stderr; stdout "" too
    assert "1 action result, 2 blobs" in result.stdout
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "posbuild-cache/manifest" and len(names) == 3
    b = fresh(tmp_path, "b")
    assert b.run("cache", "import", str(archive), env=KEY).returncode == 0
    build = b.build("//...")
    assert executed_labels(build) == ["//pkg:big", "//pkg:report", "//pkg:sorted"]


def test_export_follows_the_latest_successful_build_of_the_patterns(tmp_path):
    a = fresh(tmp_path, "a")
    a.build("//pkg:sorted")
    a.write({"pkg/raw.txt": "5\n4\n"})
    a.build("//pkg:sorted")
    archive = tmp_path / "c.tar"
    assert a.run("cache", "export", str(archive), "//pkg:sorted", env=KEY).returncode == 0
    b = fresh(tmp_path, "b")
    b.write({"pkg/raw.txt": "5\n4\n"})
    assert b.run("cache", "import", str(archive), env=KEY).returncode == 0
    assert counts(b.build("//pkg:sorted"))["executed"] == 0
    assert b.out("pkg/sorted.txt") == "4\n5\n"


def test_export_without_a_successful_build(tmp_path):
    a = fresh(tmp_path, "a")
    a.build("//pkg:sorted")
    result = a.run("cache", "export", str(tmp_path / "c.tar"), "//other/...")
    assert result.returncode == 2
    assert result.stderr == ("posbuild: no successful build of //other/... is recorded in this "
                             "store (builds recorded for: //pkg:sorted); run `posbuild build "
                             "//other/...` first\n")
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


def _assert_refused(b: Workspace, archive: Path, detail: str, env: dict[str, str] | None = None,
                    flags: tuple[str, ...] = ()) -> None:
    b.build("//other/...")  # the store exists and holds something
    rows = store_rows(b)
    files = store_files(b)
    result = b.run("cache", "import", *flags, str(archive), env=env)
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
    offset = _member_offset(exported, lambda m: m.name.startswith("posbuild-cache/blobs/")
                            and 0 < m.size < 100)
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
    assert a.run("cache", "export", str(archive), "//pkg/...", env=KEY).returncode == 0
    _flip(archive, archive.stat().st_size // 2)
    _assert_refused(fresh(tmp_path, "b"), archive, "", KEY)


def _rewrite(archive: Path, target: Path, change: Callable[[dict[str, Any]], None],
             key: bytes | None = None) -> Path:
    """Copy `archive` to `target` with its manifest body changed by `change` (in place) and the
    manifest digest recomputed, as a forger would. The signature stays the original one (a forger
    without the key) unless `key` is given, which signs the new body as export does (a key
    holder)."""
    from posbuild.store import cachearchive
    from posbuild.core.digest import hash_bytes

    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    form, magic, _, body, signature = msgpack.unpackb(members[0][1])
    decoded = msgpack.unpackb(body)
    change(decoded)
    new_body = msgpack.packb(decoded, use_bin_type=True)
    if key is not None:
        signature = cachearchive._sign(key, new_body)
    manifest = msgpack.packb([form, magic, hash_bytes(new_body), new_body, signature],
                             use_bin_type=True)
    with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(members[0][0].name)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for member, data in members[1:]:
            tar.addfile(member, io.BytesIO(data))
    return target


def test_a_result_rewritten_in_the_manifest_with_a_fixed_digest_is_refused_with_the_key(
    tmp_path, exported):
    """Someone without the key recomputes the manifest digest after changing it: the signature
    fails."""
    forged = _rewrite(exported, tmp_path / "forged.tar",
                      lambda body: body.update(results=body["results"][:1]))
    _assert_refused(fresh(tmp_path, "b"), forged, "wrong signature", KEY)
    c = fresh(tmp_path, "c")
    refused = c.run("cache", "import", str(forged))  # without the key: not without --allow-unsigned
    assert refused.returncode == 2, refused.stderr
    result = c.run("cache", "import", "--allow-unsigned", str(forged))
    # without the key only the digests can be checked, and they match
    assert result.returncode == 0, result.stderr
    assert "signature was not checked" in result.stderr
    assert "imported 1 action result (1 new)" in result.stdout \
            and "signature verified" not in result.stdout


def _escape_sorted_output(keys: list[str]) -> Callable[[dict[str, Any]], None]:
    """A manifest change: the result that writes posbuild-out/pkg/sorted.txt writes
    posbuild-out/../../pwned.txt instead (its key goes to `keys`)."""
    from posbuild.core.records import ActionResult

    def change(body: dict[str, Any]) -> None:
        for entry in body["results"]:
            result = ActionResult.unpack(entry[1])
            if any(o.path.endswith("/sorted.txt") for o in result.outputs):
                outputs = tuple(dataclasses.replace(o, path="posbuild-out/../../pwned.txt")
                                for o in result.outputs)
                entry[1] = dataclasses.replace(result, outputs=outputs).pack()
                keys.append(entry[0].hex())
        assert len(keys) == 1

    return change


def test_an_output_path_outside_posbuild_out_is_orch_03_even_when_signed(tmp_path, exported):
    """A key holder (or a thief of the key) cannot use an archive to write outside posbuild-out/."""
    keys: list[str] = []
    pwned = _rewrite(exported, tmp_path / "pwned.tar", _escape_sorted_output(keys), key=KEY_BYTES)
    detail = f"the result of action key {keys[0]} has output path 'posbuild-out/../../pwned.txt'"
    _assert_refused(fresh(tmp_path, "b"), pwned, detail, KEY)
    # no key: digests, paths
    _assert_refused(fresh(tmp_path, "c"), pwned, detail, flags=("--allow-unsigned",))
    assert not list(tmp_path.rglob("pwned.txt"))


# In-process archives, crafted result by result: every output path import must refuse.

# BIG is above the store's inline limit
SMALL, BIG, OUT = b"x\n", bytes(range(256)) * 1100, b"out\n"
ACTION_KEY = bytes(range(32))


def _output_rows(paths: list[str]) -> list[list[Any]]:
    """A safe big output first (its blob would go to cas/), then one small output per path."""
    from posbuild.core.digest import hash_bytes

    return [["posbuild-out/pkg/big.bin", hash_bytes(BIG), len(BIG), False],
            *([p, hash_bytes(SMALL), len(SMALL), False] for p in paths)]


def _packed_result(rows: list[list[Any]], exit_code: Any = 0) -> bytes:
    from posbuild.core.digest import hash_bytes
    from posbuild.core.records import RESULT_FORMAT

    return msgpack.packb([RESULT_FORMAT, exit_code, hash_bytes(OUT), hash_bytes(b""), rows],
                         use_bin_type=True)


def _craft(target: Path, results: Any, blob_rows: Any = None) -> Path:
    """An archive of `results` (the manifest's list) and the blobs SMALL, BIG, OUT and b"",
    laid out and signed with KEY as export does."""
    from posbuild.store import cachearchive
    from posbuild.core.digest import hash_bytes

    blobs = [SMALL, BIG, OUT, b""]
    body = msgpack.packb({"patterns": ["//pkg/..."], "build": 1, "results": results,
                          "blobs": blob_rows
                          if blob_rows is not None else [[hash_bytes(b), len(b)] for b in blobs]},
                         use_bin_type=True)
    manifest = msgpack.packb([cachearchive.ARCHIVE_FORMAT, cachearchive.MAGIC, hash_bytes(body),
                              body, cachearchive._sign(KEY_BYTES, body)], use_bin_type=True)
    with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as tar:
        members = [(cachearchive.MANIFEST, manifest),
                   *((cachearchive.BLOB_PREFIX + hash_bytes(b).hex(), b) for b in blobs)]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def _import(tmp_path: Path, archive: Path):  # type: ignore[no-untyped-def]
    """import_cache into a new store at tmp_path/store; returns (report or error, (results, blobs,
    cas files))."""
    from posbuild.store.cachearchive import import_cache
    from posbuild.errors import PosbuildError
    from posbuild.store.lmdbstore import Store

    store = Store(tmp_path / "store")
    try:
        try:
            outcome: Any = import_cache(store, archive, tmp_path / "tmp", KEY_BYTES)
        except PosbuildError as error:
            outcome = error
        cas = [p for p in (tmp_path / "store" / "cas").rglob("*") if p.is_file()]
        return outcome, (sum(1 for _ in store.iter_results()), sum(1 for _ in store.iter_blobs()),
                         len(cas))
    finally:
        store.close()


UNSAFE_PATHS = [
    "/etc/passwd",                      # absolute
    "/posbuild-out/x.txt",              # absolute, however much it looks like an output
    "posbuild-out/../x.txt",            # `..` back into the workspace
    "posbuild-out/../../pwned.txt",     # `..` out of the workspace
    "posbuild-out/pkg/../../x.txt",
    "posbuild-out/..",
    "posbuild-out/x/..",
    "posbuild-out/..\\..\\x.txt",       # a backslash is a separator elsewhere
    "posbuild-out/pkg\\x.txt",
    "posbuild-out//x.txt",              # an empty segment
    "posbuild-out/./x.txt",             # a `.` segment
    "posbuild-out/.",
    "posbuild-out/x/",                  # a trailing separator
    "posbuild-out",                     # the output folder itself
    "posbuild-out/",
    "",
    "pkg/x.txt",                        # outside posbuild-out/
    "./posbuild-out/x.txt",
    "../posbuild-out/x.txt",
    "posbuild-outside/x.txt",           # a mere prefix of posbuild-out
    "src/posbuild-out/x.txt",
    "posbuild-out/x\x00.txt",           # NUL
]


@pytest.mark.parametrize("path", UNSAFE_PATHS)
def test_every_unsafe_output_path_is_refused_before_anything_is_written(tmp_path, path):
    from posbuild.errors import ChecksumMismatch

    archive = _craft(tmp_path / "a.tar",
                     [[ACTION_KEY, _packed_result(_output_rows(["posbuild-out/ok.txt", path]))]])
    outcome, contents = _import(tmp_path, archive)
    assert isinstance(outcome, ChecksumMismatch), outcome
    message = str(outcome)
    assert f"the result of action key {ACTION_KEY.hex()} has output path {path!r}, " in message
    assert message.endswith("nothing was imported") and "\n" not in message
    assert contents == (0, 0, 0)  # no result, no blob row, no cas/ file
    assert not list((tmp_path / "tmp").glob("import-*"))


def test_a_path_listed_twice_in_one_result_is_refused(tmp_path):
    from posbuild.errors import ChecksumMismatch

    rows = _output_rows(["posbuild-out/pkg/x.txt", "posbuild-out/pkg/y.txt",
                         "posbuild-out/pkg/x.txt"])
    outcome, contents = _import(tmp_path,
                                _craft(tmp_path / "a.tar", [[ACTION_KEY, _packed_result(rows)]]))
    assert isinstance(outcome, ChecksumMismatch), outcome
    assert "lists output path 'posbuild-out/pkg/x.txt' twice; nothing was imported" in str(outcome)
    assert contents == (0, 0, 0)


def test_safe_output_paths_pass_the_check(tmp_path):
    from posbuild.store.lmdbstore import Store

    paths = ["posbuild-out/.hidden", "posbuild-out/a..b", "posbuild-out/...",
             "posbuild-out/pkg/.x/..y/z.txt",
             "posbuild-out/with space.txt", "posbuild-out/ünïcode.txt",
             "posbuild-out/a/b/c/d/e.txt"]
    archive = _craft(tmp_path / "a.tar", [[ACTION_KEY, _packed_result(_output_rows(paths))]])
    outcome, contents = _import(tmp_path, archive)
    assert outcome.results == 1 and outcome.signed, outcome
    assert contents == (1, 4, 1)  # the result, SMALL BIG OUT b"", BIG in cas/
    store = Store(tmp_path / "store")
    try:
        result = store.get_result(ACTION_KEY)
        assert result is not None \
                and [o.path for o in result.outputs] == ["posbuild-out/pkg/big.bin", *paths]
    finally:
        store.close()


def _bad_types() -> dict[str, tuple[Any, Any, str]]:
    """Manifests crafted with fields of the wrong type: (results, blob rows or None, the
    refusal)."""
    from posbuild.core.digest import hash_bytes

    ok = _output_rows(["posbuild-out/x.txt"])
    small = ["posbuild-out/x.txt", hash_bytes(SMALL), len(SMALL), False]
    unreadable = f"the result of action key {ACTION_KEY.hex()} cannot be read"

    def result(*rows: list[Any], exit_code: Any = 0) -> list[Any]:
        return [[ACTION_KEY, _packed_result([ok[0], *rows], exit_code)]]

    return {
        "path as bytes": (result([b"posbuild-out/x.txt", *small[1:]]), None, unreadable),
        "path as int": (result([7, *small[1:]]), None, unreadable),
        "short digest": (result([small[0], hash_bytes(SMALL)[:31], *small[2:]]), None, unreadable),
        "negative size": (result([*small[:2], -1, False]), None, unreadable),
        "size as text": (result([*small[:2], "2", False]), None, unreadable),
        "executable as int": (result([*small[:3], 1]), None, unreadable),
        "exit code as text": (result(small, exit_code="0"), None, unreadable),
        "result not a pair": ([[ACTION_KEY]], None,
                              "its manifest lists a result that cannot be read"),
        "key not a digest": ([["k", _packed_result(ok)]], None,
                             "its manifest lists a result that cannot be read"),
        "packed result not bytes": ([[ACTION_KEY, "x"]], None,
                                    "its manifest lists a result that cannot be read"),
        "results not a list": ({"k": 1}, None, "its manifest cannot be read"),
        "blob row not a pair": (result(), [[hash_bytes(SMALL)]],
                                "its manifest's list of blobs cannot be read"),
        "blob size negative": (result(), [[hash_bytes(SMALL), -2]],
                               "its manifest's list of blobs cannot be read"),
    }


@pytest.mark.parametrize("case", list(_bad_types()))
def test_a_crafted_manifest_with_fields_of_the_wrong_type_is_orch_03(tmp_path, case):
    """Refused with its own reason (not a crash, and not only because some later check happens to
    fail)."""
    from posbuild.errors import ChecksumMismatch

    results, blob_rows, reason = _bad_types()[case]
    outcome, contents = _import(tmp_path, _craft(tmp_path / "a.tar", results, blob_rows))
    assert isinstance(outcome, ChecksumMismatch), outcome
    assert str(outcome).endswith(f": {reason}; nothing was imported")
    assert contents == (0, 0, 0)


# Signatures: without POSBUILD_CACHE_KEY nothing is imported unless --allow-unsigned says so.

def test_export_without_the_key_says_unsigned_and_how_to_import_it(tmp_path):
    a = fresh(tmp_path, "a")
    a.build("//pkg/...")
    archive = tmp_path / "c.tar"
    result = a.run("cache", "export", str(archive), "//pkg/...")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("exported build 1 (//pkg/...): 3 action results, ")
    assert f", unsigned to {archive}" in result.stdout and ", signed" not in result.stdout
    assert result.stderr.splitlines() == [
        "posbuild: note: POSBUILD_CACHE_KEY is not set, so the archive is unsigned; importing it "
        f"will need `posbuild cache import --allow-unsigned {archive}`"]


def test_without_the_key_import_needs_allow_unsigned(tmp_path, unsigned):
    b = fresh(tmp_path, "b")
    b.build("//other/...")
    rows, files = store_rows(b), store_files(b)
    result = b.run("cache", "import", str(unsigned))
    assert result.returncode == 2
    assert result.stderr == (f"posbuild: cannot verify who made the cache archive {unsigned}: "
                             "POSBUILD_CACHE_KEY is not set; set it to the key the archive was "
                             "exported with, or pass --allow-unsigned to trust it with only its "
                             "digests checked; nothing was imported\n")
    assert not result.stdout
    assert store_files(b) == files and store_rows(b) == rows
    # refused before the archive is read: not ORCH-03 for a damaged file
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive\n")
    assert b.run("cache", "import", str(junk)).returncode == 2

    result = b.run("cache", "import", "--allow-unsigned", str(unsigned))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported 3 action results (3 new)") \
            and "signature verified" not in result.stdout
    assert result.stderr.splitlines() == [
        "posbuild: note: --allow-unsigned: the archive's signature was not checked "
        "(POSBUILD_CACHE_KEY is not set); only its digests were verified"]
    assert counts(b.build("//pkg/..."))["executed"] == 0


def test_allow_unsigned_with_the_key_set_admits_an_unsigned_archive(tmp_path, unsigned):
    b = fresh(tmp_path, "b")
    assert b.run("cache", "import", str(unsigned), env=KEY).returncode == 13  # not without the flag
    result = b.run("cache", "import", "--allow-unsigned", str(unsigned), env=KEY)
    assert result.returncode == 0, result.stderr
    assert "imported 3 action results (3 new)" in result.stdout \
            and "signature verified" not in result.stdout
    assert "signature was not checked (the archive is unsigned)" in result.stderr
    assert counts(b.build("//pkg/..."))["executed"] == 0


def test_allow_unsigned_still_checks_a_signature_it_can_check(tmp_path, exported):
    c = fresh(tmp_path, "c")
    # signed right: verified
    result = c.run("cache", "import", "--allow-unsigned", str(exported), env=KEY)
    assert result.returncode == 0, result.stderr
    assert "(signature verified)" in result.stdout and not result.stderr
    other = {"POSBUILD_CACHE_KEY": "another key"}  # signed wrong: refused even with the flag
    _assert_refused(fresh(tmp_path, "b"), exported, "wrong signature", other,
                    flags=("--allow-unsigned",))


def test_a_secrets_file_that_may_not_be_used_is_a_usage_error_not_a_missing_key(tmp_path, exported):
    secrets = tmp_path / "secrets"
    secrets.write_text("POSBUILD_CACHE_KEY=archive key\n")
    secrets.chmod(0o644)
    env = {"POSBUILD_SECRETS_FILE": str(secrets)}
    b = fresh(tmp_path, "b")
    for args in (("import", str(exported)), ("import", "--allow-unsigned", str(exported)),
                 ("export", str(tmp_path / "out.tar"), "//pkg/...")):
        result = b.run("cache", *args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr == ("posbuild: cannot read POSBUILD_CACHE_KEY: the secrets file "
                                 f"{secrets} has mode "
                                 f"0644; it must be 0600 (chmod 600 {secrets})\n"), args
    assert not (tmp_path / "out.tar").exists()  # not silently exported unsigned
    assert store_rows(b) == (0, 0)

    # `[secrets] file` inside the workspace: the build could read the key
    inside = b.root / "secrets"
    inside.write_text("POSBUILD_CACHE_KEY=archive key\n")
    inside.chmod(0o600)
    (b.root / "posbuild.toml").write_text('[secrets]\nfile = "secrets"\n')
    result = b.run("cache", "import", str(exported))
    assert result.returncode == 2
    assert f"the secrets file {inside} is inside the workspace" in result.stderr
    assert "is not set" not in result.stderr

    (b.root / "posbuild.toml").write_text("")
    secrets.chmod(0o600)  # the same file, usable: its key verifies the archive
    result = b.run("cache", "import", str(exported), env=env)
    assert result.returncode == 0, result.stderr
    assert "(signature verified)" in result.stdout


def test_an_unsigned_archive_is_refused_when_the_key_is_set(tmp_path, unsigned):
    _assert_refused(fresh(tmp_path, "b"), unsigned, "it is not signed", KEY)


def test_an_archive_signed_with_another_key_is_refused(tmp_path, exported):
    _assert_refused(fresh(tmp_path, "b"), exported, "wrong signature",
                    {"POSBUILD_CACHE_KEY": "other"})


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
