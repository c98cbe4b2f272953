"""Layer 2: `posbuild query` — a small Bazel-style query language over the target graph.

The graph. Its nodes are every rule target (genrule, filegroup, ...) and, as in Bazel, every source
file that some target names in `srcs` or `tools` (or a py_task's `script` and `deps`; kind "source
file"), every workspace module a py_task's code imports (pyimports.py: the modules its code hash
covers), and the BUILD and .bzl files of each package (what buildfiles() answers). Its edges point
from a target to what it depends on: each such entry. An entry that names an output of a rule
(`//pkg:out.txt`) is an edge to that rule; posbuild has no separate "generated file" nodes.
Filegroups are nodes like any rule, although they have no action.

The language (DESIGN §4):

    expr := term (op term)*            op: + union   - except   ^ intersect
    term := ( expr ) | PATTERN | "PATTERN"
          | deps(expr [, depth])       expr and everything it depends on, transitively
          | rdeps(universe, expr [, depth])   what depends on expr, inside deps(universe)
          | allpaths(from, to)         every node on a dependency path from `from` to `to`
          | somepath(from, to)         the nodes of one such path (a shortest), or nothing
          | kind(REGEX, expr)          nodes whose kind ("genrule rule", "filegroup rule",
                                       "source file") the regex matches, anywhere in it
          | attr(NAME, REGEX, expr)    rule nodes whose attribute NAME (for a list or dict, any
                                       element; a dict element reads `key=value`) the regex matches
          | filter(REGEX, expr)        nodes whose label the regex matches
          | tests(expr)                the test rules of expr: every kind whose name ends in _test
          | buildfiles(expr)           the BUILD file of each node's package and the workspace
                                       .bzl files it loads, directly or not

As in Bazel, the three set operators have equal precedence and group from the left:
`a + b ^ c` is `(a + b) ^ c`; write parentheses for anything else. A PATTERN is a target pattern
(`//...`, `//pkg/...`, `//pkg:all`, `//pkg:name`, `:name` in the current folder's package); the
wildcards select rule targets only. A REGEX may be quoted, or written bare up to the next `,` or
`)` outside brackets (`kind(genrule|filegroup, //...)`).

Speed. Evaluating BUILD files is the slow part, so the whole workspace's target graph is cached in
`.posbuild/graphs/targets.query`, valid exactly as long as graphcache.py's entries are: the stamps
of every folder walked, of every BUILD/.bzl file read, of every Python file scanned for imports and
of posbuild.toml. A query on an unchanged
workspace reads that file and never evaluates Starlark. Node numbers follow the sorted label order,
so a result is sorted by sorting integers, and attributes and output names are decoded only when
a query needs them.
"""

from __future__ import annotations

import ast
import json
import re
import time
from itertools import chain
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import msgpack

from posbuild import __version__
from posbuild.core.action import src_path
from posbuild.host.atomic import write_atomically
from posbuild.workspace.config import Config, load_config
from posbuild.errors import BuildFileError, UsageError
from posbuild.core.label import (Label, PatternKind, TargetPattern, did_you_mean, parse_label,
                            parse_pattern)
from posbuild.core.label import shown as label_shown
from posbuild.core.layout import CONFIG_NAME, GRAPHS
from posbuild.load.stamps import file_stamp, racy_digests, stamps_current
from posbuild.core.target import SCHEMAS

CACHE_FORMAT = 3
CACHE_NAME = "targets.query"
SOURCE_FILE = "source file"
TEST_SUFFIX = "_test"  # tests() selects the rules of every kind so named, as Bazel's *_test
OUTPUTS = ("label", "json", "graph", "build")
FUNCTIONS = ("deps", "rdeps", "allpaths", "somepath", "kind", "attr", "filter", "tests",
             "buildfiles")
MAX_NESTING = 200  # parentheses and function calls; Python recurses a few frames per level
_OPERATORS = {"+": "+", "-": "-", "^": "^", "union": "+", "except": "-", "intersect": "^"}
_WORD = re.compile(r"[A-Za-z0-9_/@.:~*$=#%!-]+")
_INT = re.compile(r"[0-9]+\Z")


# -- the target graph ------------------------------------------------------------------------------


