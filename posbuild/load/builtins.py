"""Layer 0: the Starlark built-ins that declare no target: configuration values, data files of
the workspace, print(), and the refusal of the Bazel features posbuild does not have.

A BUILD file may depend on more than its own text: `config("KEY")` reads `[vars]` of
posbuild.toml or `--define KEY=VALUE`, and `read_json`, `read_lines`, `read_tsv` and `read_csv`
read a file of the workspace (a Snakemake-style sample sheet). Each file read is reported to the
loader (`record`), which puts it among the files the graph cache stamps; the values are part of
the cache entry's validity (graphcache.py). A value reaches an action's key only by being
written into its definition, as any literal is.

What Bazel has and posbuild does not is refused when called, with one line saying what to write
instead: a Bazel user's first BUILD file should fail at the line that needs changing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from posbuild.core.layout import OUT_DIR, STATE_DIR
from posbuild.core.words import quantity

_MACRO = ("write a macro (a def in a .bzl file) that calls the native rules genrule, py_task "
          "and filegroup")
_CONFIG = 'read the value with config("KEY", default) ([vars] in posbuild.toml, --define KEY=VALUE)'
UNSUPPORTED: dict[str, str] = {
    "rule": f"posbuild has no Starlark rules: {_MACRO}",
    "provider": f"posbuild has no providers: {_MACRO}, passing values as its arguments",
    "aspect": "posbuild has no aspects: walk the graph with `posbuild query` (deps, rdeps)",
    "toolchain": "posbuild has no toolchains: list the tool in a rule's tools, or in "
                 "[env] tools of posbuild.toml",
    "toolchain_type": "posbuild has no toolchains: list the tool in a rule's tools, or in "
                      "[env] tools of posbuild.toml",
    "register_toolchains": "posbuild has no toolchains: list the tool in a rule's tools, or in "
                           "[env] tools of posbuild.toml",
    "repository_rule": "posbuild has no external repositories: keep the files in the workspace",
    "config_setting": f"posbuild has no configurable attributes: {_CONFIG}",
    "select": f"posbuild has no configurable attributes: {_CONFIG} and choose with an if",
}

# Defines `print` and the refusals in a module, in Starlark: print needs its caller's line
# (`call_stack` is visible to these definitions alone), and a refusal must accept the functions
# it is given, which cannot cross into Python.
PRELUDE = '''
def print(*args, sep = " "):
    _posbuild_debug(call_stack(strip_frames = 1), sep.join([str(a) for a in args]))
''' + "".join(f"""
def {name}(*args, **kwargs):
    _posbuild_unsupported("{name}")
