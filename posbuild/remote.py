"""Layer 4: the remote cache — a Bazel-style HTTP cache (GET/PUT `/ac/<hex>`, `/cas/<hex>`) that
several machines share, holding signed action results and the blobs they name.

Design memo
-----------
* **Protocol.** The Bazel HTTP cache protocol, so that any server storing bytes under a path
  serves it (nginx with WebDAV, bazel-remote, a bucket behind a proxy). `/cas/<hex>` holds a blob
  under the lower-case hex SHA-256 of its bytes, as that protocol defines (servers such as
  bazel-remote check it); `/ac/<hex>` holds posbuild's entry for an action key (its BLAKE3 key in
  hex, the 64 characters such servers expect). A 404 is a miss.
* **Trust.** A shared cache is only as trustworthy as its least trustworthy writer, and cache
  poisoning — one writer planting outputs under another's key — is the best-known weakness of
  shared build caches. So every `/ac/` entry is signed: HMAC-SHA256, with the secret
  `POSBUILD_CACHE_KEY`, over the exact bytes of a body that holds the action key itself, the
  packed ActionResult and the SHA-256 name of each blob. Binding the action key means an entry
  copied under another key is rejected like a forged one. A reader verifies the signature before
  it looks inside, then fetches each blob by its SHA-256 name and checks both that and the
  BLAKE3 digest the local store will file it under, so wrong bytes never reach the store. An
  unsigned, wrongly signed, malformed or inconsistent entry is a miss: the action runs locally,
  and one warning names the entry.
* **Availability.** The remote is an optimisation, never a dependency: the first request that
  fails (connection refused, timeout, reset, an unexpected HTTP status) marks it down for the
  rest of the build and emits ONE warning; every later call returns at once. A reused keep-alive
  connection that the server closed while idle is retried once on a fresh one before that.
* **Connections.** `http.client`, one keep-alive connection per thread (lookups and uploads
  happen on the scheduler's worker threads), so no request waits for another's socket.
* **Order of writes.** Blobs first, then the signed result: a reader that finds a result can
  fetch its blobs. A blob is uploaded at most once per process.
* **Blobs without the key.** A `/cas/` blob is checked by its digests, never by a signature, so
  the CAS part needs no secret: `offer_blob` makes sure a Dask action's input is on the remote
  (the building process), and `RemoteCache.blobs_only(url, timeout)` gives a Dask worker a
  keyless client whose `read_blob` fetches it and verifies both digests.

Nothing here touches the local store: the rebuilder decides what to fetch and files it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping
from urllib.parse import urlsplit

import blake3
import msgpack

from posbuild.digest import Digest, keyed_signature
from posbuild.records import ActionResult

CACHE_KEY_VARIABLE = "POSBUILD_CACHE_KEY"  # the secret that signs and verifies remote results
ENTRY_FORMAT = 1
SIGNATURE_ALGORITHM = "hmac-sha256"
_SIGNING_CONTEXT = b"posbuild remote action result v1\x00"
_CHUNK = 1 << 20
_HEAD_ABOVE = 64 * 1024  # larger blobs are looked for (HEAD) before they are uploaded
_RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.BadStatusLine)


class _Down(Exception):
    """The remote failed; it has been marked down and the warning has been emitted."""


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """A verified `/ac/` entry: the result, and each of its blobs' BLAKE3 digest → SHA-256 name."""

    result: ActionResult
    names: tuple[tuple[Digest, bytes], ...] = field(repr=False)

    def blobs(self) -> Iterator[tuple[Digest, bytes, int]]:
        """(BLAKE3 digest, SHA-256, size or -1 if unknown) of every blob the result names, once each."""
        sizes = {o.digest: o.size for o in self.result.outputs}
        names = dict(self.names)
        seen: set[Digest] = set()
        for digest in (*(o.digest for o in self.result.outputs), self.result.stdout_digest, self.result.stderr_digest):
            if digest not in seen:
                seen.add(digest)
                yield digest, names[digest], sizes.get(digest, -1)


@dataclass
class RemoteStats:
    """What the remote did for one build, for the closing line."""

    hits: int = 0
    misses: int = 0
    rejected: int = 0
    uploaded: int = 0
    worker_inputs: int = 0  # input files Dask workers read from the remote instead of receiving them