class TargetGraph:
    """Every node of the workspace, numbered in sorted label order (package, then name).

    `deps[i]` are the node numbers node i depends on (sorted); `kind_of[i]` indexes `kind_names`
    ("source file" or a rule kind); `rules[p]` are the rule nodes of `packages[p]`. Attributes are
    kept column by column (one msgpack blob per attribute name, a value list per node or None), so
    attr() decodes only the column it reads. Reverse edges and the label index are built on first
    use.
    """

    __slots__ = ("root", "packages", "labels", "kind_names", "kind_of", "deps", "rules",
                 "package_files", "_attr_blobs", "_outs_blob", "_build_blob", "_rdeps", "_index",
                 "_columns", "_outs")

    def __init__(self, root: Path, packages: Sequence[str], labels: Sequence[str],
                 kind_names: Sequence[str],
                 kind_of: Sequence[int], deps: Sequence[Sequence[int]],
                 rules: Sequence[Sequence[int]], package_files: Sequence[Sequence[int]],
                 attr_blobs: dict[str, bytes], outs_blob: bytes, build_blob: bytes) -> None:
        self.root = root
        self.packages = tuple(packages)
        self.labels = labels
        self.kind_names = kind_names
        self.kind_of = kind_of
        self.deps = deps
        self.rules = rules
        self.package_files = package_files  # per package: its BUILD file and the .bzl it loads
        self._attr_blobs = attr_blobs
        self._outs_blob = outs_blob
        self._build_blob = build_blob
        self._rdeps: list[list[int]] | None = None
        self._index: dict[str, int] | None = None
        self._columns: dict[str, Sequence[Sequence[str] | None]] = {}
        self._outs: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def rdeps(self) -> list[list[int]]:
        """Nodes that depend on each node."""
        if self._rdeps is None:
            rdeps: list[list[int]] = [[] for _ in self.labels]
            for node, children in enumerate(self.deps):
                for child in children:
                    rdeps[child].append(node)
            self._rdeps = rdeps
        return self._rdeps

    def index(self, label: str) -> int | None:
        if self._index is None:
            self._index = {name: i for i, name in enumerate(self.labels)}
        return self._index.get(label)

    def column(self, attr: str) -> Sequence[Sequence[str] | None]:
        """The values of attribute `attr` for every node (None where a node has no such attribute).

        A value is a list of strings: a list attribute element-wise, a scalar as one element, a dict
        as `key=value` elements, `requires` as `label key=value` elements.
        """
        if attr not in self._columns:
            blob = self._attr_blobs.get(attr)
            self._columns[attr] = msgpack.unpackb(blob, use_list=False) if blob \
                else (None,) * len(self.labels)
        return self._columns[attr]

    def output_owner(self, label: str) -> int | None:
        """The rule node that declares the output `label`, if any."""
        if self._outs is None:
            self._outs = dict(msgpack.unpackb(self._outs_blob, use_list=False)) \
                if self._outs_blob else {}
        return self._outs.get(label)

    def rules_by_package(self) -> dict[str, Sequence[int]]:
        return dict(zip(self.packages, self.rules))

    def build_entries(self) -> Sequence[Any]:
        """Per node: None, or a rule's `[file, line, column, [[attr, value]...]]` for `--output
        build` (line 0 when the line is found only by evaluating the BUILD file again)."""
        return msgpack.unpackb(self._build_blob, use_list=False) if self._build_blob \
            else (None,) * len(self.labels)

    def kind_text(self, node: int) -> str:
        """What kind() matches: `genrule rule`, `filegroup rule` or `source file`, as in Bazel."""
        kind = self.kind_names[self.kind_of[node]]
        return kind if kind == SOURCE_FILE else f"{kind} rule"

    def entry(self) -> list[Any]:
        """The graph as plain msgpack-able values, in the order `TargetGraph(root, *entry)` takes
        them."""
        return [list(self.packages), list(self.labels), list(self.kind_names), list(self.kind_of),
                [list(d) for d in self.deps], [list(r) for r in self.rules],
                [list(f) for f in self.package_files], dict(self._attr_blobs), self._outs_blob,
                self._build_blob]


def _attr_values(value: Any) -> list[str]:
    """A Target attribute as strings: lists element-wise, dicts as `key=value`, requires as `label
    key=value`."""
    if isinstance(value, tuple):
        values: list[str] = []
        for item in value:
            if isinstance(item, tuple):
                key, inner = item
                if isinstance(inner, tuple):
                    values.extend(f"{key} {k}={v}" for k, v in inner)
                else:
                    values.append(f"{key}={inner}")
            else:
                values.append(str(item))
        return values
    return [str(value)]


