"""Import layering (ARCHITECTURE.md §2), checked by parsing every module of posbuild/ with `ast`.

Two levels. The sub-packages are ordered by phase, errors < core < host < workspace < load <
store < exec < engine < cli: a module may import any module of an earlier package, and each
package's `__init__` docstring says which ("May import: ..."). Inside one package, each module's
docstring starts with "Layer N:", and a module imports only modules of its package with a
strictly lower N. The cli command modules have no layer of their own: they take the cli
package's, and may import the package itself. Only `posbuild/__init__.py` (the version string),
`posbuild/__main__.py` (the `python -m posbuild` shim) and `posbuild/client.py` (the command a
user runs, above everything: it hands a build to the build server or runs the cli) are exempt,
and they are named explicitly, so a module that loses its "Layer N" line fails here instead of
silently escaping.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import posbuild

PACKAGE_DIR = Path(posbuild.__file__).parent
EXEMPT = {"posbuild", "posbuild.__main__", "posbuild.client"}
LAYER_RE = re.compile(r"\ALayer (\d+):")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported posbuild module (or a third-party top-level name)
    line: int

    def __str__(self) -> str:
        return f"{self.source} (line {self.line}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def parse_modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(), str(path))
            for path in sorted(PACKAGE_DIR.rglob("*.py"))}


MODULES = parse_modules()


def is_package(name: str) -> bool:
    return (PACKAGE_DIR.parent / name.replace(".", "/") / "__init__.py").is_file()


def own_layer(tree: ast.Module) -> int | None:
    doc = ast.get_docstring(tree, clean=False) or ""
    match = LAYER_RE.match(doc)
    return int(match.group(1)) if match else None


def layer_table() -> dict[str, int]:
    """Layer of every module: from its docstring, else inherited from its enclosing package."""
    table: dict[str, int] = {}
    for name in sorted(MODULES, key=lambda n: n.count(".")):  # packages before their modules
        layer = own_layer(MODULES[name])
        if layer is None and name not in EXEMPT:
            parent = name.rpartition(".")[0]
            layer = table.get(parent)
        if layer is not None:
            table[name] = layer
    return table


LAYERS = layer_table()

# the phases, bottom first; errors.py is the one module at the top level, below them all
PACKAGES = ("errors", "core", "host", "workspace", "load", "store", "exec", "engine", "cli")
MAY_IMPORT_RE = re.compile(r"^May import: (.*)\.$", re.M)


def package_of(name: str) -> str:
    """The phase a module belongs to ("errors" for posbuild.errors)."""
    return name.split(".")[1]


def rank(name: str) -> tuple[int, int]:
    """Where a module sits: its package's place in PACKAGES, then its layer inside the package."""
    return PACKAGES.index(package_of(name)), LAYERS[name]


