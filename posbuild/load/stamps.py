"""Layer 0: cheap fingerprints of folders and files, to know when loading must be redone.

A folder's mtime changes whenever an entry is added, removed or renamed in it, which is when a
glob, a source-file lookup or package discovery could see something different. It also changes
when a file is saved by renaming a new one over it, which changes nothing loading sees: so a
folder's stamp also records its entries' names and kinds (and links' targets), looked at only
when the mtime moved (`folder_current`). The workspace root is the exception: posbuild itself
creates `posbuild-out/` and `.posbuild/` there, so only the root's entries (without those two)
count.

A stamp holds the ctime beside the mtime, size and inode: a file written in place with the same
size and its mtime put back (`cp -p`, a reproducible tarball, the Nix store's mtime 1) keeps all
three, but the kernel sets its ctime, which no user can. Timestamps are coarse, though: a file
changed twice within one tick keeps its ctime too. So, as git does for its index, a path whose
ctime is not older than the load that stamped it (less `RACY_WINDOW_NS`) is *racy*: its content
digest is recorded as well, and checked on every later use of the stamps.
"""

from __future__ import annotations

import os
import struct
from typing import Iterable, Mapping

from posbuild.core.digest import hash_bytes, hash_file
from posbuild.core.layout import OUT_DIR, STATE_DIR

MISSING = -1
_FOLDER_STAMP = struct.Struct("<qq")  # stat fingerprint, entry names
MISSING_FOLDER = _FOLDER_STAMP.pack(MISSING, MISSING)
RACY_WINDOW_NS = 100_000_000  # a timestamp may trail the clock by a tick; slack for loaded machines


def folder_stamp(root: str, rel: str) -> bytes:
    """The stamp of a workspace folder (`rel` == "" for the root): its stat fingerprint, then a
    digest of its entries' names and kinds; MISSING_FOLDER if it is gone."""
    try:
        fast = _folder_stat(root, rel) if rel else 0
        return _FOLDER_STAMP.pack(fast, _entry_names(root, rel))
    except (FileNotFoundError, NotADirectoryError):
        return MISSING_FOLDER


def folder_current(root: str, rel: str, stamp: object) -> bool:
    """Whether a folder still has the entries its stamp recorded.

    Its stat says so in one call while nothing in it changed. When something did (a file saved
    by writing a new one and renaming it over the old, as editors, `sed -i` and git do; a
    temporary file come and gone), its entries are listed: what loading could see differently
    is a name or a kind (file, folder, link), never a file's content, so the same names and kinds
    keep the graph.
    """
    if not isinstance(stamp, bytes) or len(stamp) != _FOLDER_STAMP.size:
        return False  # written by an older posbuild, or damaged
    fast, names = _FOLDER_STAMP.unpack(stamp)
    try:
        if rel and _folder_stat(root, rel) == fast:
            return True
        return _entry_names(root, rel) == names
    except (FileNotFoundError, NotADirectoryError):
        return stamp == MISSING_FOLDER


def _folder_stat(root: str, rel: str) -> int:
    info = os.stat(os.path.join(root, rel))
    return hash((info.st_mtime_ns, info.st_ctime_ns, info.st_ino))


def _entry_names(root: str, rel: str) -> int:
    """A digest of a folder's entries, each name with its kind, and a link with its target (the
    root's without posbuild's own two folders, which builds create)."""
    folder = os.path.join(root, rel) if rel else root
    with os.scandir(folder) as entries:
        names = sorted(f"{entry.name}\0{_kind(entry)}" for entry in entries
                       if rel or entry.name not in (OUT_DIR, STATE_DIR))
    text = "\0".join(names).encode("utf-8", "surrogateescape")
    return int.from_bytes(hash_bytes(text)[:8], "little", signed=True)


def _kind(entry: os.DirEntry[str]) -> str:
    """File, folder, or link and where it points, from the listing (a `readlink` per link)."""
    if entry.is_symlink():
        try:
            return "l" + os.readlink(entry.path)
        except OSError:
            return "l"
    return "d" if entry.is_dir(follow_symlinks=False) else "f"


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


def stamps_current(root: str, folders: Iterable[tuple[str, bytes]],
                   files: Iterable[tuple[str, int]],
                   racy: Mapping[str, bytes] | None = None) -> bool:
    """Whether every recorded folder and file stamp still holds (a cached load is still valid),
    and every racy path still has the content it had."""
    return all(folder_current(root, rel, stamp) for rel, stamp in folders) and all(
        file_stamp(root, rel) == stamp for rel, stamp in files) and all(
        content_digest(root, rel) == digest for rel, digest in (racy or {}).items())