def sign(secret: bytes, body: bytes) -> bytes:
    """The signature of an entry body: HMAC-SHA256 with the cache key, in posbuild's own context."""
    return keyed_signature(secret, _SIGNING_CONTEXT, body)


def pack_entry(secret: bytes, key: Digest, result: ActionResult, names: Mapping[Digest, bytes]) -> bytes:
    """The bytes stored at `/ac/<key>`: a body binding key, result and blob names, and its signature."""
    body = msgpack.packb([bytes(key), result.pack(), [[d, names[d]] for d in sorted(names)]], use_bin_type=True)
    return msgpack.packb([ENTRY_FORMAT, SIGNATURE_ALGORITHM, body, sign(secret, body)], use_bin_type=True)


class EntryRejected(Exception):
    """An `/ac/` entry that must not be used; the message says why."""


def unpack_entry(secret: bytes, key: Digest, data: bytes) -> RemoteEntry:
    """Verify and decode an `/ac/` entry; EntryRejected if it is unsigned, forged or inconsistent."""
    try:
        outer = msgpack.unpackb(data)
    except Exception:  # noqa: BLE001 - any decoding failure means the same: not an entry of ours
        raise EntryRejected("not a signed posbuild entry (unsigned, or written by another tool)") from None
    if not (isinstance(outer, list) and len(outer) == 4 and outer[0] == ENTRY_FORMAT
            and isinstance(outer[2], bytes) and isinstance(outer[3], bytes)):
        raise EntryRejected("not a signed posbuild entry (unsigned, or written by another tool)")
    if outer[1] != SIGNATURE_ALGORITHM:
        raise EntryRejected(f"unknown signature algorithm {outer[1]!r}")
    body, signature = outer[2], outer[3]
    if not hmac.compare_digest(sign(secret, body), signature):
        raise EntryRejected("wrong signature (written without this POSBUILD_CACHE_KEY, or altered)")
    try:
        signed_key, packed, pairs = msgpack.unpackb(body)
        result = ActionResult.unpack(packed)
        names = tuple((bytes(d), bytes(s)) for d, s in pairs)
    except Exception:  # noqa: BLE001 - a signed but undecodable body: a writer of another version
        raise EntryRejected("signed, but its content cannot be read by this posbuild") from None
    if signed_key != key:
        raise EntryRejected(f"signed for another action key ({bytes(signed_key).hex()[:12]}…)")
    entry = RemoteEntry(result, names)
    named = dict(names)
    needed = {o.digest for o in result.outputs} | {result.stdout_digest, result.stderr_digest}
    if any(d not in named or len(named[d]) != 32 for d in needed):
        raise EntryRejected("a blob of the result has no SHA-256 name")
    return entry