""" for name in UNSUPPORTED)
PRELUDE_NAME = "@posbuild//:prelude"
# a file that names none of these needs no prelude (most do not: it costs a parse and an eval)
PRELUDE_WANTED = re.compile(r"\b(?:print|%s)\b" % "|".join(UNSUPPORTED))
_MISSING = object()


class Builtins:
    """The built-ins of one load: the configuration values, where relative paths start, and
    where reads and DEBUG lines go."""

    def __init__(self, root: Path, variables: Mapping[str, str], package: Callable[[], str],
                 record: Callable[[str, bytes], None], debug: Callable[[str], None]) -> None:
        self._root = root
        self._vars = dict(variables)
        self._package = package  # of the file being evaluated: relative paths start there
        self._record = record
        self._debug = debug

    def functions(self) -> dict[str, Callable[..., Any]]:
        """The callables to add to every module, by name."""
        found: dict[str, Callable[..., Any]] = {
            "config": self.config,
            "read_json": lambda path: self._read("read_json", path, _json),
            "read_lines": lambda path: self._read("read_lines", path, _lines),
            "read_tsv": lambda path: self._read("read_tsv", path, _table("\t")),
            "read_csv": lambda path: self._read("read_csv", path, _table(",")),
            "_posbuild_debug": self._print,
            "_posbuild_unsupported": _refuse,
        }
        return found

    def config(self, key: Any, default: Any = _MISSING) -> Any:
        """`config("KEY", default)`: the configured string, else the default, else an error
        that says where a value can be set."""
        if not isinstance(key, str):
            raise ValueError(f"config(): the key must be a string, got {type(key).__name__}")
        value = self._vars.get(key)
        if value is not None:
            return value
        if default is _MISSING:
            raise ValueError(f'config("{key}"): no value; set it in [vars] of posbuild.toml or '
                             f'with --define {key}=VALUE, or give a default: config("{key}", '
                             f'"...")')
        return default

    def _print(self, stack: str, message: str) -> None:
        """One DEBUG line, as Bazel writes it, at the innermost caller of print()."""
        frames = [line.strip()[2:].split(", in ")[0] for line in stack.splitlines()
                  if line.strip().startswith("* ")]
        where = frames[-1] if frames else "?"
        self._debug(f"DEBUG: {where}: {message}")

    def _read(self, function: str, path: Any, parse: Callable[[str, str], Any]) -> Any:
        rel = data_path(self._root, self._package(), path, function)
        try:
            data = (self._root / rel).read_bytes()
        except IsADirectoryError:
            raise ValueError(f"{function}('{path}'): {rel} is a folder, not a file") from None
        except FileNotFoundError:
            raise ValueError(f"{function}('{path}'): no file {rel}") from None
        except OSError as error:
            raise ValueError(f"{function}('{path}'): cannot read {rel}: "
                             f"{error.strerror or error}") from None
        self._record(rel, data)
        try:
            text = data.decode("utf-8-sig")  # a spreadsheet's CSV often starts with a BOM
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise ValueError(f"{function}('{path}'): {rel}:{line}: not UTF-8 text "
                             f"(byte 0x{data[error.start]:02x})") from None
        try:
            return parse(text, rel)
        except _DataError as error:
            raise ValueError(f"{function}('{path}'): {error}") from None


def data_path(root: Path, package: str, path: Any, function: str) -> str:
    """The workspace-relative path of a data file named relative to `package` (as glob's
    patterns are) or as a label `//pkg:file`; anything that leaves the workspace, or reads
    posbuild's own outputs and state, is refused."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{function}(): the path must be a non-empty string")
    said = f"{function}('{path}')"
    if path.startswith("/") and not path.startswith("//"):
        raise ValueError(f"{said}: an absolute path; name a file of the workspace relative to the "
                         f"package, or as //pkg:file")
    if path.startswith("@"):
        raise ValueError(f"{said}: posbuild has no external repositories; name a file of the "
                         f"workspace")
    if path.startswith("//"):
        where, _, name = path[2:].partition(":")
        joined = posixpath.join(where, name or posixpath.basename(where))
    else:
        joined = posixpath.join(package, path) if package else path
    rel = posixpath.normpath(joined)
    if rel == ".." or rel.startswith("../") or "\0" in rel:
        raise ValueError(f"{said}: leaves the workspace; name a file inside it")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, rel))
    if real != real_root and not real.startswith(real_root + os.sep):
        raise ValueError(f"{said}: {rel} resolves to {real}, outside the workspace (a symbolic "
                         f"link?); BUILD files read only files of the workspace")
    top = os.path.relpath(real, real_root).split(os.sep, 1)[0]
    if top in (OUT_DIR, STATE_DIR) or rel.split("/", 1)[0] in (OUT_DIR, STATE_DIR):
        raise ValueError(f"{said}: {rel} is in {top if top in (OUT_DIR, STATE_DIR) else OUT_DIR}/"
                         f", posbuild's own; a BUILD file reads source files only")
    return rel


class _DataError(Exception):
    """A data file that does not parse: the message names the file and line."""


def _refuse(name: str) -> None:
    raise ValueError(f"{name}() is not supported: {UNSUPPORTED[name]}")


def _json(text: str, rel: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _DataError(f"{rel}:{error.lineno}: not valid JSON: {error.msg}") from None
    except RecursionError:
        raise _DataError(f"{rel}: JSON nested too deeply") from None


def _lines(text: str, rel: str) -> list[str]:
    """The lines of a list file, stripped; blank lines and `#` comments are skipped."""
    found = []
    for line in text.split("\n"):
        line = line.strip()
        if line and not line.startswith("#"):
            found.append(line)
    return found


def _table(delimiter: str) -> Callable[[str, str], list[dict[str, str]]]:
    def parse(text: str, rel: str) -> list[dict[str, str]]:
        """A sample sheet: one dict per row, keyed by the header row, in the file's order;
        blank rows are skipped, a row with another number of fields than the header is an
        error."""
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        header: list[str] | None = None
        rows = []
        try:
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                if header is None:
                    header = _header(row, rel, reader.line_num)
                    continue
                if len(row) != len(header):
                    raise _DataError(f"{rel}:{reader.line_num}: {quantity(len(row), 'field')}, "
                                     f"but the header row has {len(header)}")
                rows.append(dict(zip(header, row)))
        except csv.Error as error:
            raise _DataError(f"{rel}:{reader.line_num}: {error}") from None
        return rows
    return parse


def _header(row: list[str], rel: str, line: int) -> list[str]:
    names = [name.strip() for name in row]
    for index, name in enumerate(names):
        if not name:
            raise _DataError(f"{rel}:{line}: column {index + 1} of the header row has no name")
        if name in names[:index]:
            raise _DataError(f"{rel}:{line}: column '{name}' appears twice in the header row")
    return names
