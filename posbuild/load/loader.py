"""Layer 1: evaluate BUILD and .bzl files (Starlark, via starlark-pyo3) into Packages of Targets.

A BUILD file can only call the native functions defined here, which record targets, and the
built-ins of builtins.py; it cannot run commands or inject work outside the graph (§16). `glob`
and the data-file readers (builtins.py) are its windows onto the file system, confined to the
workspace; every file they read is recorded like the BUILD files.

Evaluation is the slow part of loading, so `discover_packages` also returns the modification
stamps of every folder it walked; the graph cache (graphcache.py) keeps evaluated results valid
for exactly as long as those stamps and the BUILD/.bzl files it read are unchanged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import starlark

from posbuild.workspace.config import Config
from posbuild.core.digest import Digest, hash_bytes
from posbuild.errors import BuildFileError, SourceLocation
from posbuild.core.label import Label, did_you_mean, parse_label, shown
from posbuild.core.layout import OUT_DIR, STATE_DIR
from posbuild.load.builtins import PRELUDE, PRELUDE_NAME, PRELUDE_WANTED, Builtins
from posbuild.load.nesting import nesting_problem
from posbuild.load.owners import Owners, with_ancestors
from posbuild.load.stamps import folder_stamp
from posbuild.core.target import SCHEMAS, AttributeError_, Target, make_target
from posbuild.core.visibility import (PRIVATE, PUBLIC, PackageGroup, canonical_visibility,
                                      package_specs)

RULES_REPO = "@posbuild//"
MAX_LOAD_DEPTH = 100
_ERROR_LINE = re.compile(
    r"^error: (?:(?:[A-Za-z_]+Error_?: )?error: )*(?:[A-Za-z_]+Error_?: )?(.*)$", re.MULTILINE)
_NAME_ATTR = re.compile(r"""name\s*=\s*["']([^"']+)["']""")
_WHERE_LINE = re.compile(r"^\s*--> (.+):(\d+):(\d+)", re.MULTILINE)
# `@posbuild//rules:concat.bzl.concat` -> `concat`
_MODULE_PATH = re.compile(r"`[^`\s]*\.bzl\.(\w+)`")
# one frame of a Starlark traceback
_FRAME_LINE = re.compile(r"^\s*\* (.+):(\d+), in ", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Package:
    """One evaluated BUILD file."""

    name: str
    build_file: str
    targets: tuple[Target, ...]
    exports: tuple[str, ...]
    by_name: dict[str, Target] = field(default_factory=dict, compare=False, repr=False)
    by_output: dict[str, Target] = field(default_factory=dict, compare=False, repr=False)
    groups: dict[str, PackageGroup] = field(default_factory=dict, compare=False, repr=False)
    # the visibility of each exported file that exports_files gave one (the others are public)
    export_visibility: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False,
                                                          repr=False)


Stamp = tuple[str, bytes]  # (workspace-relative path, stamps.folder_stamp)


def _skip_dir(name: str) -> bool:
    return name.startswith(".") or name in (OUT_DIR, STATE_DIR, "__pycache__")


def _utf8(name: str) -> bool:
    """Whether a file name is UTF-8 text: one that is not cannot be part of a label, so folders
    so named hold no packages, and a glob that matches such a file is an error."""
    if name.isascii():
        return True
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def package_hint(name: str, packages: Any) -> str:
    """What follows "no such package '//name'": why posbuild never looks there, else a close
    name."""
    if any(_skip_dir(part) for part in name.split("/")):
        return (
            f": posbuild does not look for packages in hidden folders, {OUT_DIR}, {STATE_DIR} or "
            "__pycache__")
    return did_you_mean(name, packages)


def discover_packages(root: Path, build_file_names: tuple[str, ...]
                      ) -> tuple[tuple[str, ...], tuple[Stamp, ...]]:
    """Every package of the workspace (sorted) and the stamp of every folder walked to find them."""
    packages: list[str] = []
    stamps: list[Stamp] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        folder = os.path.join(root, rel) if rel else str(root)
        stamps.append((rel, folder_stamp(str(root), rel)))
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if not _skip_dir(entry.name) and _utf8(entry.name):
                        pending.append(f"{rel}/{entry.name}" if rel else entry.name)
                elif entry.name in build_file_names and rel not in packages[-1:]:
                    packages.append(rel)
    return tuple(sorted(packages)), tuple(sorted(stamps))


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a Bazel glob (`*`, `?`, `**`) into an anchored regular expression."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def starlark_error(error: Exception, sources: dict[str, str] | None = None) -> BuildFileError:
    """Turn starlark-pyo3's multi-line report into one line with file:line:column.

    An error inside the standard library is placed at the user's line that called it (the
    innermost frame outside `@posbuild//`); the library is not the user's code. A parse error
    at the very end of a file, which starlark places at 1:1, is placed at the bracket left open,
    else at the last line (`sources`: the text of each file by the name it was parsed under).
    """
    text = str(error)
    what = next((m for m in _ERROR_LINE.finditer(text) if not m.group(1).startswith("Traceback")),
                None)
    where = _WHERE_LINE.search(text)
    message = what.group(1).strip() if what else text.strip().splitlines()[0]
    message = message.split(", expected one of ")[0]
    message = _MODULE_PATH.sub(r"`\1`", message.removeprefix("fail: "))
    if where is None:
        return BuildFileError(message, None)
    location = SourceLocation(where.group(1), int(where.group(2)), int(where.group(3)))
    frames = [(f, int(n)) for f, n in _FRAME_LINE.findall(text)]
    if location.file.startswith(RULES_REPO):
        frames = [frame for frame in frames if not frame[0].startswith(RULES_REPO)]
        if frames:
            location = SourceLocation(*frames[-1])
    if frames and frames[0][0] != location.file:  # in a workspace macro: say where it was called
        message += f" (called from {frames[0][0]}:{frames[0][1]})"
    elif (location.line, location.column) == (1, 1) and message.startswith("Parse error") \
            and not re.match(r"\s*\|\s*1 \|", text[where.end():]):  # no excerpt of line 1: the end
        message, location = _at_end(location.file, (sources or {}).get(location.file, ""))
    elif message == "Parse error: tabs are not allowed":
        location = _next_tab(location, (sources or {}).get(location.file, ""))
    return BuildFileError(message, location)


def _next_tab(location: SourceLocation, source: str) -> SourceLocation:
    """The first tab at or after `location`: starlark places a tab of the indentation at the end
    of the line before, where the user would look for it in vain."""
    lines = source.split("\n")
    for number in range(location.line, len(lines) + 1):
        start = location.column - 1 if number == location.line else 0
        column = lines[number - 1].find("\t", max(start, 0))
        if column >= 0:
            return SourceLocation(location.file, number, column + 1)
    return location


def _at_end(file: str, source: str) -> tuple[str, SourceLocation]:
    """The message and place of a parse error at the end of `source`: the bracket never closed."""
    import io
    import tokenize

    opened: list[tuple[str, int, int]] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.OP and token.string in "([{":
                opened.append((token.string, token.start[0], token.start[1] + 1))
            elif token.type == tokenize.OP and token.string in ")]}" and opened:
                opened.pop()
    except (tokenize.TokenError, SyntaxError):
        pass
    if opened:
        bracket, line, column = opened[-1]
        return f"Parse error: '{bracket}' is never closed", SourceLocation(file, line, column)
    return "Parse error: unexpected end of file", SourceLocation(file,
                                                                 max(1, len(source.splitlines())))


class Loader:
    """Evaluates packages on demand; `.bzl` modules are evaluated once and shared."""

    def __init__(self, config: Config, packages: tuple[str, ...]) -> None:
        self._config = config
        self._root = config.root
        self._packages = set(packages)
        self._package_folders = with_ancestors(packages)
        self._globals = starlark.Globals.standard()
        self._bzl_cache: dict[str, starlark.FrozenModule] = {}
        self._bzl_loading: list[str] = []
        self._bzl_packages: dict[str, str] = {}  # the package of each .bzl file, by cache key
        self._loaded: dict[str, Package] = {}
        self._current: _PackageBuilder | None = None
        # text of each file evaluated, by the name it was parsed under
        self._sources: dict[str, str] = {}
        self.files_read: set[str] = set()
        # of each file as read: the graph cache checks racy ones
        self.digests: dict[str, Digest] = {}
        self._builtins = Builtins(self._root, dict(config.vars), self._reading_package,
                                  self._record_read, self._debug)
        self._prelude: starlark.AstModule | None = None

    @property
    def config(self) -> Config:
        return self._config

    @property
    def root(self) -> Path:
        return self._root

    def package(self, name: str) -> Package:
        """The evaluated package `name`, evaluating its BUILD file on first use."""
        if name not in self._loaded:
            if name not in self._packages:
                if not name:
                    raise BuildFileError(
                        "no such package '//': the workspace root has no BUILD file")
                raise BuildFileError(
                    f"no such package '//{name}'" + package_hint(name, self._packages))
            self._loaded[name] = self._evaluate(name)
        return self._loaded[name]

    def _build_file(self, package: str) -> str:
        for candidate in self._config.build_file_names:
            rel = f"{package}/{candidate}" if package else candidate
            if os.path.isfile(self._root / rel):
                return rel
        raise BuildFileError(f"package '//{package}' has no BUILD file")

    def _evaluate(self, package: str) -> Package:
        build_file = self._build_file(package)
        source = self._read(build_file)
        owners = Owners(package, self._root, self._packages, self._package_folders)
        builder = _PackageBuilder(package, build_file, source, self._root,
                                  self._config.build_file_names,
                                  owners,
                                  lambda name: self._call_line(package, build_file, source, name),
                                  _default_visibility(self._config))
        self._current = builder
        self._sources[build_file] = source
        try:
            module = self._module(source)
            starlark.eval(module, starlark.parse(build_file, source), self._globals,
                          starlark.FileLoader(self._load_bzl))
        except starlark.StarlarkError as error:
            raise starlark_error(error, self._sources) from None
        finally:
            self._current = None
        self.files_read.update(owners.folders_read)  # stamped like the files read (graphcache.py)
        return builder.finish()

    def _call_line(self, package: str, build_file: str, source: str, name: str) -> int:
        """The line of the BUILD file's statement that declared target `name` (a call in a loop,
        or of a macro): found by evaluating the file again up to that declaration. Only an error
        message asks, so the cost is paid only then."""
        finder = _Finder(package, build_file, source, self._root, self._config.build_file_names,
                         name)
        saved = self._current
        self._current = finder
        try:
            starlark.eval(self._module(source), starlark.parse(build_file, source), self._globals,
                          starlark.FileLoader(self._load_bzl))
        except starlark.StarlarkError as error:
            text = str(error)
            lines = [int(n) for f, n in _FRAME_LINE.findall(text) if f == build_file]
            where = _WHERE_LINE.search(text)
            if lines:
                return lines[0]
            if where is not None and where.group(1) == build_file:
                return int(where.group(2))
        finally:
            self._current = saved
        return 1

    def _read(self, rel: str) -> str:
        """The text of a BUILD or .bzl file: UTF-8, less the byte order mark some editors write,
        and nested no deeper than the evaluator can take."""
        self.files_read.add(rel)
        try:
            data = (self._root / rel).read_bytes()
        except OSError as error:
            raise BuildFileError(f"cannot read {rel}: {error.strerror or error}") from None
        self.digests[rel] = hash_bytes(data)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            start = data.rfind(b"\n", 0, error.start) + 1
            column = len(data[start:error.start].decode("utf-8", "replace")) + 1
            where = SourceLocation(rel, data.count(b"\n", 0, error.start) + 1, column)
            raise BuildFileError(f"not UTF-8 text (byte 0x{data[error.start]:02x})",
                                 where) from None
        # the evaluator would overflow its native stack (nesting.py)
        too_deep = nesting_problem(text)
        if too_deep is not None:
            raise BuildFileError(too_deep[1], SourceLocation(rel, too_deep[0]))
        return text

    def _module(self, source: str) -> starlark.Module:
        module = starlark.Module()
        for name, function in self._natives().items():
            module.add_callable(name, function)
        if PRELUDE_WANTED.search(source):  # print() and the refusals are Starlark defs
            if self._prelude is None:
                self._prelude = starlark.parse(PRELUDE_NAME, PRELUDE)
            starlark.eval(module, self._prelude,
                          starlark.Globals.extended_by([starlark.LibraryExtension.CallStack]))
        return module

    def _reading_package(self) -> str:
        """Where a data file's relative path starts: the package of the .bzl file being loaded,
        else of the BUILD file being evaluated (a macro reads like the BUILD file calling it)."""
        if self._bzl_loading:
            return self._bzl_packages[self._bzl_loading[-1]]
        if self._current is None:
            raise ValueError("files can only be read while a BUILD or .bzl file is evaluated")
        return self._current.package

    def _record_read(self, rel: str, data: bytes) -> None:
        """A data file read by a BUILD or .bzl file: a change to it must load the package again."""
        self.files_read.add(rel)
        self.digests[rel] = hash_bytes(data)

    def _debug(self, line: str) -> None:
        """print()'s DEBUG line, on stderr as in Bazel; not again when a file is evaluated a
        second time only to place an error (`_call_line`)."""
        if not isinstance(self._current, _Finder):
            import sys

            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def _natives(self) -> dict[str, Callable[..., Any]]:
        return {
            **{kind: self._rule(kind) for kind in SCHEMAS},  # every rule kind
            "exports_files": lambda srcs, *a, **kw: self._builder().export(srcs, kw),
            "package": lambda *a, **kw: self._builder().declare_package(a, kw),
            "package_group": lambda *a, **kw: self._builder().package_group(a, kw),
            "glob": lambda include, exclude=(), **kw: self._builder().glob(include, exclude, kw),
            "package_name": lambda: self._builder().package,
            **self._builtins.functions(),
        }

    def _rule(self, kind: str) -> Callable[..., Any]:
        """The native function that declares a target of `kind`."""
        return lambda *a, **kw: self._builder().rule(kind, a, kw)

    def _add_native(self, module: starlark.Module) -> None:
        """Bazel's `native` module, for .bzl macros: `native.genrule(...)`, `native.glob(...)`,
        `native.package_name()`, `native.existing_rule(name)` and the other natives under the
        names they have here."""
        global _STRUCT_GLOBALS
        if _STRUCT_GLOBALS is None:
            _STRUCT_GLOBALS = starlark.Globals.extended_by([starlark.LibraryExtension.StructType])
        only_native: dict[str, Callable[..., Any]] = {
            "repository_name": lambda: "@",
            "repo_name": lambda: "",
            "existing_rule": lambda name: self._builder().existing_rule(name),
            "existing_rules": lambda: self._builder().existing_rules(),
        }
        for name, function in only_native.items():
            module.add_callable(f"_{name}", function)
        names = [name for name in self._natives() if name != "package"]
        fields = ", ".join([f"{name} = {name}" for name in names]
                           + [f"{name} = _{name}" for name in only_native])
        starlark.eval(module, starlark.parse("<native>", f"native = struct({fields})"),
                      _STRUCT_GLOBALS)

    def _builder(self) -> _PackageBuilder:
        # A .bzl file's top level runs once, for whichever package loads it first: no rules there.
        if self._current is None or self._bzl_loading:
            raise ValueError(
                "rules can only be declared while a BUILD file is evaluated, not at load time")
        return self._current

    def _bzl_path(self, module_id: str) -> tuple[str, Path, str]:
        """(cache key, file, package) of a load(); a relative label is relative to the file that
        says it, as in Bazel: a .bzl file's own package, not that of the BUILD file loading it."""
        requester = self._bzl_loading[-1] if self._bzl_loading else None
        if requester is not None and requester.startswith(RULES_REPO) \
                and not module_id.startswith(("//", "@")):
            module_id = f"{RULES_REPO}rules:{module_id.removeprefix(':')}"
        if module_id.startswith(RULES_REPO):
            label = parse_label("//" + module_id[len(RULES_REPO):], "")
            if label.package != "rules":
                raise ValueError(f"'{module_id}': the standard library lives in @posbuild//rules")
            return module_id, rules_dir() / label.name, label.package
        if requester is not None:
            package = self._bzl_packages[requester]
        else:
            package = self._current.package if self._current else ""
        label = parse_label(module_id, package)
        if not label.name.endswith(".bzl"):
            raise ValueError(f"load() takes a .bzl file, got '{module_id}'")
        rel = f"{label.package}/{label.name}" if label.package else label.name
        return rel, self._root / rel, label.package

    def _load_bzl(self, module_id: str) -> starlark.FrozenModule:
        key, path, package = self._bzl_path(module_id)
        self._bzl_packages[key] = package
        if key in self._bzl_cache:
            return self._bzl_cache[key]
        if key in self._bzl_loading:
            raise ValueError("load() cycle: " + " -> ".join([*self._bzl_loading, key]))
        if len(self._bzl_loading) >= MAX_LOAD_DEPTH:  # each level nests the evaluator's stack
            raise ValueError(f"load() chain deeper than {MAX_LOAD_DEPTH} files: " + " -> ".join(
                [*self._bzl_loading[:2], "...", key]))
        if not path.is_file():
            if key.startswith(RULES_REPO):
                shipped = [p.name for p in rules_dir().glob("*.bzl") if not p.name.startswith("_")]
                raise ValueError(f"cannot load '{module_id}': the standard library has no "
                                 f"{path.name}"
                                 + did_you_mean(path.name, shipped))
            raise ValueError(f"cannot load '{module_id}': no file {key}")
        # The shipped library is read by absolute path; recording it lets an edit to it (in a
        # source checkout) invalidate cached graphs like any workspace .bzl file.
        try:
            source = self._read(key if not key.startswith(RULES_REPO) else str(path))
        except BuildFileError as error:  # raised through starlark, which keeps only the text
            raise ValueError(error.render()) from None
        self._sources[key] = source
        self._bzl_loading.append(key)
        try:
            module = self._module(source)
            self._add_native(module)
            starlark.eval(module, starlark.parse(key, source), self._globals,
                          starlark.FileLoader(self._load_bzl))
        finally:
            self._bzl_loading.pop()
        self._bzl_cache[key] = frozen = module.freeze()
        return frozen


