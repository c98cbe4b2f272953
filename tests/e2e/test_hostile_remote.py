"""A hostile remote cache or cache archive costs bounded time and memory: a server that drips one
byte at a time is cut off at the request's deadline, an oversized `/ac/` answer or a `/cas/` blob
longer than its signed result says is refused before it is read whole, and a gzip bomb in `posbuild
cache import` is refused before it is decompressed. Each attack runs for real on 127.0.0.1, and the
memory of the posbuild process is measured (its peak RSS as its parent sees it)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import POSBUILD, Result, Workspace, counts
from hostile_server import CacheServer, drip, drip_headers, flood

KEY = {"POSBUILD_CACHE_KEY": "correct horse battery staple"}
MiB = 1 << 20
BOMB = 512 * MiB  # what each attack offers; the process must stay far below it
BOUND_MB = 200  # peak RSS a posbuild process may reach under attack (about 60 MB normally)

SOURCES = {
    "pkg/raw.txt": "3\n1\n2\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@")
        genrule(name = "report", srcs = [":sorted"], outs = ["report.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "big", srcs = ["raw.txt"], outs = ["big.bin"],
                cmd = "python3 -c 'import sys; open(sys.argv[1], \\"wb\\").write(bytes(range(256)) * 4096)' $@")
    """,  # noqa: E501
}

_MEASURE = """\
import resource, subprocess, sys
proc = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))
sys.stdout.write(proc.stdout)
sys.stderr.write(proc.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr)
sys.exit(proc.returncode)
"""


def measured(ws: Workspace, *args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> tuple[Result, int]:
    """Run `posbuild ARGS` in `ws`; its result and its peak RSS in MB (and that of what it ran)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(timeout), *POSBUILD, *args],
                          cwd=ws.root,
                          env={**os.environ, **KEY, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout + 30)
    *lines, peak = proc.stderr.rstrip("\n").split("\n")
    return Result(proc.returncode, proc.stdout, "\n".join(lines)), int(peak)


@pytest.fixture
def server():
    cache = CacheServer()
    yield cache
    cache.close()


def workspace(base: Path, name: str, url: str, timeout: float = 2) -> Workspace:
    root = base / name
    root.mkdir()
    (root / "posbuild.toml").write_text(f'[cache]\nremote = "{url}"\ntimeout = {timeout}\n')
    ws = Workspace(root)
    ws.write(SOURCES)
    return ws


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


@pytest.mark.parametrize("where", ["body", "headers", "put-reply"])
def test_a_server_that_drips_one_byte_at_a_time_is_cut_off_at_the_deadline(tmp_path, server, where):
    # every read gets its byte well within the timeout
    if where == "put-reply":
        server.put_attack = drip(server, every=0.3)
    else:
        server.attack = drip(server, every=0.3) if where == "body" else drip_headers(server)
    ws = workspace(tmp_path, "a", server.url, timeout=1)
    started = time.monotonic()
    result = ws.build(*(["--remote-upload"] if where == "put-reply" else []), "//...", env=KEY,
                      timeout=40)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert counts(result)["executed"] == 3
    assert elapsed < 15, f"the build took {elapsed:.1f} s"
    [warning] = warnings(result.stderr)
    assert f"remote cache {server.url} is unavailable (timed out: no complete answer within" \
            in warning


def test_a_dripping_blob_download_is_cut_off_too(tmp_path, server):
    a = workspace(tmp_path, "a", server.url)
    assert a.build("--remote-upload", "//...", env=KEY).returncode == 0
    server.attack = lambda handler, path: "/cas/" in path and drip(server, every=0.3)(handler, path)
    b = workspace(tmp_path, "b", server.url, timeout=1)
    started = time.monotonic()
    result = b.build("//...", env=KEY, timeout=40)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert b.out("pkg/report.txt").strip() == "3"
    assert "no complete answer within" in result.stderr


@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
def test_an_oversized_action_cache_entry_is_refused_unread(tmp_path, server, framing):
    server.attack = flood(server, BOMB, framing, only="/ac/")
    ws = workspace(tmp_path, "a", server.url)
    result, peak = measured(ws, "build", "//...")
    assert result.returncode == 0, result.stderr
    assert counts(result)["executed"] == 3
    assert peak < BOUND_MB, f"posbuild peaked at {peak} MB"
    assert "larger than an action cache entry may be" in result.stderr


@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
def test_a_blob_longer_than_its_signed_size_is_refused_unread(tmp_path, server, framing):
    a = workspace(tmp_path, "a", server.url)
    assert a.build("--remote-upload", "//...", env=KEY).returncode == 0
    server.attack = flood(server, BOMB, framing, only="/cas/")  # every blob, small and large
    b = workspace(tmp_path, "b", server.url)
    result, peak = measured(b, "build", "//...")
    assert result.returncode == 0, result.stderr
    assert peak < BOUND_MB, f"posbuild peaked at {peak} MB"
    assert "more bytes than the signed result says" in result.stderr
    assert b.out("pkg/sorted.txt") == "1\n2\n3\n"
    assert (b.root / "posbuild-out/pkg/big.bin").stat().st_size == 256 * 4096
    assert not list((b.root / ".posbuild" / "tmp").glob("remote-*"))
    assert b.run("fsck").returncode == 0


class _Zeros(io.RawIOBase):
    """`size` zero bytes, produced as they are read (the bomb is never in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def _bomb(path: Path, member: tarfile.TarInfo, size: int) -> Path:
    """A .tar.gz whose first member is `member`, `size` zero bytes that compress ~1000:1."""
    with tarfile.open(path, "w:gz", compresslevel=1, format=tarfile.GNU_FORMAT) as tar:
        member.size = size
        tar.addfile(member, io.BufferedReader(_Zeros(size), MiB))
    return path


def _importer(tmp_path: Path) -> Workspace:
    root = tmp_path / "b"
    root.mkdir()
    (root / "posbuild.toml").write_text("")
    ws = Workspace(root)
    ws.write(SOURCES)
    assert ws.build("//...").returncode == 0
    return ws


def _assert_bomb_refused(ws: Workspace, archive: Path, detail: str, *flags: str) -> None:
    result, peak = measured(ws, "cache", "import", *flags, str(archive))
    assert peak < BOUND_MB, f"posbuild peaked at {peak} MB"
    assert result.returncode == 13, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"posbuild: ORCH-03 checksum inconsistency: cache archive {archive}")
    assert detail in line and line.endswith("nothing was imported"), line
    assert not list((ws.root / ".posbuild" / "tmp").glob("import-*"))


def test_a_gzip_bomb_manifest_is_refused_before_it_is_decompressed(tmp_path):
    archive = _bomb(tmp_path / "bomb.tar.gz", tarfile.TarInfo("posbuild-cache/manifest"), BOMB)
    assert archive.stat().st_size < 4 * MiB
    _assert_bomb_refused(_importer(tmp_path), archive, "its manifest has 536870912 bytes")


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE],
                         ids=["gnu-longname", "pax-header"])
