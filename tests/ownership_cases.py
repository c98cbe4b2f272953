"""Random workspaces with nested packages, sources and outputs, and an oracle for output ownership.

Shared by the in-process property test (tests/unit) and its end-to-end twin (tests/e2e). A small
alphabet of path components makes overlaps frequent; the oracle states the ownership rule in its
plainest form: an output path may not equal, lie above or lie below another output, a file of the
source tree, or the folder of a package nested in its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PARTS = ("a", "b", "c", "x.txt", "y.txt")
SOURCE_PARTS = ("c", "x.txt", "s.txt")
PACKAGE_PARTS = ("a", "b")


@dataclass(frozen=True)
class Case:
    files: dict[str, str]  # workspace-relative path -> text (BUILD files and sources)
    packages: tuple[str, ...]
    outputs: tuple[tuple[str, str, str], ...]  # (package, target name, output), one per declaration
    conflict: str  # "" when every output has one owner, else why not (for the assertion message)


def _full(package: str, rel: str) -> str:
    return f"{package}/{rel}" if package else rel


def _overlap(x: str, y: str) -> bool:
    return x == y or x.startswith(y + "/") or y.startswith(x + "/")


def _under(inner: str, outer: str) -> bool:
    return inner != outer and (not outer or inner.startswith(outer + "/"))


def generate(seed: int) -> Case:
    """One random workspace; the same seed always gives the same workspace."""
    rng = random.Random(seed)
    packages = sorted({"/".join(rng.choice(PACKAGE_PARTS) for _ in range(rng.randint(0, 2)))
                       for _ in range(rng.randint(1, 4))})
    files = {"posbuild.toml": ""}
    folders = {""}
    for package in packages:
        while package:
            folders.add(package)
            package = package.rpartition("/")[0]
    sources: list[str] = []
    for _ in range(rng.randint(0, 3)):
        path = _full(rng.choice(packages),
                     "/".join(rng.choice(SOURCE_PARTS) for _ in range(rng.randint(1, 2))))
        parents = [path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)]
        if path in folders or path in files or any(p in files for p in parents):
            continue  # the file system cannot hold it
        files[path] = f"source {path}\n"
        sources.append(path)
        folders.update(parents)
    outputs: list[tuple[str, str, str]] = []
    for package in packages:
        calls = []
        for t in range(rng.randint(1, 2)):
            outs = ["/".join(rng.choice(PARTS) for _ in range(rng.randint(1, 3)))
                    for _ in range(rng.randint(1, 2))]
            outputs.extend((package, f"t{t}", out) for out in outs)
            label = f"//{package}:t{t}"
            calls.append(f'genrule(name = "t{t}", outs = {outs!r}, '
                         f'cmd = "for o in $(OUTS); do echo {label} > $$o; done")\n')
        files[_full(package, "BUILD")] = "".join(calls)
    return Case(files, tuple(packages), tuple(outputs), _conflict(packages, files, outputs))


def _conflict(packages: list[str], files: dict[str, str],
              outputs: list[tuple[str, str, str]]) -> str:
    claims = [(_full(package, out), package, f"//{package}:{name}")
              for package, name, out in outputs]
    for i, (path, package, owner) in enumerate(claims):
        for other, _, other_owner in claims[i + 1:]:
            if _overlap(path, other):
                return f"{path} of {owner} / {other} of {other_owner}"
        for inner in packages:
            if _under(inner, package) and _overlap(path, inner):
                return f"{path} of {owner} / package {inner}"
        for source in files:
            if _overlap(path, source):
                return f"{path} of {owner} / source {source}"
    return ""


def cases(count: int, conflict: bool, start: int = 0) -> list[int]:
    """The first `count` seeds from `start` whose workspace has (or has not) a conflict."""
    seeds = []
    seed = start
    while len(seeds) < count:
        if bool(generate(seed).conflict) == conflict:
            seeds.append(seed)
        seed += 1
    return seeds