def _build_graph(config: Config
                 ) -> tuple[TargetGraph, list[tuple[str, bytes]], list[str], dict[str, bytes]]:
    """Evaluate every BUILD file of the workspace into a TargetGraph (a cache miss)."""
    from posbuild.load.loader import discover_packages, Loader  # Starlark is needed only here

    root = config.root
    package_names, dirs = discover_packages(root, config.build_file_names)
    loader = Loader(config, package_names)
    targets = {}
    outputs: dict[Label, Label] = {}
    for name in package_names:
        for target in loader.package(name).targets:
            targets[target.label] = target
            for out in target.outs:
                outputs[Label(name, out)] = target.label
    edges: dict[Label, set[Label]] = {}
    sources: set[Label] = set()
    imports = _Imports(root, package_names)
    for label, target in targets.items():
        found: set[Label] = set()
        for attr, text in _entries(target):
            dep = _resolve_entry(loader, targets, outputs, target, attr, text)
            if dep not in targets and dep not in outputs:
                sources.add(dep)
            found.add(outputs.get(dep, dep))
        if target.kind == "py_task":
            modules = imports.of(target, found - targets.keys())
            sources.update(modules)
            found.update(modules)
        edges[label] = found
    files_of = {name: _package_files(root, loader.package(name).build_file)
                for name in package_names}
    sources.update(f for files in files_of.values() for f in files if f not in targets)
    nodes = sorted([*targets, *sources])
    number = {label: i for i, label in enumerate(nodes)}
    kind_names = sorted({SOURCE_FILE, *(t.kind for t in targets.values())})
    kind_number = {k: i for i, k in enumerate(kind_names)}
    columns: dict[str, list[list[str] | None]] = {}
    rules: dict[str, list[int]] = {p: [] for p in package_names}
    build: list[list[Any] | None] = [None] * len(nodes)
    calls = _CallSites(root)
    for label in nodes:
        declared = targets.get(label)
        if declared is None:
            continue
        rules[label.package].append(number[label])
        build[number[label]] = [*calls.of(declared), _build_attrs(declared)]
        for attr in ["name", *(a for a in SCHEMAS.get(declared.kind, {}) if a != "visibility")]:
            value = [label.name] if attr == "name" else _attr_values(getattr(declared, attr))
            if attr not in columns:
                columns[attr] = [None] * len(nodes)
            columns[attr][number[label]] = value
    graph = TargetGraph(
        root=root,
        packages=package_names,
        labels=[str(n) for n in nodes],
        kind_names=kind_names,
        kind_of=[kind_number[targets[n].kind] if n in targets else kind_number[SOURCE_FILE]
                 for n in nodes],
        deps=[sorted(number[d] for d in edges.get(n, ())) for n in nodes],
        rules=[rules[p] for p in package_names],
        package_files=[sorted(number[f] for f in files_of[p]) for p in package_names],
        attr_blobs={a: msgpack.packb(c, use_bin_type=True) for a, c in sorted(columns.items())},
        outs_blob=msgpack.packb({str(o): number[r] for o, r in outputs.items()}, use_bin_type=True),
        build_blob=msgpack.packb(build, use_bin_type=True),
    )
    read = {*loader.files_read, *imports.files_read, CONFIG_NAME}
    return graph, list(dirs), sorted(read), loader.digests


class _Imports:
    """The workspace modules a py_task's code imports (pyimports.py), as source file labels: the
    edges that make `rdeps(//..., //ml:helper.py)` name every task that re-runs when it changes,
    as the task's code hash covers them (analysis.py)."""

    def __init__(self, root: Path, packages: Sequence[str]) -> None:
        from posbuild.load.pyimports import ImportScanner

        self._scanner = ImportScanner(str(root))
        self._packages = set(packages)
        self.files_read: set[str] = set()

    def of(self, target: Any, sources: set[Label]) -> set[Label]:
        """The modules `target` imports; `sources` are the source files it names."""
        script = parse_label(target.script, target.label.package)
        if script not in sources:
            return set()  # a generated script does not exist yet: its `deps` name its modules
        named = [parse_label(d, target.label.package) for d in target.deps]
        extra = tuple(_path(d) for d in named if d in sources and d.name.endswith(".py"))
        scan = self._scanner.scan_task(str(target.label), _path(script), extra)
        self.files_read.update(scan.files_read)
        found = set()
        for path in scan.modules:
            package = path.rpartition("/")[0]
            while package not in self._packages and package:
                package = package.rpartition("/")[0]
            if package in self._packages:  # a file outside every package has no label
                found.add(Label(package, path[len(package) + 1:] if package else path))
        return found


def _path(label: Label) -> str:
    """A source file's workspace-relative path."""
    return src_path(label.package, label.name)


_LOAD = re.compile(r"""^\s*load\(\s*["']([^"']+)["']""", re.MULTILINE)


def _package_files(root: Path, build_file: str) -> set[Label]:
    """What buildfiles() answers for a package: its BUILD file and every workspace .bzl file it
    loads, directly or through other .bzl files (the shipped library is no file of the
    workspace)."""
    package, _, name = build_file.rpartition("/")
    found = {Label(package, name)}
    pending = [Label(package, name)]
    while pending:
        file = pending.pop()
        try:
            text = (root / _path(file)).read_text(errors="replace")
        except OSError:
            continue
        for module in _LOAD.findall(text):
            if module.startswith("@"):
                continue
            try:
                loaded = parse_label(module, file.package)
            except BuildFileError:
                continue
            if loaded not in found:
                found.add(loaded)
                pending.append(loaded)
    return found


