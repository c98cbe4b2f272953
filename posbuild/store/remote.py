"""Layer 0: the remote cache — a Bazel-style HTTP cache (GET/PUT `/ac/<hex>`, `/cas/<hex>`) that
several machines share, holding signed action results and the blobs they name.

Design memo
-----------
* **Protocol.** The Bazel HTTP cache protocol, so that any server storing bytes under a path
  serves it (nginx with WebDAV, bazel-remote, a bucket behind a proxy). `/cas/<hex>` holds a blob
  under the lower-case hex SHA-256 of its bytes, as that protocol defines (servers such as
  bazel-remote check it); `/ac/<hex>` holds posbuild's entry for an action key (its BLAKE3 key in
  hex, the 64 characters such servers expect). A 404 is a miss.
* **Trust.** A shared cache is only as trustworthy as its least trustworthy writer, and cache
  poisoning — one writer planting outputs under another's key — is the best-known weakness of shared
  build caches. So every `/ac/` entry is signed: HMAC-SHA256, with the secret `POSBUILD_CACHE_KEY`,
  over the exact bytes of a body that holds the action key itself, the packed ActionResult and the
  SHA-256 name and size of each blob. Binding the action key means an entry copied under another key
  is rejected like a forged one. A reader verifies the signature before it looks inside, then
  fetches each blob by its SHA-256 name and checks both that and the BLAKE3 digest the local store
  will file it under, so wrong bytes never reach the store. An unsigned, wrongly signed, malformed
  or inconsistent entry is a miss: the action runs locally, and one warning names the entry.
* **Availability.** The remote is an optimisation, never a dependency: the first request that
  fails (connection refused, timeout, reset, an unexpected HTTP status) marks it down for the
  rest of the build and emits ONE warning; every later call returns at once. A reused keep-alive
  connection that the server closed while idle is retried once on a fresh one before that.
* **Bounds.** A server may be hostile or broken, so nothing it sends is trusted to end. Every
  request has a deadline for the whole exchange, not only per read (a server that drips one byte
  a second passes any per-read timeout forever): `[cache] timeout`, plus one second per MiB the
  request moves. A watchdog thread shuts the socket of a request still running at its deadline,
  which counts as the remote being down. Every body has a limit before it is read: an `/ac/`
  entry `ENTRY_LIMIT`, a blob the size its signed entry gives it (blobs larger than the inline
  limit stream to a temp file, never into memory), any other answer `_ANSWER_LIMIT`. A body that
  announces or sends more is refused unread and its connection dropped: a rejected entry or
  blob, a miss, one warning.
* **Connections.** `http.client`, one keep-alive connection per thread (lookups and uploads
  happen on the scheduler's worker threads), so no request waits for another's socket.
* **Order of writes.** Blobs first, then the signed result: a reader that finds a result can
  fetch its blobs. A blob is uploaded at most once per process.
* **Secrets.** A result flagged as holding a secret (ActionResult.secret, secrets.py) is never
  written, and an entry carrying one is rejected; the rebuilder neither uploads nor asks for the
  result of any action whose outputs may hold a secret (`secrets.secret_carriers`).
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
import itertools
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping
from urllib.parse import urlsplit

import blake3
import msgpack

from posbuild.core.digest import Digest, keyed_signature
from posbuild.core.records import ActionResult

CACHE_KEY_VARIABLE = "POSBUILD_CACHE_KEY"  # the secret that signs and verifies remote results
ENTRY_FORMAT = 1
SIGNATURE_ALGORITHM = "hmac-sha256"
_SIGNING_CONTEXT = b"posbuild remote action result v1\x00"
_CHUNK = 1 << 20
_HEAD_ABOVE = 64 * 1024  # larger blobs are looked for (HEAD) before they are uploaded
# bytes of an `/ac/` entry: a result and its blob names (~200 bytes per output)
ENTRY_LIMIT = 16 << 20
_ANSWER_LIMIT = 64 * 1024  # bytes read of any other answer (a 404, an error, a reply to PUT)
# a blob whose size its entry does not sign (entries of posbuild before 0.2)
_UNSIZED_LIMIT = 1 << 30
_RATE = 1 << 20  # bytes per second a transfer is granted beyond `[cache] timeout`
_RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
              http.client.BadStatusLine)


class _Down(Exception):
    """The remote failed; it has been marked down and the warning has been emitted."""


class _TooLarge(Exception):
    """An answer announced or sent more bytes than its limit; its connection was dropped unread."""


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """A verified `/ac/` entry: the result, and each of its blobs' BLAKE3 digest → (SHA-256 name,
    size; -1 when an entry written before sizes were signed does not say)."""

    result: ActionResult
    names: tuple[tuple[Digest, bytes, int], ...] = field(repr=False)

    def blobs(self) -> Iterator[tuple[Digest, bytes, int]]:
        """(BLAKE3 digest, SHA-256, size or -1 if unknown) of every blob the result names, once
        each, then of every other blob the entry names (the files of its folder outputs)."""
        sizes = {o.digest: o.size for o in self.result.outputs if not o.tree}
        names = {digest: (name, size) for digest, name, size in self.names}
        for digest in dict.fromkeys([*self.result.blobs(), *names]):
            name, size = names[digest]
            yield digest, name, size if size >= 0 else sizes.get(digest, -1)


@dataclass
class RemoteStats:
    """What the remote did for one build, for the closing line."""

    hits: int = 0
    misses: int = 0
    rejected: int = 0
    uploaded: int = 0
    # input files Dask workers read from the remote instead of receiving them
    worker_inputs: int = 0


def sign(secret: bytes, body: bytes) -> bytes:
    """The signature of an entry body: HMAC-SHA256 with the cache key, in posbuild's own context."""
    return keyed_signature(secret, _SIGNING_CONTEXT, body)