def sha256_of(source: bytes | Path) -> bytes:
    """SHA-256 of bytes or of a file's content (the name `/cas/` uses)."""
    if isinstance(source, bytes):
        return hashlib.sha256(source).digest()
    hasher = hashlib.sha256()
    with open(source, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.digest()


class RemoteCache:
    """The client of one remote cache for one build; thread-safe, never raises for remote failures."""

    def __init__(self, url: str, timeout: float, secret: bytes, upload: bool, warn: Callable[[str], None],
                 inline_limit: int = 256 * 1024) -> None:
        parts = urlsplit(url)
        self.url = url
        self.upload = upload
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._secret = secret
        self._warn = warn
        self._inline_limit = inline_limit
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
        self._uploaded: set[bytes] = set()
        self._down = False
        self._why_down = ""
        self.stats = RemoteStats()

    @classmethod
    def blobs_only(cls, url: str, timeout: float) -> RemoteCache:
        """A client of the CAS alone, without the signing key (a Dask worker's: it reads an action's
        inputs by digest); it warns nobody, `read_blob` says why a read failed."""
        return cls(url, timeout, b"", False, lambda message: None)

    @property
    def down(self) -> bool:
        return self._down

    @property
    def timeout(self) -> float:
        return self._timeout

    # -- reading ---------------------------------------------------------------------------

    def get_entry(self, key: Digest, label: str) -> RemoteEntry | None:
        """The verified entry for `key`, or None (a miss, a rejected entry, or the remote is down)."""
        if not self._secret:  # a keyless client (blobs_only) trusts no entry
            return None
        try:
            status, data = self._call("GET", f"/ac/{key.hex()}")
        except _Down:
            return None
        if status == 404:
            self._count("misses")
            return None
        try:
            return unpack_entry(self._secret, key, data or b"")
        except EntryRejected as why:
            self._reject(f"entry /ac/{key.hex()} for {label} rejected: {why}; it runs locally")
            return None

    def fetch_blob(self, digest: Digest, name: bytes, size: int, label: str, temp_dir: Path) -> bytes | Path | None:
        """A blob's verified bytes (small) or a verified temp file in `temp_dir` (large); None if
        it is missing, wrong or the remote is down. The caller removes a returned temp file."""
        path = f"/cas/{name.hex()}"
        if 0 <= size <= self._inline_limit:
            try:
                status, data = self._call("GET", path)
            except _Down:
                return None
            if status == 404:
                self._reject(f"blob {path} of {label} is missing from the remote; it runs locally")
                return None
            body = data or b""
            actual, actual_sha = blake3.blake3(body).digest(), hashlib.sha256(body).digest()
            got: bytes | Path = body
        else:
            temp_dir.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=temp_dir, prefix="remote-")
            os.close(fd)
            try:
                status, sums = self._call("GET", path, sink=lambda response: _stream_to(response, Path(temp)))
            except _Down:
                os.unlink(temp)
                return None
            if status == 404:
                os.unlink(temp)
                self._reject(f"blob {path} of {label} is missing from the remote; it runs locally")
                return None
            actual, actual_sha = sums if isinstance(sums, tuple) else (b"", b"")
            got = Path(temp)
        if actual != digest or actual_sha != name:
            if isinstance(got, Path):
                os.unlink(got)
            self._reject(f"blob {path} of {label} rejected: its bytes hash to {actual.hex()}, not "
                         f"{digest.hex()} as the signed result says; it runs locally")
            return None
        if isinstance(got, Path) and got.stat().st_size <= self._inline_limit:  # size was not known ahead
            data = got.read_bytes()
            os.unlink(got)
            return data
        return got

    def read_blob(self, name: bytes, digest: Digest, target: Path) -> str:
        """Stream the blob `/cas/<name>` into the file `target`, checked against its SHA-256 name and
        its BLAKE3 `digest`: "" when it is there, else why not (then `target` does not exist).
        Needs no key: the digests, which the caller trusts, are the check."""
        path = f"/cas/{name.hex()}"
        try:
            status, sums = self._call("GET", path, sink=lambda response: _stream_to(response, target))
        except _Down:
            target.unlink(missing_ok=True)
            return f"{self.url} is unavailable ({self._why_down})"
        if status == 404:
            return f"{path} is missing from {self.url}"
        actual, actual_sha = sums if isinstance(sums, tuple) else (b"", b"")
        if actual != digest or actual_sha != name:
            target.unlink(missing_ok=True)
            return f"{path} on {self.url} holds other bytes (they hash to {actual.hex()}, not {digest.hex()})"
        return ""

    # -- writing ---------------------------------------------------------------------------

    def offer_blob(self, name: bytes, source: bytes | Path) -> bool:
        """Whether the blob `/cas/<name>` is on the remote for a Dask worker to read: uploaded first
        when this build writes to the remote, else looked for (HEAD). False when it is absent and
        may not be uploaded, or the remote is down."""
        if self._down:
            return False
        try:
            if self.upload:
                self._put_blob(name, source)
                return True
            with self._lock:
                if name in self._uploaded:
                    return True
            status, _ = self._call("HEAD", f"/cas/{name.hex()}")
        except _Down:
            return False
        except OSError:  # a local file vanished: the caller ships the bytes it holds
            return False
        if status != 200:
            return False
        with self._lock:
            self._uploaded.add(name)
        return True

    def put_entry(self, key: Digest, result: ActionResult, sources: Mapping[Digest, bytes | Path], label: str) -> None:
        """Upload the blobs of `result` (bytes, or a file holding them), then its signed entry."""
        if not self.upload or self._down:
            return
        try:
            names: dict[Digest, bytes] = {}
            for digest, source in sources.items():
                names[digest] = sha256_of(source)
                self._put_blob(names[digest], source)
            self._expect_ok("PUT", f"/ac/{key.hex()}", pack_entry(self._secret, key, result, names))
            self._count("uploaded")
        except _Down:
            return
        except OSError as error:  # a local file vanished: skip this upload, the build goes on
            self._warn(f"posbuild: warning: remote cache: result of {label} not uploaded: {error}")

    def _put_blob(self, name: bytes, source: bytes | Path) -> None:
        with self._lock:
            if name in self._uploaded:
                return
        path = f"/cas/{name.hex()}"
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if size > _HEAD_ABOVE:
            status, _ = self._call("HEAD", path)
            if status == 200:
                with self._lock:
                    self._uploaded.add(name)
                return
        if isinstance(source, bytes):
            self._expect_ok("PUT", path, source)
        else:
            with open(source, "rb") as handle:
                self._expect_ok("PUT", path, handle, size)
        with self._lock:
            self._uploaded.add(name)

    def _expect_ok(self, method: str, path: str, body: object, size: int | None = None) -> None:
        status, _ = self._call(method, path, body=body, size=size)
        if not 200 <= status < 300:
            self._mark_down(f"HTTP {status} on {method} {self._prefix}{path}"
                            + ("; does the server accept PUT (WebDAV `dav_methods PUT`)?" if status == 405 else ""))
            raise _Down

    # -- transport -------------------------------------------------------------------------

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's keep-alive connection, and whether it is new."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, False
        if self._https:
            connection = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection, True

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _call(self, method: str, path: str, body: object = None, size: int | None = None,
              sink: Callable[[http.client.HTTPResponse], object] | None = None) -> tuple[int, object]:
        """One request; (status, body or the sink's value for a 200). Raises _Down on failure."""
        if self._down:
            raise _Down
        headers = {"Content-Length": str(size if size is not None else len(body))} if body is not None else {}
        for attempt in (1, 2):
            connection, fresh = self._connection()
            try:
                connection.request(method, self._prefix + path, body=body, headers=headers)  # type: ignore[arg-type]
                response = connection.getresponse()
                if response.status == 200 and sink is not None:
                    data: object = sink(response)
                else:
                    data = response.read()
                if response.will_close:
                    self._drop()
                if method != "PUT" and response.status not in (200, 404):
                    self._mark_down(f"HTTP {response.status} on {method} {self._prefix}{path}")
                    raise _Down
                return response.status, data
            except _Down:
                raise
            except _RETRYABLE as error:
                self._drop()
                if fresh or attempt == 2:
                    self._mark_down(_describe(error))
                    raise _Down from None
                if hasattr(body, "seek"):
                    body.seek(0)  # type: ignore[union-attr]
            except (OSError, http.client.HTTPException) as error:
                self._drop()
                self._mark_down(_describe(error))
                raise _Down from None
        raise AssertionError("unreachable")

    def _mark_down(self, why: str) -> None:
        with self._lock:
            first = not self._down
            self._down = True
            if first:
                self._why_down = why
        if first:
            self._warn(f"posbuild: warning: remote cache {self.url} is unavailable ({why}); "
                       f"building without it from here on")

    def _reject(self, message: str) -> None:
        self._count("rejected")
        self._warn(f"posbuild: warning: remote cache: {message}")

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def hit(self) -> None:
        """The rebuilder settled an action from this remote."""
        self._count("hits")

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()


def _stream_to(response: http.client.HTTPResponse, path: Path) -> tuple[Digest, bytes]:
    """Copy a response body into `path`, hashing it on the way: (BLAKE3, SHA-256)."""
    b3, sha = blake3.blake3(), hashlib.sha256()
    with open(path, "wb") as out:
        while chunk := response.read(_CHUNK):
            b3.update(chunk)
            sha.update(chunk)
            out.write(chunk)
    return b3.digest(), sha.digest()


def _describe(error: BaseException) -> str:
    """A short account of a transport failure for the one warning."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text