class _CallSites:
    """Where each rule call of a BUILD file is, as Bazel places a rule: the file, and the line and
    column of the call's `(` (a macro's call for the targets it declares).

    The loader places a target at its literal `name = "..."`; the call around that line is
    found with Python's parser (BUILD files are Starlark, whose syntax it reads). A target whose
    name is no literal of its file (made in a loop) gets line 0: its line is looked up only when
    `--output build` prints it.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._trees: dict[str, ast.Module | None] = {}

    def of(self, target: Any) -> tuple[str, int, int]:
        from posbuild.errors import SourceLocation

        location = target.location
        if location is None:
            return "", 0, 0
        if type(location) is not SourceLocation:  # its line costs an evaluation (loader.py)
            return location.file, 0, 0
        return (location.file, *self.call_at(location.file, location.line))

    def call_at(self, file: str, line: int) -> tuple[int, int]:
        """The line and column of the `(` of the outermost call around `line` of `file`."""
        if file not in self._trees:
            try:
                self._trees[file] = ast.parse((self._root / file).read_bytes())
            except (OSError, SyntaxError, ValueError):
                self._trees[file] = None
        tree = self._trees[file]
        for statement in tree.body if tree is not None else ():
            if statement.lineno <= line <= (statement.end_lineno or statement.lineno):
                for node in ast.walk(statement):  # breadth first: the outermost call first
                    if isinstance(node, ast.Call) \
                            and node.lineno <= line <= (node.end_lineno or node.lineno):
                        end = node.func
                        return end.end_lineno or end.lineno, (end.end_col_offset or 0) + 1
        return line, 1


_LABEL_ATTRS = ("srcs", "outs", "tools", "deps", "script", "requirements", "data")


def _build_attrs(target: Any) -> list[list[Any]]:
    """A rule's attributes as its BUILD file would set them: those that differ from their
    default, in the rule's schema order with tags and visibility last, labels in canonical form
    (as Bazel prints them)."""
    from posbuild.core.target import Target

    fields = Target.__dataclass_fields__
    found: list[list[Any]] = []
    common = ("tags", "visibility")
    schema = SCHEMAS.get(target.kind, {})
    for attr in [*(a for a in schema if a not in common), *(a for a in common if a in schema)]:
        value = getattr(target, attr, None)
        if value is None or attr in fields and value == fields[attr].default:
            continue
        if attr == "outs":
            value = tuple(out for out in value if out not in target.out_dirs)
            if not value:
                continue
        if attr in _LABEL_ATTRS:
            value = _canonical(value, target.label.package)
        elif attr == "python" and str(value).startswith((":", "//")):
            value = _canonical(value, target.label.package)
        elif attr == "requires":
            value = {_canonical(key, target.label.package): dict(pairs) for key, pairs in value}
        elif isinstance(value, tuple) and all(isinstance(v, tuple) for v in value):
            value = dict(value)
        found.append([attr, value])
    return found


def _canonical(value: Any, package: str) -> Any:
    """A label (or each label of a tuple) in its canonical `//pkg:name` form."""
    if isinstance(value, tuple):
        return [_canonical(v, package) for v in value]
    try:
        return str(parse_label(value, package))
    except BuildFileError:
        return value
def _entries(target: Any) -> list[tuple[str, str]]:
    """The labels a target depends on, by attribute: srcs, tools, deps (py_task, tests,
    binaries), data (tests, binaries) and a py_task's script."""
    entries = [(attr, text) for attr in ("srcs", "tools", "deps", "data")
               for text in getattr(target, attr)]
    if target.script:
        entries.append(("script", target.script))
    return entries


def _resolve_entry(loader: Any, targets: dict[Label, Any], outputs: dict[Label, Label], target: Any,
                   attr: str, text: str) -> Label:
    """The node one srcs/tools entry names: a rule, a rule's output, or a source file that
    exists."""
    where = f"{target.label}: {attr} entry '{text}'"
    try:
        label = parse_label(text, target.label.package)
        package = loader.package(label.package)
    except BuildFileError as error:
        raise BuildFileError(f"{where}: {error.detail}", target.location) from None
    if label in targets or label in outputs:
        return label
    rel = f"{label.package}/{label.name}" if label.package else label.name
    if not (loader.root / rel).is_file():
        names = [t.label.name for t in package.targets]
        raise BuildFileError(f"{where}: no such target or source file '{label}'" + did_you_mean(
            label.name, names),
                             target.location)
    return label


