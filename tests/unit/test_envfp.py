"""The environment fingerprint and h_E (envfp.py): entries, what is hashed, the stamp-keyed cache,
diffs."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from posbuild.workspace import envfp
from posbuild.workspace.config import load_config
from posbuild.errors import EnvironmentDrift, WorkspaceError


def workspace(tmp_path: Path, toml: str = "") -> Path:
    root = tmp_path / "ws"
    root.mkdir(exist_ok=True)
    (root / "posbuild.toml").write_text(toml)
    return root


def test_fingerprint_has_every_kind_of_entry_sorted() -> None:
    table = envfp.fingerprint(["sh"])
    assert list(table) == sorted(table)
    assert table["python.implementation"] == sys.implementation.name
    assert table["python.version"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    assert table["os.system"] == os.uname().sysname
    assert table["cpu.arch"] == os.uname().machine
    assert table["os.kernel"] == os.uname().version
    assert table["libc"] and table["cpu.model"]
    assert {"dist.click", "dist.blake3", "dist.msgpack", "dist.starlark-pyo3"} <= set(table)
    path, digest = table["tool.sh"].split()
    assert os.path.isabs(path) and len(digest) == 64


def test_hash_ignores_recorded_only_entries() -> None:
    table = envfp.fingerprint()
    base = envfp.hash_of(table)
    assert envfp.hash_of({**table, "cpu.model": "elsewhere", "host.name": "other"}) == base
    assert envfp.hash_of({**table, "os.release": "0.0"}) != base
    assert envfp.hash_of({k: v for k, v in table.items() if k != "dist.click"}) != base
    assert not envfp.is_hashed("cpu.model") and envfp.is_hashed("python.version")


def test_differences_are_added_removed_changed_in_name_order() -> None:
    changes = envfp.differences({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "5", "d": "4"})
    assert [str(c) for c in changes] == ["changed b 2 -> 5", "removed c 3", "added d 4"]


def test_cache_is_used_while_stamps_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(workspace(tmp_path))
    first = envfp.current(config)
    assert (config.state_dir / envfp.CACHE_NAME).is_file()

    def boom(resolved):  # type: ignore[no-untyped-def]
        raise AssertionError("recomputed although no stamp changed")

    monkeypatch.setattr(envfp, "_compute", boom)
    assert envfp.current(config) == first
    with pytest.raises(AssertionError):
        envfp.current(config, fresh=True)


def test_a_changed_tool_changes_the_stamps_and_h_e(tmp_path: Path) -> None:
    tool = tmp_path / "mytool"
    shutil.copy("/bin/true", tool)
    config = load_config(workspace(tmp_path, f'[env]\ntools = ["{tool}"]\n'))
    before = envfp.current(config)
    assert before.entries[f"tool.{tool}"].startswith(f"{tool} ")
    with open(tool, "ab") as handle:
        handle.write(b"\0")
    after = envfp.current(config)  # from the cache file, which must not be reused
    assert after.hash != before.hash
    assert after.entries[f"tool.{tool}"] != before.entries[f"tool.{tool}"]


def test_a_missing_tool_names_it(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no-such-tool-xyz"):
        envfp.resolve_tools(["no-such-tool-xyz"])
    with pytest.raises(WorkspaceError, match="/nonexistent/tool"):
        envfp.resolve_tools(["/nonexistent/tool"])


def test_overrides_add_replace_and_remove(tmp_path: Path) -> None:
    config = load_config(workspace(tmp_path))
    raw = json.dumps({"python.version": "9.9.9", "dist.extra": "1.0", "dist.click": None})
    now = envfp.current(config, envfp.parse_overrides(raw))
    assert now.entries["python.version"] == "9.9.9" and now.entries["dist.extra"] == "1.0"
    assert "dist.click" not in now.entries
    for bad in ("[1]", "{", '{"a": 1}'):
        with pytest.raises(WorkspaceError, match="POSBUILD_TEST_FINGERPRINT"):
            envfp.parse_overrides(bad)


def test_build_check_raises_orch_07_or_warns(tmp_path: Path) -> None:
    from posbuild.workspace.lockfile import Lock, write_lock

    root = workspace(tmp_path)
    config = load_config(root)
    approved = envfp.current(config)
    write_lock(root, Lock({}, envfp.approval_record(approved)))
    assert envfp.checked_environment_hash(config, {}, False, print) == approved.hash
    drifted = {envfp.TEST_VARIABLE: json.dumps({"libc": "musl 1.2"})}
    with pytest.raises(EnvironmentDrift) as caught:
        envfp.checked_environment_hash(config, drifted, False, print)
    assert caught.value.exit_code == 17 \
            and f"changed libc {approved.entries['libc']} -> musl 1.2" in caught.value.detail
    warnings: list[str] = []
    assert envfp.checked_environment_hash(config, drifted, True, warnings.append) != approved.hash
    assert len(warnings) == 1 and "musl 1.2" in warnings[0]


def test_environment_key_follows_the_hash() -> None:
    assert envfp.environment_key([], b"a" * 32) != envfp.environment_key([], b"b" * 32)
    assert envfp.environment_key([], b"a" * 32) != envfp.environment_key([("X", "1")], b"a" * 32)
    assert envfp.environment_key([]) == envfp.environment_key([], envfp.environment_hash())


def test_lock_name_is_spelled_once() -> None:
    from posbuild.core import layout
    from posbuild.engine import pins
    from posbuild.workspace import lockfile

    assert envfp.LOCK_NAME is lockfile.LOCK_NAME is pins.LOCK_NAME is layout.LOCK_NAME