_STRUCT_GLOBALS: starlark.Globals | None = None


def _default_visibility(config: Config) -> tuple[str, ...]:
    """The visibility of a target whose package sets none: public, unless posbuild.toml asks
    for Bazel's private default."""
    return (PRIVATE,) if config.default_visibility == "private" else (PUBLIC,)


def rules_dir() -> Path:
    """The standard rule library (`@posbuild//rules`): inside the wheel, or beside a source
    checkout."""
    here = Path(__file__).resolve().parents[1]  # the posbuild package
    packaged = here / "_rules"
    return packaged if packaged.is_dir() else here.parent / "rules"


class _PackageBuilder:
    """Collects the targets of one BUILD file while it is evaluated, rejecting clashes at the
    call."""

    def __init__(self, package: str, build_file: str, source: str, root: Path,
                 build_names: tuple[str, ...],
                 owners: Owners | None = None,
                 call_line: Callable[[str], int] | None = None,
                 visibility: tuple[str, ...] = (PUBLIC,)) -> None:
        self.package = package
        self._visibility = visibility  # package(default_visibility = ...), else the default
        self._package_called = False
        self._groups: dict[str, PackageGroup] = {}
        self._export_visibility: dict[str, tuple[str, ...]] = {}
        self._owners = owners
        self._call_line = call_line
        self._build_names = build_names
        self._build_file = build_file
        self._source = source
        self._root = root
        self._targets: dict[str, Target] = {}
        self._outputs: dict[str, str] = {}
        self._lines: dict[str, int] | None = None
        self._exports: list[str] = []

    def rule(self, kind: str, args: tuple[Any, ...], attrs: dict[str, Any]) -> None:
        if args:
            raise ValueError(f"{kind}() takes keyword arguments only")
        name = attrs.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{kind}() needs a non-empty string 'name'")
        try:
            label = parse_label(f":{name}", self.package)
        except BuildFileError:
            raise ValueError(f"{kind}(): invalid target name '{name}' (it may not hold ':', start "
                             f"with '/' or have '.', '..' or empty parts)") from None
        if name in self._targets or name in self._groups:
            raise ValueError(f"duplicate target name '{name}' in package '//{self.package}'")
        if name in self._outputs:
            owner = Label(self.package, self._outputs[name])
            raise ValueError(f"target name '{name}' conflicts with output '{name}' of {owner}")
        visibility = attrs.pop("visibility", None)
        attrs["visibility"] = self._visibility if visibility is None \
            else canonical_visibility(visibility, self.package, f"{kind} '{name}'")
        try:
            target = make_target(kind, label, attrs, self._locate(name))
        except BuildFileError as error:
            raise ValueError(error.detail) from None
        for out in target.outs:
            if out in self._targets:
                raise ValueError(
                    f"output '{out}' of {label} conflicts with the target "
                    f"{Label(self.package, out)}")
            try:
                assert self._owners is not None
                self._owners.claim(out, label, kind)
            except BuildFileError as error:
                raise ValueError(error.detail) from None
            self._outputs[out] = name
        self._targets[name] = target

    def export(self, srcs: Any, options: dict[str, Any]) -> None:
        if not isinstance(srcs, list) or not all(isinstance(s, str) for s in srcs):
            raise AttributeError_("exports_files() takes a list of file names")
        unknown = set(options) - {"visibility", "licenses"}
        if unknown:
            raise ValueError(f"exports_files(): unknown argument '{sorted(unknown)[0]}'")
        self._exports.extend(srcs)
        if options.get("visibility") is not None:  # as in Bazel, exported files are public
            visibility = canonical_visibility(options["visibility"], self.package,
                                              "exports_files()")
            self._export_visibility.update(dict.fromkeys(srcs, visibility))

    def existing_rule(self, name: Any) -> dict[str, Any] | None:
        """Bazel's `native.existing_rule(name)`: the attributes of a target declared so far in
        this package, as plain values, or None."""
        target = self._targets.get(name) if isinstance(name, str) else None
        if target is None:
            return None
        found: dict[str, Any] = {"name": target.label.name, "kind": target.kind}
        for attr in SCHEMAS[target.kind]:
            value = getattr(target, attr)
            if isinstance(value, tuple) and value and isinstance(value[0], tuple):
                value = {k: dict(v) if isinstance(v, tuple) else v for k, v in value}
            found[attr] = list(value) if isinstance(value, tuple) else value
        return found

    def existing_rules(self) -> dict[str, dict[str, Any]]:
        """Bazel's `native.existing_rules()`: every target declared so far, by name."""
        return {name: self.existing_rule(name) or {} for name in self._targets}

    def declare_package(self, args: tuple[Any, ...], attrs: dict[str, Any]) -> None:
        """`package(default_visibility = [...])`: first in the BUILD file, once, as in Bazel."""
        if args:
            raise ValueError("package() takes keyword arguments only")
        if self._package_called:
            raise ValueError("package() may be called only once in a BUILD file")
        if self._targets or self._groups or self._exports:
            raise ValueError("package() must be called before any target is declared")
        unknown = sorted(set(attrs) - {"default_visibility"})
        if unknown:
            raise ValueError(f"package(): '{unknown[0]}' is not supported; posbuild reads only "
                             "default_visibility (remove the argument)")
        self._package_called = True
        if attrs.get("default_visibility") is not None:
            self._visibility = canonical_visibility(attrs["default_visibility"], self.package,
                                                    "package()")

    def package_group(self, args: tuple[Any, ...], attrs: dict[str, Any]) -> None:
        """Bazel's `package_group(name, packages, includes)`: a set of packages that visibility
        lists name by its label."""
        if args:
            raise ValueError("package_group() takes keyword arguments only")
        name = attrs.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ValueError("package_group() needs a non-empty string 'name'")
        unknown = sorted(set(attrs) - {"packages", "includes"})
        if unknown:
            raise ValueError(f"package_group '{name}': unknown argument '{unknown[0]}' "
                             "(known: includes, name, packages)")
        if name in self._targets or name in self._groups or name in self._outputs:
            raise ValueError(f"duplicate target name '{name}' in package '//{self.package}'")
        what = f"package_group '{name}'"
        includes = attrs.get("includes") or []
        if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
            raise ValueError(f"{what}: 'includes' must be a list of package_group labels")
        try:
            label = parse_label(f":{name}", self.package)
            included = tuple(str(parse_label(i, self.package)) for i in includes)
        except BuildFileError as error:
            raise ValueError(f"{what}: {error.detail}") from None
        self._groups[name] = PackageGroup(
            label, package_specs(attrs.get("packages") or [], what), included)

    def glob(self, include: Any, exclude: Any, options: dict[str, Any]) -> list[str]:
        """The package's files matching `include` and no `exclude` pattern. As in Bazel 8, an
        include pattern that matches nothing, or a glob whose every match is excluded, is an
        error unless `allow_empty = True`: a typo would otherwise drop inputs silently."""
        for value, what in ((include, "include"), (exclude, "exclude")):
            if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"glob(): '{what}' must be a list of patterns")
        unknown = set(options) - {"exclude_directories", "allow_empty"}
        if unknown:
            raise ValueError(f"glob(): unknown argument '{sorted(unknown)[0]}'")
        files = self._package_files()
        wanted = [glob_to_regex(p) for p in include]
        unwanted = [glob_to_regex(p) for p in exclude]
        allow_empty = options.get("allow_empty", False)
        if not isinstance(allow_empty, bool):
            raise ValueError("glob(): 'allow_empty' must be True or False")
        found = [f for f in files if any(r.match(f) for r in wanted)
                 and not any(r.match(f) for r in unwanted)]
        if not allow_empty:
            self._refuse_empty(include, wanted, files, found)
        for name in found:
            if not _utf8(name):
                raise ValueError(f"glob() matched '{shown(name)}' in '//{self.package}', whose "
                                 f"name is not UTF-8 text: rename it, or exclude it")
        return found

    def _refuse_empty(self, include: Any, wanted: list[re.Pattern[str]], files: list[str],
                      found: list[str]) -> None:
        """Name the first pattern that matches nothing, as Bazel does."""
        where = f"'//{self.package}'"
        for pattern, regex in zip(include, wanted):
            if not any(regex.match(f) for f in files):
                raise ValueError(f"glob(): pattern '{pattern}' matched no files in {where} "
                                 f"(write allow_empty = True if an empty glob is expected)")
        if found:
            return
        if include:
            raise ValueError(f"glob(): every file that {list(include)} matched in {where} is "
                             f"excluded (write allow_empty = True if an empty glob is expected)")
        raise ValueError("glob(): no include pattern given (write allow_empty = True if an "
                         "empty glob is expected)")

    def _package_files(self) -> list[str]:
        """Files under the package folder, excluding subpackages and posbuild's own folders."""
        base = self._root / self.package if self.package else self._root
        found: list[str] = []
        for folder, dirs, files in os.walk(base):
            rel = os.path.relpath(folder, base)
            if rel != "." \
                    and any(os.path.isfile(os.path.join(folder, b)) for b in self._build_names):
                dirs[:] = []
                continue
            dirs[:] = [d for d in dirs if not _skip_dir(d)]
            prefix = "" if rel == "." else rel + "/"
            found.extend(prefix + f for f in files)
        return sorted(found)

    def _locate(self, name: str) -> SourceLocation:
        """The line of a target's declaration, for errors raised after evaluation.

        The `name = "..."` occurrences of the file are indexed once, on first use. A name that
        is no literal of the file (made in a loop, or by a macro: `"step%d" % n`) is placed at
        the statement that declared it, found only when an error message needs it.
        """
        if self._lines is None:
            self._lines = {}
            line, position = 1, 0
            for match in _NAME_ATTR.finditer(self._source):
                line += self._source.count("\n", position, match.start())
                position = match.start()
                self._lines.setdefault(match.group(1), line)
        found = self._lines.get(name)
        if found is None and self._call_line is not None:
            return _CallSite(self._build_file, name, self._call_line)
        return SourceLocation(self._build_file, found or 1)

    def finish(self) -> Package:
        by_output = {out: target for target in self._targets.values() for out in target.outs}
        return Package(self.package, self._build_file, tuple(self._targets.values()),
                       tuple(self._exports), dict(self._targets), by_output, dict(self._groups),
                       dict(self._export_visibility))