class TargetCache:
    """The workspace's TargetGraph in one msgpack file, checked by stamps like graphcache.py's
    entries."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.path = config.state_dir / GRAPHS / CACHE_NAME
        # made just before a load: what changed since is racy (stamps.py)
        self._since = time.time_ns()

    def load(self) -> TargetGraph | None:
        try:
            entry = msgpack.unpackb(self.path.read_bytes(), use_list=False)
        except (OSError, ValueError, msgpack.UnpackException):
            return None
        if not isinstance(entry, tuple) or len(entry) != 14 \
                or entry[0] != _version(self._config.vars):
            return None
        _, dirs, files, racy, *fields = entry
        if not isinstance(racy, dict) \
                or not stamps_current(str(self._config.root), dirs, files, racy):
            return None
        return TargetGraph(self._config.root, *fields)

    def save(self, graph: TargetGraph, dirs: Sequence[tuple[str, bytes]], files: Sequence[str],
             read: dict[str, bytes]) -> None:
        root = str(self._config.root)
        racy = racy_digests(root, [*(rel for rel, _ in dirs), *files], self._since, read)
        entry = [_version(self._config.vars), list(dirs),
                 [(rel, file_stamp(root, rel)) for rel in files], racy,
                 *graph.entry()]
        try:
            write_atomically(self.path, msgpack.packb(entry, use_bin_type=True))
        except OSError:
            pass  # a cache that cannot be written only costs time


def _version(variables: tuple[tuple[str, str], ...]) -> str:
    """Changes with the schemas, and with the `[vars]` and `--define` values BUILD files read."""
    schema = ";".join(f"{kind}:{','.join(sorted(attrs))}"
                      for kind, attrs in sorted(SCHEMAS.items()))
    return f"{CACHE_FORMAT}/{__version__}/{schema}/{variables!r}"


def load_graph(config: Config) -> TargetGraph:
    """The workspace's target graph: from the cache when nothing it was built from changed."""
    cache = TargetCache(config)
    graph = cache.load()
    if graph is None:
        graph, dirs, files, read = _build_graph(config)
        cache.save(graph, dirs, files, read)
    return graph


# -- parsing ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    pattern: TargetPattern


@dataclass(frozen=True, slots=True)
class Deps:
    expr: Any
    depth: int | None


@dataclass(frozen=True, slots=True)
class Rdeps:
    universe: Any
    expr: Any
    depth: int | None


@dataclass(frozen=True, slots=True)
class Allpaths:
    start: Any
    end: Any


@dataclass(frozen=True, slots=True)
class Somepath:
    start: Any
    end: Any


@dataclass(frozen=True, slots=True)
class Filter:
    regex: re.Pattern[str]
    expr: Any


@dataclass(frozen=True, slots=True)
class Tests:
    expr: Any


@dataclass(frozen=True, slots=True)
class Buildfiles:
    expr: Any


@dataclass(frozen=True, slots=True)
class Kind:
    regex: re.Pattern[str]
    expr: Any


@dataclass(frozen=True, slots=True)
class Attr:
    name: str
    regex: re.Pattern[str]
    expr: Any


@dataclass(frozen=True, slots=True)
class SetOp:
    op: str  # "+", "-" or "^"
    left: Any
    right: Any


Expr = (Pattern | Deps | Rdeps | Allpaths | Somepath | Kind | Attr | Filter | Tests | Buildfiles
        | SetOp)


