"""Layer 0: output ownership — every output path of the workspace has exactly one owner.

Outputs of package `p` land in `posbuild-out/p/`, which mirrors the source tree. Two declarations
that claim one path, or a path and a folder above it, would overwrite each other or break the
build half-way; an output where a subpackage keeps its outputs would be owned twice; an output
named like a source file would make one label mean two files. Each is refused when its package is
loaded, naming both owners, so every graph that was analysed (and so every graph the graph cache
keeps) has one owner per path, whatever the request.

The check needs nothing beyond the package itself: an output can only meet another package's
outputs by reaching into that package's folder, which the set of package folders answers. Its cost
is a few set lookups per output and one directory listing per package.
"""

from __future__ import annotations

import os
from pathlib import Path

from posbuild.errors import BuildFileError
from posbuild.core.label import Label
from posbuild.core.layout import OUT_DIR, STATE_DIR


def with_ancestors(packages: tuple[str, ...]) -> frozenset[str]:
    """Every package folder and every folder above one (the root, "", excepted)."""
    folders: set[str] = set()
    for package in packages:
        while package and package not in folders:
            folders.add(package)
            package = package.rpartition("/")[0]
    return frozenset(folders)


class Owners:
    """The output paths claimed so far in one package, checked against each other, the package's
    subpackages and its source files."""

    def __init__(self, package: str, root: Path, packages: set[str],
                 package_folders: frozenset[str]) -> None:
        self._package = package
        self._base = root / package if package else root
        self._packages = packages
        self._package_folders = package_folders
        self._outputs: dict[str, Label] = {}
        # a folder above a claimed output -> (output, owner)
        self._folders: dict[str, tuple[str, Label]] = {}
        self._listing: set[str] | None = None
        # Source folders the check looked into: the graph cache stamps them, as package discovery
        # does not walk every one (hidden folders, symbolic links).
        self.folders_read: set[str] = set()

    def claim(self, out: str, owner: Label, kind: str) -> None:
        """Record `out` as owned by `owner`, or raise a BuildFileError naming the other owner."""
        parts = out.split("/")
        if out.startswith("/") or "" in parts or "." in parts or ".." in parts:
            raise BuildFileError(f"{kind} '{owner.name}': output '{out}' must be a relative path "
                                 f"inside the package, without '.', '..' or empty parts")
        if ":" in out:
            raise BuildFileError(f"{kind} '{owner.name}': output '{out}' may not contain ':'")
        folders = ["/".join(parts[:i]) for i in range(1, len(parts))] if len(parts) > 1 else []
        if out in self._outputs or out in self._folders or any(f in self._outputs for f in folders):
            self._overlap(out, owner, folders)
        self._check_packages(out, owner, folders)
        if parts[0] in self._source_names():
            self._check_sources(out, owner, parts)
        self._outputs[out] = owner
        for folder in folders:
            self._folders.setdefault(folder, (out, owner))

    def _overlap(self, out: str, owner: Label, folders: list[str]) -> None:
        where = f"output '{out}' of {owner}"
        if out in self._outputs:
            raise BuildFileError(f"{where} is already an output of {self._outputs[out]}")
        other, other_owner = self._folders[out] if out in self._folders else next(
            (f, self._outputs[f]) for f in folders if f in self._outputs)
        raise BuildFileError(f"{where} conflicts with output '{other}' of {other_owner}: "
                             f"a path cannot be both a file and a folder")

    def _full(self, rel: str) -> str:
        return f"{self._package}/{rel}" if self._package else rel

    def _check_packages(self, out: str, owner: Label, folders: list[str]) -> None:
        for folder in folders:
            if self._full(folder) in self._packages:
                raise BuildFileError(
                    f"output '{out}' of {owner} crosses into package //{self._full(folder)}")
        full = self._full(out)
        if full in self._package_folders:
            inner = full if full in self._packages \
                else min(p for p in self._packages if p.startswith(full + "/"))
            raise BuildFileError(
                f"output '{out}' of {owner} conflicts with package //{inner}, which lies under it")

    def _source_names(self) -> set[str]:
        """The names in the package's folder (posbuild's own folders aside), listed once."""
        if self._listing is None:
            try:
                self._listing = set(os.listdir(self._base))
            except OSError:
                self._listing = set()
            if not self._package:
                self._listing -= {OUT_DIR, STATE_DIR}
        return self._listing

    def _check_sources(self, out: str, owner: Label, parts: list[str]) -> None:
        """A source file at the output's path, above it (a file cannot be a folder) or under it."""
        path = str(self._base)
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            if not os.path.isdir(path):
                if os.path.lexists(path):
                    source = self._full("/".join(parts[:i + 1]))
                    raise BuildFileError(
                        f"output '{out}' of {owner} conflicts with source file {source}")
                return
            self.folders_read.add(self._full("/".join(parts[:i + 1])))
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            self.folders_read.add(self._full(os.path.relpath(folder,
                                                             self._base).replace(os.sep, "/")))
            if files:
                inside = os.path.relpath(os.path.join(folder, min(files)),
                                         self._base).replace(os.sep, "/")
                raise BuildFileError(
                    f"output '{out}' of {owner} conflicts with source file {self._full(inside)}")
