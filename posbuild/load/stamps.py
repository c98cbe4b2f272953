"""Layer 0: cheap fingerprints of folders and files, to know when loading must be redone.

A folder's mtime changes whenever an entry is added, removed or renamed in it, which is exactly
when a glob, a source-file lookup or package discovery could see something different. The
workspace root is the exception: posbuild itself creates `posbuild-out/` and `.posbuild/` there,
so the root's stamp is a digest of its entry names without those two.

A stamp holds the ctime beside the mtime, size and inode: a file written in place with the same
size and its mtime put back (`cp -p`, a reproducible tarball, the Nix store's mtime 1) keeps all
three, but the kernel sets its ctime, which no user can. Timestamps are coarse, though: a file
changed twice within one tick keeps its ctime too. So, as git does for its index, a path whose
ctime is not older than the load that stamped it (less `RACY_WINDOW_NS`) is *racy*: its content
digest is recorded as well, and checked on every later use of the stamps.
"""

from __future__ import annotations

import os
import zlib
from typing import Iterable, Mapping

from posbuild.core.digest import hash_bytes, hash_file
from posbuild.core.layout import OUT_DIR, STATE_DIR

MISSING = -1
RACY_WINDOW_NS = 100_000_000  # a timestamp may trail the clock by a tick; slack for loaded machines


def folder_stamp(root: str, rel: str) -> int:
    """The stamp of a workspace folder (`rel` == "" for the root); MISSING if it is gone."""
    try:
        if rel:
            info = os.stat(os.path.join(root, rel))
            return hash((info.st_mtime_ns, info.st_ctime_ns, info.st_ino))
        names = sorted(name for name in os.listdir(root) if name not in (OUT_DIR, STATE_DIR))
    except FileNotFoundError:
        return MISSING
    return zlib.crc32("\0".join(names).encode("utf-8", "surrogateescape")) | (len(names) << 32)


def file_stamp(root: str, rel: str) -> int:
    """The stamp of a BUILD, .bzl or config file: changes with its size, mtime, ctime or inode."""
    try:
        info = os.stat(os.path.join(root, rel))
    except FileNotFoundError:
        return MISSING
    return hash((info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino))


def racy_digests(root: str, paths: Iterable[str], since_ns: int,
                 known: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """The content digest of every path (file or folder, not the root) changed at or after
    `since_ns` - RACY_WINDOW_NS, when loading began: its stamp alone cannot tell a later change
    in the same tick. `known` holds digests of what the load actually read (a change during the
    load is then seen too); the others are hashed now."""
    found = {}
    for rel in paths:
        try:
            changed = os.stat(os.path.join(root, rel)).st_ctime_ns
        except OSError:
            continue
        if rel and changed >= since_ns - RACY_WINDOW_NS:
            found[rel] = (known or {}).get(rel) or content_digest(root, rel)
    return found


def content_digest(root: str, rel: str) -> bytes:
    """A file's bytes, or a folder's entry names, as a digest; b"" if it is gone."""
    path = os.path.join(root, rel)
    try:
        if os.path.isdir(path):
            return hash_bytes("\0".join(sorted(os.listdir(path))).encode("utf-8",
                                                                         "surrogateescape"))
        return hash_file(path)
    except OSError:
        return b""


def stamps_current(root: str, folders: Iterable[tuple[str, int]], files: Iterable[tuple[str, int]],
                   racy: Mapping[str, bytes] | None = None) -> bool:
    """Whether every recorded folder and file stamp still holds (a cached load is still valid),
    and every racy path still has the content it had."""
    return all(folder_stamp(root, rel) == stamp for rel, stamp in folders) and all(
        file_stamp(root, rel) == stamp for rel, stamp in files) and all(
        content_digest(root, rel) == digest for rel, digest in (racy or {}).items())