class _Parser:
    """Recursive descent over the raw text, so that regex arguments can be read unquoted."""

    def __init__(self, text: str, cwd_package: str) -> None:
        self.text = text
        self.pos = 0
        self.cwd_package = cwd_package
        self.levels = 0  # parentheses and function calls open at the cursor

    def fail(self, message: str, pos: int | None = None) -> UsageError:
        where = self.pos if pos is None else pos
        shown = self.text if len(self.text) <= 200 else self.text[:100] + " ... " + self.text[-60:]
        return UsageError(
            label_shown(f"query syntax error at column {where + 1}: {message} in '{shown}'"))

    def nest(self) -> None:
        """Go one level deeper (a parenthesis, a function): parsing and evaluation recurse per
        level."""
        self.levels += 1
        if self.levels > MAX_NESTING:
            raise self.fail(f"the expression nests more than {MAX_NESTING} levels deep "
                            f"(parentheses and functions count)")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def found(self) -> str:
        if self.pos >= len(self.text):
            return "the end of the expression"
        word = _WORD.match(self.text, self.pos)
        return f"'{word.group(0)}'" if word and self.text[self.pos] != "-" \
            else f"'{self.text[self.pos]}'"

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(f"expected '{char}', found {self.found()}")
        self.pos += 1

    def word(self) -> tuple[str, int] | None:
        """The word at the cursor (words never start with '-'), without consuming it."""
        self.skip()
        if self.pos < len(self.text) and self.text[self.pos] == "-":
            return None
        match = _WORD.match(self.text, self.pos)
        return (match.group(0), match.end()) if match else None

    def parse(self) -> Expr:
        if not self.text.strip():
            raise self.fail("empty query expression", 0)
        expr = self.expression()
        if self.peek():
            raise self.fail(f"expected an operator (+ - ^) or the end, found {self.found()}")
        return expr

    def expression(self) -> Expr:
        expr = self.term()
        while True:
            op = self.operator()
            if op is None:
                return expr
            expr = SetOp(op, expr, self.term())

    def operator(self) -> str | None:
        char = self.peek()
        if char in ("+", "-", "^"):
            self.pos += 1
            return _OPERATORS[char]
        word = self.word()
        if word and word[0] in _OPERATORS:
            self.pos = word[1]
            return _OPERATORS[word[0]]
        return None

    def term(self) -> Expr:
        char = self.peek()
        if char == "(":
            self.pos += 1
            self.nest()
            expr = self.expression()
            self.levels -= 1
            self.expect(")")
            return expr
        if char in ("'", '"'):
            start = self.pos
            return self.pattern(self.string(), start)
        word = self.word()
        if word is None:
            raise self.fail(f"expected a target pattern, a function or '(', found {self.found()}")
        text, end = word
        if text in _OPERATORS:
            raise self.fail(f"expected a target pattern, a function or '(', found '{text}'")
        start = self.pos
        self.pos = end
        if self.peek() == "(":
            if text not in FUNCTIONS:
                raise self.fail(f"unknown function '{text}' (known: {', '.join(FUNCTIONS)})"
                                + did_you_mean(text, FUNCTIONS), start)
            self.pos += 1
            self.nest()
            expr = getattr(self, "f_" + text)()
            self.levels -= 1
            self.expect(")")
            return expr
        return self.pattern(text, start)

    def pattern(self, text: str, start: int) -> Pattern:
        if not text:
            raise self.fail("empty target pattern", start)
        try:
            return Pattern(parse_pattern(text, self.cwd_package))
        except BuildFileError as error:
            raise BuildFileError(f"query: {error.detail}") from None

    def string(self) -> str:
        quote, start = self.text[self.pos], self.pos
        end = self.text.find(quote, start + 1)
        if end < 0:
            raise self.fail("unterminated string", start)
        self.pos = end + 1
        return self.text[start + 1:end]

    def comma(self) -> None:
        self.expect(",")

    def depth(self) -> int | None:
        if self.peek() != ",":
            return None
        self.pos += 1
        word = self.word()
        if word is None or not _INT.match(word[0]):
            raise self.fail(f"expected a depth (a non-negative integer), found {self.found()}")
        self.pos = word[1]
        return int(word[0])

    def regex(self) -> re.Pattern[str]:
        """A quoted string, or the raw text up to the next ',' or ')' outside brackets."""
        self.skip()
        start = self.pos
        if self.peek() in ("'", '"'):
            text = self.string()
        else:
            depth, i = 0, self.pos
            while i < len(self.text):
                char = self.text[i]
                if char == "\\":
                    i += 2
                    continue
                if char in "([{":
                    depth += 1
                elif char in ")]}":
                    if depth == 0:
                        break
                    depth -= 1
                elif char == "," and depth == 0:
                    break
                i += 1
            text = self.text[self.pos:i].strip()
            if not text:
                raise self.fail(f"expected a regular expression, found {self.found()}")
            self.pos = i
        try:
            return re.compile(text)
        except re.error as error:
            raise self.fail(f"bad regular expression '{text}': {error}", start) from None
        except (RecursionError, OverflowError, MemoryError):
            raise self.fail("bad regular expression: nested too deeply or too large",
                            start) from None

    def f_deps(self) -> Deps:
        expr = self.expression()
        return Deps(expr, self.depth())

    def f_rdeps(self) -> Rdeps:
        universe = self.expression()
        self.comma()
        expr = self.expression()
        return Rdeps(universe, expr, self.depth())

    def f_allpaths(self) -> Allpaths:
        start = self.expression()
        self.comma()
        return Allpaths(start, self.expression())

    def f_somepath(self) -> Somepath:
        start = self.expression()
        self.comma()
        return Somepath(start, self.expression())

    def f_filter(self) -> Filter:
        regex = self.regex()
        self.comma()
        return Filter(regex, self.expression())

    def f_tests(self) -> Tests:
        return Tests(self.expression())

    def f_buildfiles(self) -> Buildfiles:
        return Buildfiles(self.expression())

    def f_kind(self) -> Kind:
        regex = self.regex()
        self.comma()
        return Kind(regex, self.expression())

    def f_attr(self) -> Attr:
        word = self.word()
        if self.peek() in ("'", '"'):
            name = self.string()
        elif word is not None:
            name, self.pos = word
        else:
            raise self.fail(f"expected an attribute name, found {self.found()}")
        self.comma()
        regex = self.regex()
        self.comma()
        return Attr(name, regex, self.expression())


