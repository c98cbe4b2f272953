"""Layer 4: cache archives — move the cache between CI runs as one file (`posbuild cache export`
and `posbuild cache import`).

Design memo
-----------
* **What is exported.** The action results that the patterns' last successful build used (every
  action it executed or found cached, including those it settled by stat alone, as `posbuild log`
  lists them), and every blob those results name: outputs (and the files of folder outputs),
  stdout, stderr. A fresh workspace that
  imports the archive builds those patterns with zero executions. So an archive is whole or not
  written: if gc has removed the result of any cacheable action that build used, export refuses
  and names the actions (a new build executes them again). Actions tagged `no-cache` have no
  result by design; the report counts them.
* **Format.** A tar file (gzip-compressed when the name ends in `.gz` or `.tgz`), readable with
  standard tools. Its first member, `posbuild-cache/manifest`, is msgpack
  `[FORMAT, "posbuild-cache", BLAKE3(body), body, signature]`; the body lists the patterns, the
  build, every (action key, packed result) and every (blob digest, size); a result's folder
  outputs bring their manifests' files along, and import checks that each is there. Then one member
  `posbuild-cache/blobs/<hex>` per blob, in manifest order, so both sides stream: a large data
  set never has to sit in memory.
* **Trust.** Import checks everything before it writes anything: the manifest's digest, each
  blob's BLAKE3 digest and size against its name and the manifest, that every blob a result
  names is in the archive or already in the store, that nothing else is in the archive, and that
  every output path of every result is a normalised relative path under `posbuild-out/` (no `..`,
  no absolute path, no empty or `.` segment, no backslash, no path twice in one result): a result
  is a list of files a later build writes, so one naming `posbuild-out/../../x` would write outside
  the workspace. Any failure is ORCH-03 and nothing is imported.
* **Signatures.** Like the remote cache, import does not trust an unsigned result by default.
  Export signs the manifest with HMAC-SHA256 under the secret `POSBUILD_CACHE_KEY` whenever it is
  set; import then requires a valid signature made with that key (unsigned or wrongly signed is
  ORCH-03), so an archive planted in a shared CI cache by someone without the key is refused.
  Without the key, import refuses to run at all (a usage error: nothing can be verified beyond the
  digests, which anyone can recompute) unless the caller passes `allow_unsigned`, the explicit
  choice to trust the archive's origin. `allow_unsigned` with the key set admits an unsigned
  archive but still checks the signature of a signed one.
* **Bounds.** An archive may be hostile: a few MB of gzip can expand to terabytes. Nothing large
  is decoded before the signature is checked, and nothing is decompressed beyond what a checked
  size allows: a member may only be a plain file (tarfile would read the data of a long-name or
  pax header whole, before the member it describes), the manifest holds at most
  `MANIFEST_LIMIT` bytes and is hashed and its HMAC checked before its body is decoded, each blob
  member must have the size the manifest gives it, and the blobs' total must fit in the free
  space beside the store. Only plain tar and gzip are read, the forms export writes. Blobs are
  kept in memory up to `_MEMORY_BUDGET` bytes in all; the rest wait in temp files.
* **Secrets.** A result flagged as holding a secret (ActionResult.secret), or whose action the
  build's graph shows may hold one (secrets.py), is left out, with every blob only it names;
  the report counts them. A fresh workspace executes those actions with its own secrets.
* **Writing.** Large blobs (above the store's inline limit) are verified into temp files first,
  copied into `cas/` (temp + fsync + rename, before any row names them), then every result and
  small blob goes in ONE store transaction. A crash leaves the store as it was, plus at most some
  orphan `cas/` files that gc removes. Results the store already has are kept as they are.
"""

from __future__ import annotations

import hmac
import io
import os
import shutil
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Literal, Sequence

import blake3
import msgpack