def pack_entry(secret: bytes, key: Digest, result: ActionResult,
               names: Mapping[Digest, tuple[bytes, int]]) -> bytes:
    """The bytes stored at `/ac/<key>`: a body binding key, result and blob names and sizes, and its
    signature."""
    body = msgpack.packb([bytes(key), result.pack(), [[d, *names[d]] for d in sorted(names)]],
                         use_bin_type=True)
    return msgpack.packb([ENTRY_FORMAT, SIGNATURE_ALGORITHM, body, sign(secret, body)],
                         use_bin_type=True)


class EntryRejected(Exception):
    """An `/ac/` entry that must not be used; the message says why."""


def unpack_entry(secret: bytes, key: Digest, data: bytes) -> RemoteEntry:
    """Verify and decode an `/ac/` entry; EntryRejected if it is unsigned, forged or
    inconsistent."""
    try:  # the outer list is read before its signature is checked: nothing in it may be large
        outer = msgpack.unpackb(data, max_array_len=4, max_map_len=0, max_str_len=64)
    except Exception:  # noqa: BLE001 - any decoding failure means the same: not an entry of ours
        raise EntryRejected(
            "not a signed posbuild entry (unsigned, or written by another tool)") from None
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
        names = tuple(map(_name_row, pairs))
    except Exception:  # noqa: BLE001 - a signed but undecodable body: a writer of another version
        raise EntryRejected("signed, but its content cannot be read by this posbuild") from None
    if signed_key != key:
        raise EntryRejected(f"signed for another action key ({bytes(signed_key).hex()[:12]}…)")
    if result.secret:
        raise EntryRejected("it holds a secret, which no remote may hold")
    named = {d: (s, size) for d, s, size in names}
    if any(d not in named or len(named[d][0]) != 32 for d in result.blobs()):
        raise EntryRejected("a blob of the result has no SHA-256 name")
    # a folder's size is its files', not its manifest's
    if any(named[o.digest][1] not in (-1, o.size) for o in result.outputs if not o.tree):
        raise EntryRejected("the size of an output differs from the size of its blob")
    return RemoteEntry(result, names)