def parse_query(text: str, cwd_package: str = "") -> Expr:
    """Parse EXPR; a syntax error is a UsageError naming the column, a malformed label a
    BuildFileError."""
    return _Parser(text, cwd_package).parse()


# -- evaluation ------------------------------------------------------------------------------------


def _closure(start: Iterable[int], edges: Sequence[Sequence[int]], depth: int | None,
             within: set[int] | None = None) -> set[int]:
    """Nodes reachable from `start` along `edges` (at most `depth` steps), optionally inside
    `within`.

    Breadth-first, one frontier at a time, with set operations (they run in C: deps(//...) of a
    10,000-target workspace takes a few milliseconds).
    """
    seen = set(start) if within is None else set(start) & within
    frontier = seen
    steps = 0
    while frontier and (depth is None or steps < depth):
        reached = set(chain.from_iterable(map(edges.__getitem__, frontier)))
        reached -= seen
        if within is not None:
            reached &= within
        seen |= reached
        frontier = reached
        steps += 1
    return seen


def _somepath(start: set[int], end: set[int], deps: Sequence[Sequence[int]]) -> set[int]:
    """The nodes of one path from `start` to `end` along `deps` (a shortest one, found breadth
    first in node order, so the same graph always gives the same path), or none."""
    parent: dict[int, int | None] = {node: None for node in sorted(start)}
    frontier = list(parent)
    while frontier:
        for node in frontier:
            if node in end:
                path = set()
                step: int | None = node
                while step is not None:
                    path.add(step)
                    step = parent[step]
                return path
        reached = []
        for node in frontier:
            for child in deps[node]:
                if child not in parent:
                    parent[child] = node
                    reached.append(child)
        frontier = reached
    return set()


class Evaluator:
    """Evaluates a parsed expression on a TargetGraph into a set of node numbers."""

    def __init__(self, graph: TargetGraph) -> None:
        self.graph = graph

    def __call__(self, expr: Expr) -> set[int]:
        graph = self.graph
        if isinstance(expr, Pattern):
            return self.pattern(expr.pattern)
        # a chain `a + b - c ...` nests to the left: walked, not recursed
        if isinstance(expr, SetOp):
            spine = []
            while isinstance(expr, SetOp):
                spine.append(expr)
                expr = expr.left
            found = self(expr)
            for step in reversed(spine):
                right = self(step.right)
                found = found | right if step.op == "+" else found - right if step.op == "-" \
                    else found & right
            return found
        if isinstance(expr, Deps):
            return _closure(self(expr.expr), graph.deps, expr.depth)
        if isinstance(expr, Rdeps):
            universe = _closure(self(expr.universe), graph.deps, None)
            return _closure(self(expr.expr), graph.rdeps, expr.depth, universe)
        if isinstance(expr, Allpaths):
            reachable = _closure(self(expr.start), graph.deps, None)
            return _closure(self(expr.end), graph.rdeps, None, reachable)
        if isinstance(expr, Somepath):
            return _somepath(self(expr.start), self(expr.end), graph.deps)
        if isinstance(expr, Kind):
            search = expr.regex.search
            return {n for n in self(expr.expr) if search(graph.kind_text(n))}
        if isinstance(expr, Filter):
            search, labels = expr.regex.search, graph.labels
            return {n for n in self(expr.expr) if search(labels[n])}
        if isinstance(expr, Tests):
            names, kind_of = graph.kind_names, graph.kind_of
            return {n for n in self(expr.expr) if names[kind_of[n]].endswith(TEST_SUFFIX)}
        if isinstance(expr, Buildfiles):
            files = dict(zip(graph.packages, graph.package_files))
            labels = graph.labels
            packages = {labels[n][2:].partition(":")[0] for n in self(expr.expr)}
            return set(chain.from_iterable(files.get(p, ()) for p in packages))
        if isinstance(expr, Attr):
            search = expr.regex.search
            column = graph.column(expr.name)
            return {n for n in self(expr.expr)
                    if (values := column[n]) is not None and any(map(search, values))}
        raise TypeError(f"not a query expression: {expr!r}")

    def pattern(self, pattern: TargetPattern) -> set[int]:
        graph = self.graph
        rules = graph.rules_by_package()
        if pattern.kind is PatternKind.SINGLE:
            return {self.single(pattern)}
        if pattern.kind is PatternKind.ALL:
            if pattern.package not in rules:
                from posbuild.load.loader import package_hint  # only for the error

                raise BuildFileError(f"no such package '//{pattern.package}'" + package_hint(
                    pattern.package, graph.packages))
            named = graph.index(f"//{pattern.package}:all") if pattern.label else None
            if named is not None and named in rules[pattern.package]:
                return {named}  # as in Bazel, `:all` is the target `all` when there is one
            found = set(rules[pattern.package])
        else:
            found = set(chain.from_iterable(nodes for p, nodes in rules.items()
                                            if pattern.covers_package(p)))
        if not found:
            hint = did_you_mean(pattern.package, graph.packages) \
                if pattern.package not in rules else ""
            raise BuildFileError(f"pattern '{pattern}' matches no targets" + hint)
        return found

    def single(self, pattern: TargetPattern) -> int:
        graph = self.graph
        label = pattern.label
        assert label is not None
        node = graph.index(str(label))
        if node is None:
            node = graph.output_owner(str(label))
        if node is not None:
            return node
        if label.package not in graph.packages:
            from posbuild.load.loader import package_hint  # only for the error

            raise BuildFileError(f"no such package '//{label.package}'" + package_hint(
                label.package, graph.packages))
        prefix = f"//{label.package}:"
        names = [n[len(prefix):] for n in graph.labels if n.startswith(prefix)]
        raise BuildFileError(f"no such target '{label}'" + did_you_mean(label.name, names))


