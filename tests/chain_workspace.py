"""The workspace the kill tests build: packages of chained tiny actions that also read across
packages, and the bytes of everything a build put in posbuild-out/.

Shared by tests/faults/test_crash_fsck.py and test_kill_suite.py, which kill builds of it at many
instants and compare what the next build leaves with a clean build of the same version.
"""

from __future__ import annotations

from pathlib import Path


def chain_files(version: int, packages: int, per_package: int, changed: int,
                after: str = "") -> dict[str, str]:
    """The sources and BUILD files: in each package `p`, action `t{p*100+i}` reads the one before
    it (the first reads `seed.txt`), and every fifth also reads an action of the next package.
    `version` changes the seeds of the first `changed` packages; `after` is shell appended to
    each command once its output is written ({n} stands for the action's name)."""
    files = {}
    for p in range(packages):
        files[f"p{p}/seed.txt"] = f"seed {p} version {version if p < changed else 0}\n"
        rules = []
        for i in range(per_package):
            n = p * 100 + i
            srcs = ['"seed.txt"'] if i == 0 else [f'":t{n - 1}"']
            if i >= 5 and i % 5 == 0:
                q = (p + 1) % packages
                srcs.append(f'"//p{q}:t{q * 100 + i - 5}"')
            tail = after.replace("{n}", f"t{n}")
            rules.append(f'genrule(name = "t{n}", srcs = [{", ".join(srcs)}], outs = ["t{n}.txt"], '
                         f'cmd = "{{ echo t{n}; cat $(SRCS) | cksum; }} > $@{tail}")')
        files[f"p{p}/BUILD"] = "\n".join(rules) + "\n"
    return files


def outputs(root: Path) -> dict[str, bytes]:
    """Every file under posbuild-out/, by its path there."""
    out = root / "posbuild-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
