"""The environment fingerprint (envfp.py): the platform, each program's entries, a Python's
packages, what an action's environment holds, the stamp-keyed cache, diffs and approval."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from posbuild.workspace import envfp
from posbuild.workspace.config import BASE_PATH, load_config
from posbuild.errors import EnvironmentDrift, WorkspaceError


def workspace(tmp_path: Path, toml: str = "") -> Path:
    root = tmp_path / "ws"
    root.mkdir(parents=True, exist_ok=True)
    (root / "posbuild.toml").write_text(toml)
    return root


def make_venv(where: Path) -> Path:
    """A virtual environment without pip (fast), whose site-packages tests can add
    distributions to."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    return where / "bin" / "python"


def add_dist(python: Path, name: str, version: str) -> None:
    site = next((python.parent.parent / "lib").glob("python3*/site-packages"))
    for old in site.glob(f"{name}-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_the_platform_is_in_every_table_and_the_recorded_entries_are_not_hashed() -> None:
    environments = envfp.Environments(BASE_PATH)
    table = environments.table().entries
    assert table["os.system"] == os.uname().sysname
    assert table["cpu.arch"] == os.uname().machine
    assert table["os.kernel"] == os.uname().version
    assert table["libc"] and table["cpu.model"] and table["posbuild.version"]
    assert not any(name.startswith(("tool.", "python[", "dist.")) for name in table)
    base = envfp.hash_of(table)
    assert envfp.hash_of({**table, "cpu.model": "x", "host.name": "y",
                          "posbuild.version": "99"}) == base
    assert envfp.hash_of({**table, "os.release": "0.0"}) != base


def test_a_program_is_its_path_and_digest_and_a_python_brings_its_packages(
        tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv")
    add_dist(python, "plotlib", "3.8.0")
    folder = str(python.parent)
    environments = envfp.Environments(f"{folder}:{BASE_PATH}")
    plain = environments.table(["sh"]).entries
    path, digest = plain["tool.sh"].split()
    assert path in ("/usr/local/bin/sh", "/usr/bin/sh", "/bin/sh") and len(digest) == 64
    assert not any(name.startswith("python[") for name in plain)
    with_python = environments.table(["python3"]).entries
    heads = {name.split("]")[0] + "]" for name in with_python if name.startswith("python[")}
    assert len(heads) == 1
    (head,) = heads
    assert head.startswith(f"python[{folder}/python3")
    assert with_python[head].startswith(f"{sys.implementation.name} 3.")
    assert with_python[f"{head}.dist.plotlib"] == "3.8.0"
    # python, python3 and python3.X of one environment are one interpreter
    both = environments.table(["python", "python3"]).entries
    assert {n for n in both if n.startswith("python[")} == \
        {n for n in with_python if n.startswith("python[")}


def test_a_script_whose_shebang_names_a_python_brings_that_pythons_packages(
        tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv")
    add_dist(python, "plotlib", "1.0")
    script = python.parent / "plot-tool"
    script.write_text(f"#!{python}\nprint(1)\n")
    script.chmod(0o755)
    env_script = tmp_path / "bin" / "other-tool"
    env_script.parent.mkdir()
    env_script.write_text("#!/usr/bin/env python3\n")
    env_script.chmod(0o755)
    environments = envfp.Environments(f"{python.parent}:{env_script.parent}:{BASE_PATH}")
    table = environments.table(["plot-tool"]).entries
    assert any(n.endswith(".dist.plotlib") and v == "1.0" for n, v in table.items())
    # `#!/usr/bin/env python3` finds the first python3 on the sandbox PATH: the venv's
    table = environments.table(["other-tool"]).entries
    assert any(n.endswith(".dist.plotlib") for n in table)


def test_each_action_gets_the_digest_of_what_it_runs(tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv")
    environments = envfp.Environments(f"{python.parent}:{BASE_PATH}")
    cat, sort_, python3 = (environments.digest(p) for p in (("cat",), ("sort",), ("python3",)))
    assert len({cat, sort_, python3}) == 3
    add_dist(python, "newpkg", "1.0")
    again = envfp.Environments(f"{python.parent}:{BASE_PATH}")
    assert again.digest(("cat",)) == cat and again.digest(("sort",)) == sort_
    assert again.digest(("python3",)) != python3


def test_tools_are_in_every_actions_environment(tmp_path: Path) -> None:
    tool = tmp_path / "mytool"
    shutil.copy("/bin/true", tool)
    environments = envfp.Environments(BASE_PATH, [str(tool)])
    before = environments.digest(("cat",))
    assert f"tool.{tool}" in environments.table(("cat",)).entries
    with open(tool, "ab") as handle:
        handle.write(b"\0")
    assert envfp.Environments(BASE_PATH, [str(tool)]).digest(("cat",)) != before


def test_a_missing_tool_names_it() -> None:
    with pytest.raises(WorkspaceError, match="no-such-tool-xyz"):
        envfp.resolve_tools(["no-such-tool-xyz"])
    with pytest.raises(WorkspaceError, match="/nonexistent/tool"):
        envfp.resolve_tools(["/nonexistent/tool"])
    # a command word that is not found is an entry, not an error: the command fails when it runs
    table = envfp.Environments(BASE_PATH).table(["no-such-program-xyz"]).entries
    assert table["tool.no-such-program-xyz"] == "not found"


def test_the_cache_is_used_while_stamps_hold(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    python = make_venv(tmp_path / "venv")
    config = load_config(workspace(tmp_path, f'[python]\ninterpreter = "{python}"\n'))
    first = envfp.Environments.of_workspace(config)
    digest = first.digest(("python3", "cat"))
    first.save()
    assert (config.state_dir / envfp.CACHE_NAME).is_file()

    def boom(word, search_path):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{word} examined again although no stamp changed")

    monkeypatch.setattr(envfp, "_examine", boom)
    assert envfp.Environments.of_workspace(config).digest(("python3", "cat")) == digest
    monkeypatch.undo()
    add_dist(python, "newpkg", "2.0")  # changes the site-packages folder's stamp
    assert envfp.Environments.of_workspace(config).digest(("python3", "cat")) != digest


def test_the_sandbox_path_puts_the_workspace_python_first(tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv")
    config = load_config(workspace(tmp_path, f'[python]\ninterpreter = "{python}"\n'))
    assert config.interpreter == str(python)
    assert envfp.sandbox_path(config) == f"{python.parent}:{BASE_PATH}"
    system = load_config(workspace(tmp_path / "other", '[python]\ninterpreter = "sh"\n'))
    assert envfp.sandbox_path(system) == BASE_PATH


def test_overrides_belong_to_the_actions_that_run_what_they_name() -> None:
    raw = json.dumps({"tool.cat": "/x 00", "os.release": "9.9", "libc": None})
    environments = envfp.Environments(BASE_PATH, overrides=envfp.parse_overrides(raw))
    cat = environments.table(["cat"]).entries
    sort_ = environments.table(["sort"]).entries
    assert cat["tool.cat"] == "/x 00" and "tool.cat" not in sort_
    assert cat["os.release"] == sort_["os.release"] == "9.9"
    assert "libc" not in cat and "libc" not in sort_
    for bad in ("[1]", "{", '{"a": 1}'):
        with pytest.raises(WorkspaceError, match="POSBUILD_TEST_FINGERPRINT"):
            envfp.parse_overrides(bad)


def test_differences_are_added_removed_changed_in_name_order() -> None:
    changes = envfp.differences({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "5", "d": "4"})
    assert [str(c) for c in changes] == ["changed b 2 -> 5", "removed c 3", "added d 4"]


def test_a_build_is_checked_against_the_approved_entries_it_uses(tmp_path: Path) -> None:
    from posbuild.workspace.lockfile import Lock, write_lock

    root = workspace(tmp_path)
    config = load_config(root)
    approved = envfp.Environments.of_workspace(config).table(["cat", "sort"])
    write_lock(root, Lock({}, envfp.approval_record(approved)))
    _, cat_hash = envfp.checked_environment(config, {}, ["cat"], False, print)
    assert cat_hash == envfp.Environments.of_workspace(config).table(["cat"]).hash
    # a program the build does not run may differ
    other = {envfp.TEST_VARIABLE: json.dumps({"tool.sort": "/elsewhere 00"})}
    envfp.checked_environment(config, other, ["cat"], False, print)
    with pytest.raises(EnvironmentDrift) as caught:
        envfp.checked_environment(config, other, ["sort"], False, print)
    assert "changed tool.sort" in caught.value.detail and caught.value.exit_code == 17
    drifted = {envfp.TEST_VARIABLE: json.dumps({"libc": "musl 1.2"})}
    with pytest.raises(EnvironmentDrift, match="musl 1.2"):
        envfp.checked_environment(config, drifted, ["cat"], False, print)
    warnings: list[str] = []
    envfp.checked_environment(config, drifted, ["cat"], True, warnings.append)
    assert len(warnings) == 1 and "musl 1.2" in warnings[0]
    # a program the approval never saw is drift too
    with pytest.raises(EnvironmentDrift, match="added tool.wc"):
        envfp.checked_environment(config, {}, ["wc"], False, print)


def test_environment_key_follows_the_hash() -> None:
    assert envfp.environment_key([], b"a" * 32) != envfp.environment_key([], b"b" * 32)
    assert envfp.environment_key([], b"a" * 32) != envfp.environment_key([("X", "1")], b"a" * 32)


def test_lock_name_is_spelled_once() -> None:
    from posbuild.core import layout
    from posbuild.engine import pins
    from posbuild.workspace import lockfile

    assert envfp.LOCK_NAME is lockfile.LOCK_NAME is pins.LOCK_NAME is layout.LOCK_NAME


def test_a_damaged_cache_is_examined_again(tmp_path: Path) -> None:
    config = load_config(workspace(tmp_path))
    first = envfp.Environments.of_workspace(config)
    digest = first.digest(("cat",))
    first.save()
    cache = config.state_dir / envfp.CACHE_NAME
    import msgpack

    fmt, rows = msgpack.unpackb(cache.read_bytes(), strict_map_key=False)
    cache.write_bytes(msgpack.packb([fmt, {key: [1, 2] for key in rows}]))
    assert envfp.Environments.of_workspace(config).digest(("cat",)) == digest
    cache.write_bytes(b"\xc1 not msgpack")
    assert envfp.Environments.of_workspace(config).digest(("cat",)) == digest
