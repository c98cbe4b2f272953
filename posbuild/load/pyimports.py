"""Layer 0: the workspace modules a Python script imports, found by reading its imports with `ast`.

A `py_task`'s code hash covers its script and every module of the workspace that the script
imports, directly or through other workspace modules. Nothing is executed: each file is parsed
with `ast` and every `import` / `from ... import` statement in it is resolved (at any depth:
inside functions, `try` blocks and `if TYPE_CHECKING:` too, so the result may be a superset of
what one run really imports, never a subset of what it can import statically).

Resolution mirrors how `python pkg/script.py` finds modules in the sandbox, where `sys.path`
starts with the script's folder and then the workspace root (py_task sets `PYTHONPATH=.`):

* `import a.b.c` and `from a.b import c`: `a` comes from the first of those two folders holding
  a package `a/__init__.py` or a module `a.py`, else from every one holding a folder `a/` (a
  namespace package); every file on the way is a dependency (`a/__init__.py`, `a/b/__init__.py`,
  `a/b/c.py` or `a/b/c/__init__.py`), and for `from a.b import c`, `c` counts when it is a
  submodule.
* `from . import z`, `from ..x import y`: relative to the importing file's folder (one more
  level up per extra dot), within the workspace.
* Names found in neither folder (the standard library, installed distributions) are ignored.
  So are dynamic imports (`importlib.import_module`, `__import__`): list such modules in `deps`.

Files are read as bytes, so a PEP 263 encoding declaration is honoured; a file that does not parse
raises ScanError with its line.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

from posbuild.errors import BuildFileError, SourceLocation

# (level, dotted module, imported names) of one statement
_Import = tuple[int, str, tuple[str, ...]]


class ScanError(Exception):
    """A scanned file cannot be read or parsed."""

    def __init__(self, path: str, line: int, detail: str) -> None:
        super().__init__(f"{path}:{line}: {detail}")
        self.path = path
        self.line = line
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Scan:
    """What scanning one script found: the modules (workspace-relative, sorted) and every file
    read."""

    modules: tuple[str, ...]
    files_read: tuple[str, ...]


class ImportScanner:
    """Scans scripts of one workspace; each file is parsed at most once per scanner."""

    def __init__(self, root: str) -> None:
        self._root = root.rstrip("/")
        self._parsed: dict[str, tuple[_Import, ...]] = {}

    def scan_task(self, label: str, script: str, extra: tuple[str, ...] = ()) -> Scan:
        """`scan` for the py_task `label`: a file that cannot be read or parsed is a BUILD error
        at that file's line, naming the task (and the script, when the file is a module it
        imports)."""
        try:
            return self.scan(script, extra)
        except ScanError as error:
            where = "" if error.path == script else f" (in a module that {script} imports)"
            raise BuildFileError(f"{label}: {error.detail}{where}",
                                 SourceLocation(error.path, error.line)) from None

    def scan(self, script: str, extra: tuple[str, ...] = ()) -> Scan:
        """The workspace modules `script` (and the files `extra`) import, transitively.

        `script` and `extra` are workspace-relative paths of existing files; they are not part of
        `modules` unless one of them is imported by another.
        """
        roots = tuple(dict.fromkeys((os.path.dirname(script), "")))
        starts = (script, *extra)
        seen: set[str] = set(starts)
        pending = list(starts)
        modules: set[str] = set()
        while pending:
            path = pending.pop()
            for found in self._imports_of(path, roots):
                modules.add(found)
                if found not in seen:
                    seen.add(found)
                    pending.append(found)
        modules.difference_update(starts)
        return Scan(tuple(sorted(modules)), tuple(sorted(seen)))

    def _imports_of(self, path: str, roots: tuple[str, ...]) -> list[str]:
        found: list[str] = []
        folder = os.path.dirname(path)
        for level, module, names in self._parse(path):
            parts = module.split(".") if module else []
            if level:
                base = _up(folder, level - 1)
                if base is None:
                    continue  # beyond the workspace root
                init = _join(base, "__init__.py")
                if self._is_file(init):
                    found.append(init)
                files = self._walk(base, parts) if parts else []
                if files is None:
                    continue
                where = self._package_folder(base, parts)
                found.extend(files or ())
                self._submodules(found, where, names)
                continue
            for root in self._roots_of(parts[0], roots):
                found.extend(self._walk(root, parts) or ())
                self._submodules(found, self._package_folder(root, parts), names)
        return found

    def _roots_of(self, top: str, roots: tuple[str, ...]) -> list[str]:
        """The roots the top-level name `top` is imported from, in the order Python searches them.

        The first root holding a module or regular package of that name; else every root holding
        a folder of that name (the portions of a namespace package); else none (not ours).
        """
        portions = []
        for root in roots:
            base = _join(root, top)
            if self._is_file(base + "/__init__.py") or self._is_file(base + ".py"):
                return [root]
            if os.path.isdir(self._abs(base)):
                portions.append(root)
        return portions

    def _submodules(self, found: list[str], where: str | None, names: tuple[str, ...]) -> None:
        """For `from P import a, b`: the names that are submodules of the package folder `where`."""
        if where is not None:
            for name in names:
                if name != "*":
                    found.extend(self._walk(where, [name]) or ())

    def _walk(self, folder: str, parts: list[str]) -> list[str] | None:
        """Files imported for the dotted `parts` below `folder`; None when its first part is not
        there."""
        files: list[str] = []
        for index, part in enumerate(parts):
            base = _join(folder, part)
            if self._is_file(base + "/__init__.py"):
                files.append(base + "/__init__.py")
                folder = base
            elif self._is_file(base + ".py"):
                files.append(base + ".py")
                return files  # a module: the remaining parts are attributes
            elif os.path.isdir(self._abs(base)):
                folder = base  # a namespace package
            else:
                return files if index else None
        return files

    def _package_folder(self, folder: str, parts: list[str]) -> str | None:
        """The folder of the package `parts` below `folder`, where `from ... import name` looks for
        submodules."""
        for part in parts:
            folder = _join(folder, part)
        return folder if os.path.isdir(self._abs(folder)) else None

    def _parse(self, path: str) -> tuple[_Import, ...]:
        if path not in self._parsed:
            try:
                with open(self._abs(path), "rb") as handle:
                    source = handle.read()
            except OSError as error:
                raise ScanError(path, 1, f"cannot read: {error.strerror or error}") from None
            try:
                tree = ast.parse(source, filename=path)
            except SyntaxError as error:
                raise ScanError(path, error.lineno or 1, f"syntax error: {error.msg}") from None
            except ValueError as error:  # null bytes, undecodable source
                raise ScanError(path, 1, f"cannot parse: {error}") from None
            found: list[_Import] = []
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.extend((0, alias.name, ()) for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.level, node.module or "", tuple(a.name for a in node.names)))
            self._parsed[path] = tuple(found)
        return self._parsed[path]

    def _abs(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def _is_file(self, rel: str) -> bool:
        return os.path.isfile(self._abs(rel))


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _up(folder: str, levels: int) -> str | None:
    """`folder` with `levels` trailing parts removed; None when that leaves the workspace."""
    parts = folder.split("/") if folder else []
    if levels > len(parts):
        return None
    return "/".join(parts[: len(parts) - levels])
