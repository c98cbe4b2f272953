"""Layer 3: cheap fingerprints of folders and files, to know when loading must be redone.

A folder's mtime changes whenever an entry is added, removed or renamed in it, which is exactly
when a glob, a source-file lookup or package discovery could see something different. The
workspace root is the exception: posbuild itself creates `posbuild-out/` and `.posbuild/` there,
so the root's stamp is a digest of its entry names without those two.
"""

from __future__ import annotations

import os
import zlib
from typing import Iterable

from posbuild.config import OUT_DIR, STATE_DIR

MISSING = -1


def folder_stamp(root: str, rel: str) -> int:
    """The stamp of a workspace folder (`rel` == "" for the root); MISSING if it is gone."""
    try:
        if rel:
            return os.stat(os.path.join(root, rel)).st_mtime_ns
        names = sorted(name for name in os.listdir(root) if name not in (OUT_DIR, STATE_DIR))
    except FileNotFoundError:
        return MISSING
    return zlib.crc32("\0".join(names).encode("utf-8", "surrogateescape")) | (len(names) << 32)


def file_stamp(root: str, rel: str) -> int:
    """The stamp of a BUILD, .bzl or config file: changes with its content's size or mtime."""
    try:
        stat = os.stat(os.path.join(root, rel))
    except FileNotFoundError:
        return MISSING
    return stat.st_mtime_ns ^ (stat.st_size << 1) ^ (stat.st_ino << 7)


def stamps_current(root: str, folders: Iterable[tuple[str, int]], files: Iterable[tuple[str, int]]) -> bool:
    """Whether every recorded folder and file stamp still holds (a cached load is still valid)."""
    return all(folder_stamp(root, rel) == stamp for rel, stamp in folders) and all(
        file_stamp(root, rel) == stamp for rel, stamp in files)
