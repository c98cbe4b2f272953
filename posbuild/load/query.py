"""Layer 2: `posbuild query` — a small Bazel-style query language over the target graph.

The graph. Its nodes are every rule target (genrule, filegroup, ...) and, as in Bazel, every source
file that some target names in `srcs` or `tools` (or a py_task's `script` and `deps`; kind "source
file"). Its edges point from a target to what it depends on: each such entry. An entry that names an
output of a rule (`//pkg:out.txt`) is an edge to that rule; posbuild has no separate "generated
file" nodes. Filegroups are nodes like any rule, although they have no action.

The language (DESIGN §4):

    expr := term (op term)*            op: + union   - except   ^ intersect
    term := ( expr ) | PATTERN | "PATTERN"
          | deps(expr [, depth])       expr and everything it depends on, transitively
          | rdeps(universe, expr [, depth])   what depends on expr, inside deps(universe)
          | allpaths(from, to)         every node on a dependency path from `from` to `to`
          | kind(REGEX, expr)          nodes whose kind ("genrule rule", "filegroup rule",
                                       "source file") the regex matches, anywhere in it
          | attr(NAME, REGEX, expr)    rule nodes whose attribute NAME (for a list or dict, any
                                       element; a dict element reads `key=value`) the regex matches

As in Bazel, the three set operators have equal precedence and group from the left:
`a + b ^ c` is `(a + b) ^ c`; write parentheses for anything else. A PATTERN is a target pattern
(`//...`, `//pkg/...`, `//pkg:all`, `//pkg:name`, `:name` in the current folder's package); the
wildcards select rule targets only. A REGEX may be quoted, or written bare up to the next `,` or
`)` outside brackets (`kind(genrule|filegroup, //...)`).

Speed. Evaluating BUILD files is the slow part, so the whole workspace's target graph is cached in
`.posbuild/graphs/targets.query`, valid exactly as long as graphcache.py's entries are: the stamps
of every folder walked, of every BUILD/.bzl file read and of posbuild.toml. A query on an unchanged
workspace reads that file and never evaluates Starlark. Node numbers follow the sorted label order,
so a result is sorted by sorting integers, and attributes and output names are decoded only when
a query needs them.
"""

from __future__ import annotations

import json
import re
import time
from itertools import chain
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import msgpack

from posbuild import __version__
from posbuild.host.atomic import write_atomically
from posbuild.workspace.config import Config, load_config
from posbuild.errors import BuildFileError, UsageError
from posbuild.core.label import (Label, PatternKind, TargetPattern, did_you_mean, parse_label,
                            parse_pattern)
from posbuild.core.label import shown as label_shown
from posbuild.core.layout import CONFIG_NAME, GRAPHS
from posbuild.load.stamps import file_stamp, racy_digests, stamps_current
from posbuild.core.target import SCHEMAS

CACHE_FORMAT = 2
CACHE_NAME = "targets.query"
SOURCE_FILE = "source file"
OUTPUTS = ("label", "json", "graph")
FUNCTIONS = ("deps", "rdeps", "allpaths", "kind", "attr")
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
                 "_attr_blobs", "_outs_blob", "_rdeps", "_index", "_columns", "_outs")

    def __init__(self, root: Path, packages: Sequence[str], labels: Sequence[str],
                 kind_names: Sequence[str],
                 kind_of: Sequence[int], deps: Sequence[Sequence[int]],
                 rules: Sequence[Sequence[int]],
                 attr_blobs: dict[str, bytes], outs_blob: bytes) -> None:
        self.root = root
        self.packages = tuple(packages)
        self.labels = labels
        self.kind_names = kind_names
        self.kind_of = kind_of
        self.deps = deps
        self.rules = rules
        self._attr_blobs = attr_blobs
        self._outs_blob = outs_blob
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

    def kind_text(self, node: int) -> str:
        """What kind() matches: `genrule rule`, `filegroup rule` or `source file`, as in Bazel."""
        kind = self.kind_names[self.kind_of[node]]
        return kind if kind == SOURCE_FILE else f"{kind} rule"

    def entry(self) -> list[Any]:
        """The graph as plain msgpack-able values, in the order `TargetGraph(root, *entry)` takes
        them."""
        return [list(self.packages), list(self.labels), list(self.kind_names), list(self.kind_of),
                [list(d) for d in self.deps], [list(r) for r in self.rules], dict(self._attr_blobs),
                self._outs_blob]


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
    for label, target in targets.items():
        found: set[Label] = set()
        for attr, text in _entries(target):
            dep = _resolve_entry(loader, targets, outputs, target, attr, text)
            if dep not in targets and dep not in outputs:
                sources.add(dep)
            found.add(outputs.get(dep, dep))
        edges[label] = found
    nodes = sorted([*targets, *sources])
    number = {label: i for i, label in enumerate(nodes)}
    kind_names = sorted({SOURCE_FILE, *(t.kind for t in targets.values())})
    kind_number = {k: i for i, k in enumerate(kind_names)}
    columns: dict[str, list[list[str] | None]] = {}
    rules: dict[str, list[int]] = {p: [] for p in package_names}
    for label in nodes:
        declared = targets.get(label)
        if declared is None:
            continue
        rules[label.package].append(number[label])
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
        attr_blobs={a: msgpack.packb(c, use_bin_type=True) for a, c in sorted(columns.items())},
        outs_blob=msgpack.packb({str(o): number[r] for o, r in outputs.items()}, use_bin_type=True),
    )
    return graph, list(dirs), sorted({*loader.files_read, CONFIG_NAME}), loader.digests


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
        if not isinstance(entry, tuple) or len(entry) != 12 \
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


Expr = Pattern | Deps | Rdeps | Allpaths | Kind | Attr | SetOp


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
        if isinstance(expr, Kind):
            search = expr.regex.search
            return {n for n in self(expr.expr) if search(graph.kind_text(n))}
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
        raise UsageError(f"unknown output format '{output}' (known: {', '.join(OUTPUTS)})")


def _dot(label: str) -> str:
    return '"' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_query(root: Path, text: str, cwd_package: str = "",
              config: Config | None = None) -> QueryResult:
    """Parse and evaluate one query in the workspace at `root`."""
    expr = parse_query(text, cwd_package)  # before loading: a typo costs no BUILD evaluation
    graph = load_graph(config or load_config(root))
    return QueryResult(graph, tuple(sorted(Evaluator(graph)(expr))))