from posbuild.core.words import quantity
from posbuild.core.digest import Digest, hash_bytes, hash_file, keyed_signature
from posbuild.errors import ChecksumMismatch, PosbuildError, UsageError
from posbuild.store.history import records_of_build
from posbuild.core.layout import NO_CACHE_TAG, OUT_DIR
from posbuild.core.records import ActionResult, BuildRow
from posbuild.core.tree import Tree, member_blobs, tree_outputs
from posbuild.store.lmdbstore import INLINE_LIMIT

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import ActionCache, Blobs, BuildLog, Commits

    class ExportStore(Blobs, ActionCache, BuildLog, Protocol):
        """What an export reads: the build log (which build, which results), results and blobs."""

    class ImportStore(Blobs, ActionCache, Commits, Protocol):
        """What an import writes: large blobs as files, results with their blobs, then a flush."""

ARCHIVE_FORMAT = 1
MAGIC = "posbuild-cache"
MANIFEST = f"{MAGIC}/manifest"
BLOB_PREFIX = f"{MAGIC}/blobs/"
_SIGNING_CONTEXT = b"posbuild cache archive v1\x00"
_CHUNK = 1 << 20
MANIFEST_LIMIT = 64 << 20  # bytes: about 250,000 action results
# bytes of small blobs an import holds in memory; the rest wait in temp files
_MEMORY_BUDGET = 64 << 20


@dataclass(frozen=True, slots=True)
class ExportReport:
    build: int
    patterns: tuple[str, ...]
    results: int
    blobs: int
    size: int
    uncacheable: int  # actions tagged no-cache the build ran: they have no result to export
    signed: bool
    private: int  # results left out: they may hold a secret (secrets.py)


@dataclass(frozen=True, slots=True)
class ImportReport:
    results: int
    new_results: int
    blobs: int
    new_blobs: int
    size: int
    # the signature was checked against POSBUILD_CACHE_KEY (False only with allow_unsigned)
    signed: bool


def _sign(secret: bytes, body: bytes) -> bytes:
    return keyed_signature(secret, _SIGNING_CONTEXT, body)


def last_successful_build(store: BuildLog, patterns: Sequence[str]) -> BuildRow:
    """The newest build row of exactly these patterns that finished with nothing failed or
    skipped."""
    wanted = sorted(set(patterns))
    builds = store.builds()
    for build in reversed(builds):
        if sorted(set(build.patterns)) == wanted and build.concluded() and not build.failed \
                and not build.skipped:
            return build
    recorded = sorted({" ".join(sorted(set(b.patterns))) for b in builds if b.ended is not None})
    hint = f" (builds recorded for: {'; '.join(recorded[-5:])})" if recorded else ""
    shown = " ".join(wanted)
    raise UsageError(f"no successful build of {shown} is recorded in this store{hint}; "
                     f"run `posbuild build {shown}` first")