# -- output ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The nodes a query selected (sorted node numbers) and the graph they belong to."""

    graph: TargetGraph
    nodes: tuple[int, ...]

    @property
    def labels(self) -> list[str]:
        labels = self.graph.labels
        return [labels[n] for n in self.nodes]

    def edges(self) -> list[tuple[str, str]]:
        """Edges between selected nodes, (dependent, dependency), sorted."""
        selected = set(self.nodes)
        labels, deps = self.graph.labels, self.graph.deps
        return [(labels[n], labels[d]) for n in self.nodes for d in deps[n] if d in selected]

    def render(self, output: str) -> str:
        if output == "label":
            labels = self.labels
            return "\n".join(labels) + "\n" if labels else ""
        if output == "json":
            kinds = {self.graph.labels[n]: self.graph.kind_text(n) for n in self.nodes}
            document = {"labels": self.labels, "edges": [list(e) for e in self.edges()],
                        "kinds": kinds}
            return json.dumps(document, indent=2) + "\n"
        if output == "graph":
            lines = ["digraph posbuild {"]
            lines += [f"  {_dot(label)};" for label in self.labels]
            lines += [f"  {_dot(a)} -> {_dot(b)};" for a, b in self.edges()]
            return "\n".join(lines) + "\n}\n"
        if output == "build":
            return self.build_text()
        raise UsageError(f"unknown output format '{output}' (known: {', '.join(OUTPUTS)})")


    def build_text(self) -> str:
        """The selected rules as BUILD text, as `bazel query --output build` prints them: a
        `# /path/BUILD:line:column` comment, then the call with the attributes set, then a blank
        line. Source files are not printed."""
        entries = self.graph.build_entries()
        rules = [n for n in self.nodes if entries[n] is not None]
        lines = self._lines_found([n for n in rules if entries[n][1] == 0])
        blocks = []
        for node in rules:
            file, line, column, attrs = entries[node]
            if line == 0:
                line, column = lines[node]
            kind = self.graph.kind_names[self.graph.kind_of[node]]
            name = self.graph.labels[node].partition(":")[2]
            text = [f"# {self.graph.root / file}:{line}:{column}", f"{kind}(",
                    f"  name = {_starlark(name)},"]
            text += [f"  {attr} = {_starlark(value)}," for attr, value in attrs]
            blocks.append("\n".join([*text, ")", ""]) + "\n")
        return "".join(blocks)

    def _lines_found(self, nodes: list[int]) -> dict[int, tuple[int, int]]:
        """The line and column of rules declared in a loop: their BUILD files are evaluated again
        (the loader finds the statement), which only `--output build` of such rules pays for."""
        if not nodes:
            return {}
        from posbuild.load.loader import Loader

        graph = self.graph
        loader = Loader(load_config(graph.root), graph.packages)
        calls = _CallSites(graph.root)
        found = {}
        for node in nodes:
            package, _, name = graph.labels[node][2:].partition(":")
            location = loader.package(package).by_name[name].location
            assert location is not None
            found[node] = calls.call_at(location.file, location.line)
        return found


def _starlark(value: Any) -> str:
    """A value as Starlark source: strings double-quoted, lists, dicts, True/False, ints."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_starlark, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_starlark(k)}: {_starlark(v)}" for k, v in value.items()) + "}"
    return str(value)


def _dot(label: str) -> str:
    return '"' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_query(root: Path, text: str, cwd_package: str = "",
              config: Config | None = None) -> QueryResult:
    """Parse and evaluate one query in the workspace at `root`."""
    expr = parse_query(text, cwd_package)  # before loading: a typo costs no BUILD evaluation
    graph = load_graph(config or load_config(root))
    return QueryResult(graph, tuple(sorted(Evaluator(graph)(expr))))
