"""posbuild.toml is strict: config.TABLES names every table and key that load_config reads.

A key read but missing from TABLES would be refused as unknown; a key listed but never read
would be accepted and ignored. Both are caught here by reading config.py's own calls.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import posbuild.workspace.config as config
from posbuild.workspace.config import TABLES, load_config

READERS = {"_get", "_string_list", "_choice"}


def keys_read() -> set[tuple[str, str]]:
    tree = ast.parse(Path(config.__file__).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in READERS:
            section, key = node.args[1], node.args[2]
            if isinstance(section, ast.Constant) and isinstance(key, ast.Constant):
                found.add((section.value, key.value))
    return found


def test_every_key_read_is_known_and_every_known_key_is_read():
    read = keys_read() | {("resources", name) for name in config.RESOURCE_NAMES}  # read in a loop
    listed = {(section, key) for section, keys in TABLES.items() for key in keys}
    assert read == listed


def test_the_documented_example_configuration_is_accepted(tmp_path):
    page = (Path(config.__file__).parents[2] / "docs" / "configuration.md").read_text()
    section = page.split("# Configuration: `posbuild.toml`", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example
    (tmp_path / "posbuild.toml").write_text(example.group(1))
    loaded = load_config(tmp_path)
    assert loaded.jobs == 8 and loaded.resources.mem_mb == 16384 \
            and loaded.roles[0].name == ("release")