def test_a_gzip_bomb_in_a_tar_extension_header_is_refused(tmp_path, kind):
    member = tarfile.TarInfo("posbuild-cache/manifest")
    member.type = kind  # tarfile reads such a header's data whole, before the member it describes
    archive = _bomb(tmp_path / "bomb.tar.gz", member, BOMB)
    _assert_bomb_refused(_importer(tmp_path), archive, "not a plain file")


def test_a_gzip_bomb_blob_in_an_unsigned_archive_is_refused(tmp_path):
    import msgpack

    from posbuild.store import cachearchive
    from posbuild.core.digest import hash_bytes

    digest = bytes(32)  # whatever it says: a blob this size must not be written out to find out
    body = msgpack.packb({"patterns": ["//pkg/..."], "build": 1, "results": [],
                          "blobs": [[digest, 1 << 50]]},
                         use_bin_type=True)
    manifest = msgpack.packb([cachearchive.ARCHIVE_FORMAT, cachearchive.MAGIC, hash_bytes(body),
                              body, b""],
                             use_bin_type=True)
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1, format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(cachearchive.MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    ws = _importer(tmp_path)
    env = {"POSBUILD_CACHE_KEY": ""}
    result, peak = measured(ws, "cache", "import", "--allow-unsigned", str(archive), env=env)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"posbuild: cache archive {archive}: its blobs hold {1 << 50} bytes, more than the ")
    assert line.endswith(
        "bytes free in " + str(ws.root / ".posbuild" / "tmp") + "; nothing was imported")
    assert peak < BOUND_MB


def test_small_blobs_beyond_the_memory_budget_wait_in_temp_files(tmp_path, monkeypatch):
    """An import holds at most `_MEMORY_BUDGET` bytes of small blobs in memory; with a budget of
    nothing, every blob goes through a temp file and the store ends up the same."""
    from posbuild.store import cachearchive
    from posbuild.store.lmdbstore import Store

    a = Workspace(tmp_path / "a")
    a.root.mkdir()
    (a.root / "posbuild.toml").write_text("")
    a.write(SOURCES)
    assert a.build("//...").returncode == 0
    archive = tmp_path / "cache.tar.gz"
    assert a.run("cache", "export", str(archive), env=KEY).returncode == 0

    monkeypatch.setattr(cachearchive, "_MEMORY_BUDGET", 0)
    store = Store(tmp_path / "b" / ".posbuild" / "store")
    try:
        report = cachearchive.import_cache(store, archive, tmp_path / "b" / ".posbuild" / "tmp",
                                           KEY["POSBUILD_CACHE_KEY"].encode())
        assert (report.results, report.new_results, report.new_blobs) == (3, 3, 4)
        for key, result in store.iter_results():
            assert all(store.get_blob(d) is not None for d in result.blobs())  # verified as read
    finally:
        store.close()
    assert not list((tmp_path / "b" / ".posbuild" / "tmp").glob("import-*"))
    b = Workspace(tmp_path / "b")
    (b.root / "posbuild.toml").write_text("")
    b.write(SOURCES)
    assert counts(b.ok("//...")) == {"executed": 0, "cached": 3, "failed": 0}


@pytest.mark.parametrize("compression", ["xz", "bz2"])
def test_only_the_forms_export_writes_are_decompressed(tmp_path, compression):
    archive = tmp_path / f"cache.tar.{compression}"
    with tarfile.open(archive, f"w:{compression}") as tar:
        info = tarfile.TarInfo("posbuild-cache/manifest")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"junk"))
    _assert_bomb_refused(_importer(tmp_path), archive, "it is compressed with xz, bzip2 or zstd")