def _name_row(row: list[Any]) -> tuple[Digest, bytes, int]:
    """(BLAKE3, SHA-256, size) of a signed row; size -1 in entries written before sizes were
    signed."""
    digest, name, *size = row
    if len(size) > 1 or not all(type(s) is int and s >= 0 for s in size):
        raise ValueError("malformed entry")
    return bytes(digest), bytes(name), size[0] if size else -1


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
    """The client of one remote cache for one build; thread-safe, never raises for remote
    failures."""

    def __init__(self, url: str, timeout: float, secret: bytes, upload: bool,
                 warn: Callable[[str], None], inline_limit: int = 256 * 1024) -> None:
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
        self._watchdog = _Watchdog()
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
        """The verified entry for `key`, or None (a miss, a rejected entry, or the remote is
        down)."""
        if not self._secret:  # a keyless client (blobs_only) trusts no entry
            return None
        path = f"/ac/{key.hex()}"
        try:
            status, data = self._call("GET", path, limit=ENTRY_LIMIT)
        except _Down:
            return None
        except _TooLarge as why:
            self._reject(f"entry {path} for {label} rejected: {why}, larger than an action cache "
                         f"entry may be ({ENTRY_LIMIT} bytes); it runs locally")
            return None
        if status == 404:
            self._count("misses")
            return None
        try:
            return unpack_entry(self._secret, key, data or b"")
        except EntryRejected as why:
            self._reject(f"entry {path} for {label} rejected: {why}; it runs locally")
            return None

    def fetch_blob(self, digest: Digest, name: bytes, size: int, label: str,
                   temp_dir: Path) -> bytes | Path | None:
        """A blob's verified bytes (small) or a verified temp file in `temp_dir` (large); None if
        it is missing, wrong or the remote is down. `size` is what the signed entry says (-1: it
        does not say): no more is read. The caller removes a returned temp file."""
        path = f"/cas/{name.hex()}"
        limit = size if size >= 0 else _UNSIZED_LIMIT
        temp: Path | None = None
        if not 0 <= size <= self._inline_limit:
            temp_dir.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=temp_dir, prefix="remote-")
            os.close(fd)
            temp = Path(temp_name)
        keep = False
        try:
            try:
                sink = None if temp is None \
                    else (lambda response, most: _stream_to(response, temp, most))
                status, got = self._call("GET", path, sink=sink, limit=limit)
            except _Down:
                return None
            except _TooLarge as error:
                bound = f"the signed result says it has {size}" if size >= 0 \
                    else f"an unsized blob may have ({limit})"
                self._rejected(f"blob {path} of {label} rejected: {error}, more bytes than {bound}")
                return None
            if status == 404:
                self._rejected(f"blob {path} of {label} is missing from the remote")
                return None
            body = bytes(got) if temp is None else b""
            sums = (blake3.blake3(body).digest(), hashlib.sha256(body).digest()) \
                if temp is None else got
            if sums != (digest, name):
                self._rejected(f"blob {path} of {label} rejected: its bytes hash to "
                               f"{sums[0].hex()}, not {digest.hex()} as the signed result says")
                return None
            if temp is None:
                return body
            # small after all: kept inline
            if size < 0 and temp.stat().st_size <= self._inline_limit:
                return temp.read_bytes()
            keep = True
            return temp
        finally:
            if temp is not None and not keep:
                temp.unlink(missing_ok=True)

    def read_blob(self, name: bytes, digest: Digest, target: Path, size: int = -1) -> str:
        """Stream the blob `/cas/<name>` into the file `target`, checked against its SHA-256 name
        and its BLAKE3 `digest`, reading at most `size` bytes (-1: unknown): "" when it is there,
        else why not (then `target` does not exist). Needs no key: the digests, which the caller
        trusts, are the check."""
        path = f"/cas/{name.hex()}"
        try:
            status, sums = self._call("GET", path, sink=lambda response,
                                      most: _stream_to(response, target, most),
                                      limit=size if size >= 0 else _UNSIZED_LIMIT)
        except _Down:
            target.unlink(missing_ok=True)
            return f"{self.url} is unavailable ({self._why_down})"
        except _TooLarge as why:
            target.unlink(missing_ok=True)
            return f"{path} on {self.url} is too large ({why})"
        if status == 404:
            return f"{path} is missing from {self.url}"
        actual, actual_sha = sums if isinstance(sums, tuple) else (b"", b"")
        if actual != digest or actual_sha != name:
            target.unlink(missing_ok=True)
            return (
                f"{path} on {self.url} holds other bytes (they hash to {actual.hex()}, not "
                f"{digest.hex()})")
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

    def put_entry(self, key: Digest, result: ActionResult, sources: Mapping[Digest, bytes | Path],
                  label: str) -> None:
        """Upload the blobs of `result` (bytes, or a file holding them), then its signed entry.
        A result that holds a secret is never uploaded."""
        if not self.upload or self._down or result.secret:
            return
        try:
            names: dict[Digest, tuple[bytes, int]] = {}
            for digest, source in sources.items():
                names[digest] = sha256_of(source), len(source) if isinstance(source, bytes) \
                    else source.stat().st_size
                self._put_blob(names[digest][0], source)
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

    def _expect_ok(self, method: str, path: str, body: bytes | BinaryIO,
                   size: int | None = None) -> None:
        try:
            status, _ = self._call(method, path, body=body, size=size)
        except _TooLarge:
            status = 0  # a reply to PUT has nothing to say at length
        if not 200 <= status < 300:
            self._mark_down(f"HTTP {status} on {method} {self._prefix}{path}"
                            + ("; does the server accept PUT (WebDAV `dav_methods PUT`)?"
                               if status == 405 else ""))
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

    def _call(self, method: str, path: str, body: bytes | BinaryIO | None = None,
              size: int | None = None,
              sink: Callable[[http.client.HTTPResponse, int], object] | None = None,
              limit: int = _ANSWER_LIMIT) -> tuple[int, Any]:
        """One request, over by its deadline; (status, body or the sink's value for a 200). A 200's
        body may hold `limit` bytes, any other answer's `_ANSWER_LIMIT`. Raises _Down on failure,
        _TooLarge (the connection dropped) when a 200 answer is longer."""
        if self._down:
            raise _Down
        sent = size if size is not None else len(body) if isinstance(body, bytes) else 0
        headers = {"Content-Length": str(sent)} if body is not None else {}
        seconds = self._timeout + (sent + (limit if sink is not None else 0)) / _RATE
        for attempt in (1, 2):
            connection, fresh = self._connection()
            token = self._watchdog.arm(connection, seconds)
            try:
                try:
                    connection.request(method, self._prefix + path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = self._answer(response, method, sink, limit)
                finally:
                    late = self._watchdog.disarm(token)
                if late:
                    raise TimeoutError
                if response.will_close:
                    self._drop()
                if method != "PUT" and response.status not in (200, 404):
                    self._mark_down(f"HTTP {response.status} on {method} {self._prefix}{path}")
                    raise _Down
                return response.status, data
            except (_Down, _TooLarge):
                raise
            except _RETRYABLE as error:
                self._drop()
                if fresh or attempt == 2 or late:
                    self._mark_down(f"timed out: no complete answer within {seconds:g} s"
                                    if late else _describe(error))
                    raise _Down from None
                if hasattr(body, "seek"):
                    body.seek(0)  # type: ignore[union-attr]
            except (OSError, http.client.HTTPException) as error:
                self._drop()
                self._mark_down(f"timed out: no complete answer within {seconds:g} s"
                                if late else _describe(error))
                raise _Down from None
        raise AssertionError("unreachable")

    def _answer(self, response: http.client.HTTPResponse, method: str,
                sink: Callable[[http.client.HTTPResponse, int], object] | None,
                limit: int) -> object:
        """The body of a response, read no further than its limit (see `_call`)."""
        if response.status != 200 or method != "GET":
            data = response.read(_ANSWER_LIMIT + 1)
            if len(data) > _ANSWER_LIMIT or not response.isclosed():
                # the rest of a long answer is never read: the connection cannot be reused
                self._drop()
            return data
        if response.length is not None and response.length > limit:
            self._drop()
            raise _TooLarge(f"the remote announced {response.length} bytes")
        try:
            return sink(response, limit) if sink is not None else _read_at_most(response, limit)
        except _TooLarge:
            self._drop()
            raise

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

    def _rejected(self, why: str) -> None:
        """Warn that a blob is not used, and count it; the action runs locally."""
        self._reject(f"{why}; it runs locally")

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
        self._watchdog.stop()


class _Watchdog:
    """Shuts down the socket of every request still running at its deadline.

    Socket timeouts bound each read, not a request: a server that sends one byte a second keeps
    every read short and the request alive forever. One thread per client holds the deadlines of
    the requests in flight (at most one per worker thread) and ends those that pass theirs; the
    blocked read then fails and `_call` reports the deadline.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._armed: dict[int, tuple[float, http.client.HTTPConnection]] = {}
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, connection: http.client.HTTPConnection, seconds: float) -> int:
        """Watch a request on `connection` that must be over in `seconds`; the token disarms it."""
        with self._changed:
            token = next(self._tokens)
            self._armed[token] = (time.monotonic() + seconds, connection)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="posbuild-remote-deadlines",
                                                daemon=True)
                self._thread.start()
            self._changed.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching a request; whether its deadline passed first (its socket is shut)."""
        with self._changed:
            self._armed.pop(token, None)
            fired = token in self._fired
            self._fired.discard(token)
        return fired

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()

    def _run(self) -> None:
        with self._changed:
            while not self._stopped:
                now = time.monotonic()
                for token, (deadline, connection) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        _shut(connection)
                waits = [deadline - now for deadline, _ in self._armed.values()]
                self._changed.wait(min(waits) if waits else None)


def _shut(connection: http.client.HTTPConnection) -> None:
    """End whatever `connection` is waiting for: its reads return at once."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_at_most(response: http.client.HTTPResponse, limit: int) -> bytes:
    """The whole body, if it has at most `limit` bytes; else _TooLarge."""
    data = response.read(limit + 1)
    if len(data) > limit:
        raise _TooLarge(f"the remote sent more than {limit} bytes")
    _check_complete(response, data)
    return data


def _check_complete(response: http.client.HTTPResponse, data: bytes = b"") -> None:
    """IncompleteRead when the connection ended before the body its Content-Length announced:
    `read(n)` returns what came without saying so, and a cut transfer is the remote going down,
    not a blob with wrong bytes."""
    if response.length:
        raise http.client.IncompleteRead(data, response.length)


def _stream_to(response: http.client.HTTPResponse, path: Path, limit: int) -> tuple[Digest, bytes]:
    """Copy a response body of at most `limit` bytes into `path`, hashing it on the way: (BLAKE3,
    SHA-256); _TooLarge as soon as it is longer."""
    b3, sha = blake3.blake3(), hashlib.sha256()
    written = 0
    with open(path, "wb") as out:
        while chunk := response.read(min(_CHUNK, limit - written + 1)):
            written += len(chunk)
            if written > limit:
                raise _TooLarge(f"the remote sent more than {limit} bytes")
            b3.update(chunk)
            sha.update(chunk)
            out.write(chunk)
    _check_complete(response)
    return b3.digest(), sha.digest()


def _describe(error: BaseException) -> str:
    """A short account of a transport failure for the one warning."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text