def export_cache(store: ExportStore, patterns: Sequence[str], target: Path,
                 secret: bytes | None) -> ExportReport:
    """Write the results and blobs of the patterns' last successful build to `target`
    (atomically)."""
    build = last_successful_build(store, patterns)
    labels = {r.key: r.label for r in records_of_build(store, build) if r.key
              and r.state.produced()}
    uncacheable, carriers = _graph_facts(store, build)
    results: list[tuple[Digest, bytes]] = []
    blobs: dict[Digest, int] = {}
    gone: list[str] = []
    private = 0
    for key in sorted(labels):
        result = store.get_result(key)
        if labels[key] in carriers or (result is not None and result.secret):
            private += 1
            continue
        if result is None:
            gone.append(labels[key])
            continue
        results.append((key, result.pack()))
        files = [d for d, _ in member_blobs(result, store.get_blob)]
        for digest in (*result.blobs(), *files):
            if digest not in blobs:
                if not store.has_blob(digest):
                    raise ChecksumMismatch(f"blob {digest.hex()} is referenced by an action result "
                                           "but missing from the store; run `posbuild fsck "
                                           "--repair`")
                blobs[digest] = store.blob_size(digest)
    lost = sorted(label for label in gone if label not in uncacheable)
    if lost:
        shown = " ".join(sorted(set(patterns)))
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        raise UsageError(f"the store no longer holds the result of "
                         f"{quantity(len(lost), 'action')} that build {build.number} "
                         f"of {shown} used (gc removed them): {', '.join(lost[:5])}{more}; run "
                         "`posbuild build "
                         f"{shown}` (it executes them again), then export again; nothing was "
                         "exported")
    body = msgpack.packb({"patterns": sorted(set(patterns)), "build": build.number,
                          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "results": [[k, p] for k, p in results],
                          "blobs": [[d, s] for d, s in blobs.items()]},
                         use_bin_type=True)
    manifest = msgpack.packb([ARCHIVE_FORMAT, MAGIC, hash_bytes(body), body,
                              _sign(secret, body) if secret else b""],
                             use_bin_type=True)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(temp, "w:gz" if target.name.endswith((".gz", ".tgz")) else "w",
                          format=tarfile.GNU_FORMAT) as tar:
            _add(tar, MANIFEST, io.BytesIO(manifest), len(manifest))
            for digest, size in blobs.items():
                _add_blob(tar, store, digest, size)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return ExportReport(build.number, tuple(sorted(set(patterns))), len(results), len(blobs),
                        sum(blobs.values()), len(gone), bool(secret), private)


def _graph_facts(store: BuildLog, build: BuildRow) -> tuple[frozenset[str], frozenset[str]]:
    """Labels of the build's actions tagged no-cache, and of those whose outputs may hold a secret,
    read from the graph its row names. A graph this posbuild cannot read (another version wrote
    it) names none: then the results' own flags alone keep secrets out."""
    from posbuild.load.graphcache import actions_of_entry
    from posbuild.workspace.secrets import secret_carriers

    graph = store.journal_blob(build.graph) if build.graph else None
    actions = actions_of_entry(graph or b"")
    return (frozenset(a.label for a in actions if NO_CACHE_TAG in a.tags),
            frozenset(actions[i].label for i in secret_carriers(actions)))


