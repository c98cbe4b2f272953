"""Layer 2: a folder output's manifest — what a folder an action declares in `out_dirs` holds.

A folder output (Bazel's tree artifact, Snakemake's `directory()`) is stored by content: each
file as an ordinary blob, and one manifest blob listing every entry by its path relative to the
folder, sorted: the files with their digest, size and executable bit, and every sub-folder (so
that an empty one comes back too). The output's digest is the manifest's digest, so a
dependent's key, early cutoff, the cache and the store treat a folder as they treat a file.
Links, FIFOs and devices are refused when the folder is taken in (store/trees.py), never stored.

A manifest read from a store, an archive or a remote is checked before anything is written from
it: every path must stay inside its folder (no absolute path, no `..`, no empty or `.` part),
and every file's folder must be listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import msgpack

from posbuild.core.digest import Digest, hash_bytes
from posbuild.core.records import ActionResult, OutputFile

TREE_FORMAT = 1
_MAGIC = "posbuild-tree"


@dataclass(frozen=True, slots=True)
class TreeFile:
    """One file of a folder output: its path inside the folder, blob digest, size and mode."""

    path: str
    digest: Digest
    size: int
    executable: bool


@dataclass(frozen=True, slots=True)
class Tree:
    """The manifest of a folder output: its files and its sub-folders, each sorted by path."""

    files: tuple[TreeFile, ...]
    folders: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def pack(self) -> bytes:
        return msgpack.packb([_MAGIC, TREE_FORMAT, list(self.folders),
                              [[f.path, f.digest, f.size, f.executable] for f in self.files]])

    def digest(self) -> Digest:
        """The folder's digest: that of its packed manifest, the blob it is stored as."""
        return hash_bytes(self.pack())

    @staticmethod
    def of(files: list[TreeFile], folders: list[str]) -> Tree:
        """A manifest of entries in any order, checked as one read from a store would be."""
        tree = Tree(tuple(sorted(files, key=lambda f: f.path)), tuple(sorted(folders)))
        tree.check()
        return tree

    @staticmethod
    def unpack(data: bytes) -> Tree:
        """A manifest from its blob; ValueError if the bytes are not a sound one."""
        try:
            magic, fmt, folders, rows = msgpack.unpackb(data)
            tree = Tree(tuple(TreeFile(p, bytes(d), int(s), bool(x)) for p, d, s, x in rows),
                        tuple(folders))
        except (ValueError, TypeError, msgpack.UnpackException) as error:
            raise ValueError(f"not a folder manifest: {error}") from None
        if magic != _MAGIC or fmt != TREE_FORMAT:
            raise ValueError("not a folder manifest")
        tree.check()
        return tree

    def check(self) -> None:
        """ValueError unless every path stays inside the folder, is listed once and sorted, and
        every file's and folder's parent folder is listed."""
        folders = set(self.folders)
        paths = [f.path for f in self.files]
        for kind, names in (("folder", list(self.folders)), ("file", paths)):
            if names != sorted(set(names)):
                raise ValueError(f"{kind} entries are not sorted and unique")
            for name in names:
                if not isinstance(name, str) or not inside(name):
                    raise ValueError(f"{kind} entry {name!r} leaves its folder")
                parent = name.rpartition("/")[0]
                if parent and parent not in folders:
                    raise ValueError(f"{kind} entry {name!r} is in no listed folder")
        if folders & set(paths):
            raise ValueError("an entry is both a file and a folder")


def inside(path: str) -> bool:
    """Whether a relative path names something strictly inside its folder."""
    return bool(path) and "\0" not in path and not path.startswith("/") \
        and all(part not in ("", ".", "..") for part in path.split("/"))


def tree_outputs(result: ActionResult) -> Iterator[OutputFile]:
    """The outputs of a result that are folders (their digest names a manifest)."""
    return (o for o in result.outputs if o.tree)


def member_blobs(result: ActionResult,
                 manifest: Callable[[Digest], bytes | None]) -> Iterator[tuple[Digest, str]]:
    """Every blob the folder outputs of a result name, each with what it is (`output P/F`).

    `manifest` gives a manifest blob's bytes, or None when the store lacks it (the caller reports
    the manifest itself); an unreadable manifest names nothing.
    """
    for output in tree_outputs(result):
        data = manifest(output.digest)
        if data is None:
            continue
        try:
            tree = Tree.unpack(data)
        except ValueError:
            continue
        for file in tree.files:
            yield file.digest, f"output {output.path}/{file.path}"
