"""Property test of output ownership, in process: random packages with random nested outputs.

Every workspace whose outputs overlap (one another, a source file, a subpackage's folder) is
refused while its packages load, with a message naming the owners; every other one loads and
analyses. The end-to-end twin in tests/e2e/test_ownership.py builds a few of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ownership_cases import Case, generate
from posbuild.load.analysis import Analyzer
from posbuild.workspace.config import load_config
from posbuild.errors import BuildFileError
from posbuild.core.label import Label
from posbuild.load.loader import Loader, discover_packages

PHRASES = ("crosses into package", "conflicts with", "is already an output of", "lists '")


def write(root: Path, case: Case) -> None:
    root.mkdir()
    for rel, text in case.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def load_all(root: Path) -> None:
    """Load every package and analyse every target, as `posbuild build //...` would."""
    config = load_config(root)
    packages, _ = discover_packages(root, config.build_file_names)
    loader = Loader(config, packages)
    roots: list[Label] = [t.label for p in packages for t in loader.package(p).targets]
    Analyzer(loader).analyze(roots)


@pytest.mark.parametrize("block", range(4))
def test_every_overlap_is_refused_and_every_other_workspace_loads(tmp_path, block):
    refused = loaded = 0
    for seed in range(block * 150, (block + 1) * 150):
        case = generate(seed)
        root = tmp_path / f"s{seed}"
        write(root, case)
        try:
            load_all(root)
        except BuildFileError as error:
            assert case.conflict, (
                f"seed {seed}: refused without an overlap: {error.render()}\n{case.files}")
            assert any(p in error.detail for p in PHRASES), f"seed {seed}: {error.render()}"
            refused += 1
        else:
            assert not case.conflict, f"seed {seed}: {case.conflict} was not refused\n{case.files}"
            loaded += 1
    assert refused > 20 and loaded > 20  # the generator reaches both sides