def _add(tar: tarfile.TarFile, name: str, handle: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    tar.addfile(info, handle)


def _add_blob(tar: tarfile.TarFile, store: Blobs, digest: Digest, size: int) -> None:
    """Add one blob, verified: a corrupt store blob must not travel to another machine."""
    source = store.blob_source(digest)
    if isinstance(source, Path):
        if hash_file(source) != digest or source.stat().st_size != size:
            raise ChecksumMismatch(
                f"blob file {source} does not hash to its name; run `posbuild fsck --repair`")
        with open(source, "rb") as handle:
            _add(tar, BLOB_PREFIX + digest.hex(), handle, size)
        return
    data = store.get_blob(digest)  # verified (ORCH-03 on mismatch)
    _add(tar, BLOB_PREFIX + digest.hex(), io.BytesIO(data), len(data))


def import_cache(store: ImportStore, source: Path, temp_dir: Path, secret: bytes | None,
                 allow_unsigned: bool = False) -> ImportReport:
    """Verify the whole archive, then merge its results and blobs into the store in one transaction.

    Without `secret` the archive's origin cannot be checked, so that is refused (UsageError, before
    the archive is read) unless `allow_unsigned` says the caller trusts it; with `secret`, an
    unsigned archive is admitted only with `allow_unsigned`.
    """
    if not source.is_file():
        raise UsageError(f"no cache archive {source}")
    if secret is None and not allow_unsigned:
        raise UsageError(f"cannot verify who made the cache archive {source}: POSBUILD_CACHE_KEY "
                         "is not set; set it to the key the archive was exported with, or pass "
                         "--allow-unsigned to trust it with only its digests checked; nothing was "
                         "imported")
    temp_dir.mkdir(parents=True, exist_ok=True)
    staged = temp_dir / f"import-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        try:
            with tarfile.open(source, _read_mode(source), tarinfo=_PlainMember) as tar:
                body, signed, sizes, small, large = _read_verified(tar, source, staged, secret,
                                                                   allow_unsigned)
        except _NotPlain as error:
            raise _damaged(source, f"member {error} is not a plain file") from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            what = (str(error).splitlines() or [type(error).__name__])[0].rstrip(":")
            raise ChecksumMismatch(
                f"cache archive {source} is damaged ({what}); nothing was imported") from None
        results = _check_results(body, source, sizes, store,
                                 lambda d: _blob_bytes(d, small, large, store))
        new_blobs = [d for d in sizes if not store.has_blob(d)]
        for digest in new_blobs:
            if digest in large:
                store.store_external(digest, large[digest])
        rows = ((d, _inline(small[d]) if d in small else None) for d in new_blobs)
        added = store.add_results(results, rows, time.time_ns())
        store.flush()
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return ImportReport(len(results), added, len(sizes), len(new_blobs),
                        sum(sizes[d] for d in new_blobs), signed)


def _damaged(source: Path, what: str) -> ChecksumMismatch:
    return ChecksumMismatch(f"cache archive {source}: {what}; nothing was imported")


class _NotPlain(Exception):
    """A tar member that is not a plain file; the message names it."""


class _PlainMember(tarfile.TarInfo):
    """A member of a cache archive, which export writes as plain files only. tarfile reads the
    data of a long-name or pax header whole into memory before it yields the member that header
    describes, so any other type is refused from its 512-byte header, before its data is read."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise _NotPlain(f"{self.name[:80]!r} ({self.size} bytes)")
        return super()._proc_member(archive)  # type: ignore[misc]  # tarfile's private hook


def _read_verified(tar: tarfile.TarFile, source: Path, staged: Path, secret: bytes | None,
                   allow_unsigned: bool
                   ) -> tuple[dict[str, Any], bool, dict[Digest, int], dict[Digest, bytes | Path],
                              dict[Digest, Path]]:
    """Read the manifest, then every blob, checking each against its name and the manifest: the
    manifest, whether it was signed, every blob's size, small blobs (bytes, or a temp file beyond
    the memory budget) and large blobs (temp files)."""
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise _damaged(source, f"its first member is not {MANIFEST} (not a posbuild cache archive)")
    if first.size > MANIFEST_LIMIT:
        raise _damaged(source,
                       f"its manifest has {first.size} bytes, more than a manifest may "
                       f"({MANIFEST_LIMIT})")
    body, signed = _manifest(_read_member(tar, first), source, secret, allow_unsigned)
    try:
        expected = {d: s for d, s in body["blobs"]}
        _require(all(_is_digest(d) and type(s) is int and s >= 0 for d, s in expected.items()))
    except Exception:  # noqa: BLE001 - a crafted list must be refused, not crash
        raise _damaged(source, "its manifest's list of blobs cannot be read") from None
    _check_space(source, staged, sum(expected.values()))
    small: dict[Digest, bytes | Path] = {}
    large: dict[Digest, Path] = {}
    in_memory = 0
    # not `for member in tar`: that would yield the manifest again
    while (member := tar.next()) is not None:
        name = member.name
        digest = _blob_name(name)
        if digest is None or digest not in expected or not member.isfile():
            raise _damaged(source, f"unexpected member {name!r}")
        if digest in small or digest in large:
            raise _damaged(source, f"blob {digest.hex()} appears twice")
        if member.size != expected[digest]:
            raise _damaged(source,
                           f"blob {digest.hex()} has {member.size} bytes, the manifest says "
                           f"{expected[digest]}")
        handle = tar.extractfile(member)
        assert handle is not None
        if member.size <= INLINE_LIMIT and in_memory + member.size <= _MEMORY_BUDGET:
            data = handle.read()
            actual = hash_bytes(data)
            small[digest] = data
            in_memory += len(data)
        else:
            path = staged / digest.hex()
            actual = _copy_hashing(handle, path)
            (small if member.size <= INLINE_LIMIT else large)[digest] = path
        if actual != digest:
            raise _damaged(source, f"blob {digest.hex()} hashes to {actual.hex()}")
    absent = [d for d in expected if d not in small and d not in large]
    if absent:
        raise _damaged(source, f"blob {absent[0].hex()} is listed in the manifest but missing")
    return body, signed, expected, small, large


def _read_mode(source: Path) -> Literal["r:gz", "r:"]:
    """Plain tar or gzip, the two forms export writes. No other decompressor is let near an
    archive: xz's, for one, reserves whatever dictionary the file's header asks for."""
    with open(source, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith((b"\xfd7zXZ\x00", b"BZh", b"\x28\xb5\x2f\xfd")):
        raise _damaged(source,
                       "it is compressed with xz, bzip2 or zstd; posbuild reads plain tar and gzip "
                       "archives, "
                               "the forms `posbuild cache export` writes")
    return "r:gz" if magic.startswith(b"\x1f\x8b") else "r:"


def _check_space(source: Path, staged: Path, size: int) -> None:
    """Refuse before decompressing an archive whose blobs would not fit beside the store: a
    manifest's sizes are all an unsigned archive's bytes can be judged by."""
    free = shutil.disk_usage(staged).free
    if size > free:
        raise PosbuildError(f"cache archive {source}: its blobs hold {size} bytes, more than the "
                            f"{free} bytes free in {staged.parent}; nothing was imported")


def _inline(blob: bytes | Path) -> bytes:
    """A small blob's bytes, read back from its temp file when it waited in one."""
    return blob.read_bytes() if isinstance(blob, Path) else blob