class _Finder(_PackageBuilder):
    """Evaluates a BUILD file again and stops at the declaration of one target (`_call_line`)."""

    def __init__(self, package: str, build_file: str, source: str, root: Path,
                 build_names: tuple[str, ...], wanted: str) -> None:
        super().__init__(package, build_file, source, root, build_names)
        self._wanted = wanted

    def rule(self, kind: str, args: tuple[Any, ...], attrs: dict[str, Any]) -> None:
        if attrs.get("name") == self._wanted:
            raise ValueError("found")


class _CallSite(SourceLocation):
    """A SourceLocation whose line is looked up when first read (`_PackageBuilder._locate`)."""

    line = property(lambda self: self._line())
    _name: str
    _find: Callable[[str], int]

    def __init__(self, file: str, name: str, call_line: Callable[[str], int]) -> None:
        for attribute, value in (("file", file), ("column", 0), ("_name", name),
                                 ("_find", call_line)):
            object.__setattr__(self, attribute, value)

    def _line(self) -> int:
        if "_found" not in self.__dict__:
            self.__dict__["_found"] = self._find(self._name)
        return self.__dict__["_found"]


def describe_label(config: Config, label: Label) -> str | None:
    """Why `label` has no action of its own (a filegroup, an output or source file, nothing at
    all), or None for a rule: for a command such as `explain` that found no record of it."""
    packages, _ = discover_packages(config.root, config.build_file_names)
    try:
        package = Loader(config, packages).package(label.package)
    except BuildFileError as error:
        return error.detail
    target = package.by_name.get(label.name)
    if target is not None and target.kind == "filegroup":
        named = ", ".join(_canonical(s, label.package)
                          for s in target.srcs[:3]) + (", ..." if target.srcs[3:] else "")
        hint = f"; explain a rule it names: {named}" if named else ""
        return f"{label} is a filegroup, which runs no action{hint}"
    if target is not None:
        return None
    producer = package.by_output.get(label.name)
    if producer is not None:
        return f"{label} is an output of {producer.label}; explain {producer.label}"
    if (config.root / (f"{label.package}/{label.name}" if label.package else label.name)).is_file():
        return f"{label} is a source file, which no action produces"
    return f"no such target '{label}'" + did_you_mean(label.name, package.by_name)


def _canonical(text: str, package: str) -> str:
    try:
        return str(parse_label(text, package))
    except BuildFileError:
        return text