def _resolve_from(source: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    if not is_package(source):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str) -> list[Import]:
    """Every import in a module (top level, in functions, under TYPE_CHECKING), resolved to
    modules."""
    found: list[Import] = []
    for node in ast.walk(MODULES[source]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target not in MODULES and target.startswith("posbuild."):
                    target = target.rpartition(".")[0]
                found.append(Import(source, target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(source, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(Import(source, submodule if submodule in MODULES else base,
                                    node.lineno))
    return found


def posbuild_imports(source: str) -> list[Import]:
    return [i for i in imports_of(source) if i.target == "posbuild"
            or i.target.startswith("posbuild.")]


def in_cli(name: str) -> bool:
    return name == "posbuild.cli" or name.startswith("posbuild.cli.")


# -- the parsing itself works
# --------------------------------------------------------------------------


def test_modules_are_found_and_parsed() -> None:
    for name in ("posbuild.errors", "posbuild.engine.scheduler", "posbuild.store.lmdbstore",
                 "posbuild.cli", "posbuild.cli.build"):
        assert name in MODULES


def test_layer_table_matches_the_docstrings() -> None:
    assert LAYERS["posbuild.errors"] == 0
    assert LAYERS["posbuild.core.digest"] == 0
    assert LAYERS["posbuild.core.action"] > LAYERS["posbuild.core.records"]
    assert LAYERS["posbuild.cli"] == 0
    assert LAYERS["posbuild.cli.build"] == 0  # inherited from the cli package
    assert LAYERS["posbuild.engine.session"] > LAYERS["posbuild.engine.runphase"] \
        > LAYERS["posbuild.engine.scheduler"]


def test_import_resolution() -> None:
    targets = {i.target for i in posbuild_imports("posbuild.engine.runphase")}
    assert {"posbuild.engine.scheduler", "posbuild.store.lmdbstore",
            "posbuild.core.action"} <= targets
    assert {i.target for i in posbuild_imports("posbuild.workspace.envfp")} == {
        "posbuild", "posbuild.host.atomic", "posbuild.host.paths", "posbuild.workspace.config",
        "posbuild.core.digest",
        "posbuild.errors", "posbuild.core.layout", "posbuild.workspace.lockfile",
    }


def test_every_module_belongs_to_a_phase() -> None:
    """No module sits loose at the top level beside errors.py: each phase is a sub-package."""
    loose = sorted(name for name in MODULES if name not in EXEMPT
                   and package_of(name) not in PACKAGES)
    assert loose == []
    assert {package_of(name) for name in MODULES if name not in EXEMPT} == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES[1:])
def test_each_package_says_what_it_may_import(package: str) -> None:
    doc = ast.get_docstring(MODULES[f"posbuild.{package}"]) or ""
    match = MAY_IMPORT_RE.search(doc)
    assert match, f"posbuild/{package}/__init__.py does not say what it may import"
    below = ["posbuild.errors", *PACKAGES[1:PACKAGES.index(package)]]
    assert [part.strip() for part in match.group(1).split(",")] == below


@pytest.mark.parametrize("package", PACKAGES[1:-1])
def test_package_inits_import_nothing(package: str) -> None:
    """Importing one module of a phase must not import the rest of it: the no-op path loads only
    what it uses."""
    assert posbuild_imports(f"posbuild.{package}") == []


def test_every_module_has_a_layer_unless_explicitly_exempt() -> None:
    phases = {f"posbuild.{package}" for package in PACKAGES}  # package inits: no layer inside
    missing = sorted(name for name in MODULES
                     if name not in LAYERS and name not in EXEMPT and name not in phases)
    assert missing == [], f"modules whose docstring does not start with 'Layer N:': {missing}"


# -- the named rules
# -----------------------------------------------------------------------------------------


def test_errors_imports_nothing_from_posbuild() -> None:
    assert posbuild_imports("posbuild.errors") == []


def test_scheduler_imports_nothing_from_posbuild() -> None:
    assert [str(i) for i in posbuild_imports("posbuild.engine.scheduler")] == []


def test_sandbox_does_not_import_store() -> None:
    assert [str(i) for i in posbuild_imports(
        "posbuild.exec.sandbox") if i.target == "posbuild.store.lmdbstore"] == []


def test_package_init_imports_nothing_from_posbuild() -> None:
    """`posbuild/__init__.py` is imported by low layers (for __version__), so it must stay at the
    bottom."""
    assert [str(i) for i in posbuild_imports("posbuild")] == []


def test_nothing_outside_cli_imports_cli() -> None:
    allowed = {"posbuild.client"}  # the command: the server's client, or the cli itself
    offenders = [
        str(i) for name in MODULES if not in_cli(name) and name not in allowed
        for i in posbuild_imports(name) if in_cli(i.target)
    ]
    assert offenders == []


def test_the_client_imports_only_the_standard_library_until_it_builds_here() -> None:
    """The client's imports are every server build's start-up: C modules of the standard
    library (no `signal`, `socket` or `re`: their enums take milliseconds), then the cli only
    when the build runs in this process."""
    imported = {i.target for i in imports_of("posbuild.client")}
    assert imported <= {"__future__", "_socket", "_signal", "atexit", "os", "resource", "struct",
                        "sys", "time", "tomllib", "posbuild.cli", "posbuild.core.layout"}


def test_no_module_below_cli_imports_click() -> None:
    offenders = [
        str(i) for name in MODULES if not in_cli(name)
        for i in imports_of(name) if i.target == "click" or i.target.startswith("click.")
    ]
    assert offenders == []


# -- the general rule: imports go strictly downward
# -------------------------------------------------------


@pytest.mark.parametrize("source", sorted(name for name in MODULES if name in LAYERS))
def test_imports_go_to_strictly_lower_layers(source: str) -> None:
    violations = []
    for imp in posbuild_imports(source):
        if imp.target not in LAYERS:  # exempt targets (posbuild/__init__ is checked above)
            continue
        # a cli command module using its own package
        if in_cli(source) and imp.target == "posbuild.cli":
            continue
        if package_of(imp.target) == package_of(source):
            if LAYERS[imp.target] >= LAYERS[source]:
                violations.append(f"{imp}: layer {LAYERS[source]} -> layer {LAYERS[imp.target]}"
                                  f" within {package_of(source)}")
        elif rank(imp.target) > rank(source):
            violations.append(f"{imp}: {package_of(source)} may not import from "
                              f"{package_of(imp.target)}")
    assert violations == []