def _manifest(data: bytes, source: Path, secret: bytes | None, allow_unsigned: bool
              ) -> tuple[dict[str, Any], bool]:
    """The decoded manifest body, and whether its signature was checked against `secret`."""
    try:  # read before the signature is checked: only a short list of a few strings may come out
        form, magic, digest, body, signature = msgpack.unpackb(data, max_array_len=5, max_map_len=0,
                                                               max_str_len=64)
    except Exception:  # noqa: BLE001 - any decoding failure: the manifest is not what export wrote
        raise _damaged(source, "its manifest cannot be read") from None
    if form != ARCHIVE_FORMAT or magic != MAGIC:
        raise _damaged(source, f"unknown archive format {form!r}")
    if not isinstance(body, bytes) or not _is_digest(digest) or not isinstance(signature, bytes):
        raise _damaged(source, "its manifest cannot be read")
    if hash_bytes(body) != digest:
        raise _damaged(
            source, f"its manifest hashes to {hash_bytes(body).hex()}, not {bytes(digest).hex()}")
    checked = secret is not None and (bool(signature) or not allow_unsigned)
    if secret is not None and checked:
        if not signature:
            raise _damaged(source,
                           "it is not signed, but POSBUILD_CACHE_KEY is set (export it with the "
                           "key, "
                                   "or import it with --allow-unsigned to trust it anyway)")
        if not hmac.compare_digest(_sign(secret, body), signature):
            raise _damaged(source,
                           "wrong signature (made without this POSBUILD_CACHE_KEY, or altered)")
    try:
        decoded = msgpack.unpackb(body)
        _require(isinstance(decoded, dict) and {"results", "blobs"} <= set(decoded))
        _require(isinstance(decoded["results"], list) and isinstance(decoded["blobs"], list))
    except Exception:  # noqa: BLE001
        raise _damaged(source, "its manifest cannot be read") from None
    return decoded, checked


def _blob_bytes(digest: Digest, small: dict[Digest, bytes | Path], large: dict[Digest, Path],
                store: Blobs) -> bytes:
    """A verified blob's bytes, from the archive (already checked) or the store."""
    found = small.get(digest, large.get(digest))
    if found is None:
        return store.get_blob(digest)
    return found if isinstance(found, bytes) else found.read_bytes()


def _check_results(body: dict[str, Any], source: Path, sizes: dict[Digest, int], store: Blobs,
                   blob: Callable[[Digest], bytes]
                   ) -> list[tuple[Digest, bytes]]:
    """Every result decodes, names only safe output paths, and every blob it names is in the
    archive (`sizes`) or in the store."""
    results: list[tuple[Digest, bytes]] = []
    for entry in body["results"]:
        try:
            key, packed = entry
            _require(_is_digest(key) and isinstance(packed, bytes))
        except Exception:  # noqa: BLE001
            raise _damaged(source, "its manifest lists a result that cannot be read") from None
        try:
            result = ActionResult.unpack(packed)
            _check_types(result)
        except Exception:  # noqa: BLE001
            raise _damaged(source, f"the result of action key {key.hex()} cannot be read") from None
        problem = _unsafe_output(result)
        if problem:
            raise _damaged(source, f"the result of action key {key.hex()} {problem}")
        for digest in result.blobs():
            if digest not in sizes and not store.has_blob(digest):
                raise _damaged(source,
                               f"the result of action key {bytes(key).hex()} names blob "
                               f"{digest.hex()}, "
                                       f"which is neither in the archive nor in the store")
        for output in tree_outputs(result):
            try:
                tree = Tree.unpack(blob(output.digest))
            except ValueError as error:
                raise _damaged(source, f"the result of action key {bytes(key).hex()} has a folder "
                               f"output whose manifest is unsound ({error})") from None
            absent = [f for f in tree.files
                      if f.digest not in sizes and not store.has_blob(f.digest)]
            if absent:
                raise _damaged(source, f"the result of action key {bytes(key).hex()} names blob "
                               f"{absent[0].digest.hex()} (file {absent[0].path} of "
                               f"{output.path}), which is neither in the archive nor in the store")
        results.append((bytes(key), bytes(packed)))
    return results


def _require(condition: bool) -> None:
    """Raise ValueError unless `condition`: checks of untrusted input must not be `assert`s,
    which `python -O` removes."""
    if not condition:
        raise ValueError("malformed cache archive")


def _is_digest(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 32


def _check_types(result: ActionResult) -> None:
    """Raise ValueError unless every field has the type export writes: a crafted result must be
    refused here, not crash whoever reads it later."""
    _require(type(result.exit_code) is int)
    _require(all(_is_digest(d) for d in (result.stdout_digest, result.stderr_digest,
                                         *(o.digest for o in result.outputs))))
    for output in result.outputs:
        _require(isinstance(output.path, str) and isinstance(output.executable, bool)
                 and isinstance(output.tree, bool))
        _require(type(output.size) is int and output.size >= 0)


def _unsafe_output(result: ActionResult) -> str:
    """Why one of the result's output paths may not be written ("" if all are safe).

    A later build writes each output at `<workspace>/<path>`, so a path must stay inside
    `posbuild-out/` however it is joined or normalised: relative, `/`-separated, without `..`,
    `.` or empty segments, without backslashes (a separator elsewhere) or NUL, and once only.
    """
    seen: set[str] = set()
    for output in result.outputs:
        path = output.path
        segments = path.split("/")
        if (len(segments) < 2 or segments[0] != OUT_DIR
                or any(s in ("", ".", "..") for s in segments) or "\\" in path or "\x00" in path):
            return (
                f"has output path {path!r}, which is not a normalised relative path under "
                f"{OUT_DIR}/")
        if path in seen:
            return f"lists output path {path!r} twice"
        seen.add(path)
    return ""


def _blob_name(name: str) -> Digest | None:
    if not name.startswith(BLOB_PREFIX):
        return None
    try:
        digest = bytes.fromhex(name[len(BLOB_PREFIX):])
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def _copy_hashing(handle: IO[bytes], path: Path) -> Digest:
    hasher = blake3.blake3()
    with open(path, "wb") as out:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            out.write(chunk)
    return hasher.digest()
