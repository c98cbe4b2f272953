"""sandbox.py's Perturbation, one field at a time, and verify.py driven without libfaketime.

Runs real commands in real sandboxes under the test's tmp folder (on disk) or on /dev/shm, where
the build puts them by default, as each test needs.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

from posbuild.exec import sandbox as sandbox_module
from posbuild.core.action import Action, ActionGraph
from posbuild.workspace.config import load_config
from posbuild.exec.sandbox import (LocalSpawner, base_environment, find_libfaketime,
                                   listing_follows_creation)
from posbuild.exec.spawner import Perturbation
from posbuild.store.lmdbstore import Store
from posbuild.store.upstate import EMPTY
from posbuild.engine.verify import FIRST, SECOND, verify

SHM = Path("/dev/shm")


def _action(command: str, inputs: tuple[str, ...] = (),
            outputs: tuple[str, ...] = ("posbuild-out/pkg/out.txt",),
            env: tuple[tuple[str, str], ...] = (), label: str = "//pkg:probe",
            tags: tuple[str, ...] = ()) -> Action:
    return Action(label=label, kind="genrule", command=command, inputs=inputs, tools=(),
                  outputs=outputs, env=env,
                  versions=(), timeout=0, tags=tags, def_hash=b"\0" * 32, deps=(),
                  sources=tuple(p for p in inputs if not p.startswith("posbuild-out/")))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "pkg" / "data" / "deep").mkdir(parents=True)
    for name in "abcde":
        (root / "pkg" / "data" / f"{name}.txt").write_text(name + "\n")
    (root / "pkg" / "data" / "deep" / "z.txt").write_text("z\n")
    (root / "pkg" / "top.txt").write_text("top\n")
    (root / "posbuild.toml").write_text("")
    return root


@pytest.fixture
def sandboxes(workspace: Path, tmp_path: Path) -> LocalSpawner:
    return LocalSpawner(workspace, tmp_path / "sandboxes")


def _run(sandboxes: LocalSpawner, action: Action, perturbation: Perturbation | None = None) -> str:
    result = sandboxes.run(action, (), perturbation)
    try:
        assert result.exit_code == 0, result.stderr
        return (result.exec_root / action.outputs[0]).read_text()
    finally:
        sandboxes.remove(result)


DATA = tuple(f"pkg/data/{n}.txt" for n in "abcde") + ("pkg/data/deep/z.txt", "pkg/top.txt")


# ---- no perturbation: the build's own run ---------------------------------------------------

def test_default_run_sees_exactly_the_base_environment_in_a_short_folder(
    sandboxes: LocalSpawner) -> None:
    result = sandboxes.run(
        _action("env > posbuild-out/pkg/out.txt; pwd >> posbuild-out/pkg/out.txt"))
    try:
        *env_lines, pwd = (result.exec_root / "posbuild-out/pkg/out.txt").read_text().splitlines()
        assert re.fullmatch(rf"{re.escape(str(sandboxes._base))}/\d+-\d+/exec", pwd)
        env = dict(line.split("=", 1) for line in env_lines)
        # bash adds two
        assert env == {**base_environment(Path(pwd).parent), "SHLVL": "1", "_": "/usr/bin/env"}
    finally:
        sandboxes.remove(result)


def test_an_empty_perturbation_changes_nothing(sandboxes: LocalSpawner) -> None:
    action = _action("{ date +%Z; umask; ls -f pkg/data; } > ../o.tmp; mv ../o.tmp "
                     "posbuild-out/pkg/out.txt",
                     inputs=DATA)
    assert _run(sandboxes, action, Perturbation()) == _run(sandboxes, action)


# ---- each perturbation ------------------------------------------------------------------------

def test_name_suffix_lengthens_the_sandbox_path(sandboxes: LocalSpawner) -> None:
    action = _action("pwd > posbuild-out/pkg/out.txt")
    plain = _run(sandboxes, action).strip()
    longer = _run(sandboxes, action, Perturbation(name_suffix="-longer-name")).strip()
    assert longer.endswith("-longer-name/exec") and len(longer) > len(plain)


def test_tz_is_replaced_unless_declared(sandboxes: LocalSpawner) -> None:
    action = _action("date +%Z > posbuild-out/pkg/out.txt")
    assert _run(sandboxes, action) == "UTC\n"
    assert _run(sandboxes, action, Perturbation(tz="<+1345>-13:45")) == "+1345\n"
    declared = _action("date +%Z > posbuild-out/pkg/out.txt", env=(("TZ", "XYZ+3"),))
    assert _run(sandboxes, declared, Perturbation(tz="<+1345>-13:45")) == "XYZ\n"


def test_environment_order_is_reversed(sandboxes: LocalSpawner) -> None:
    action = _action("tr '\\0' '\\n' < /proc/$$/environ | grep -E '^(AAA|BBB)=' > "
                     "posbuild-out/pkg/out.txt",
                     env=(("AAA", "1"), ("BBB", "2")))
    assert _run(sandboxes, action) == "AAA=1\nBBB=2\n"
    assert _run(sandboxes, action, Perturbation(reverse_env_order=True)) == "BBB=2\nAAA=1\n"


def test_umask_applies_to_the_command_only(sandboxes: LocalSpawner) -> None:
    action = _action("touch f; stat -c %a f > posbuild-out/pkg/out.txt")
    before = os.umask(0o022)
    os.umask(before)
    assert _run(sandboxes, action, Perturbation(umask=0o077)) == "600\n"
    assert _run(sandboxes, action, Perturbation(umask=0o022)) == "644\n"
    after = os.umask(before)
    os.umask(after)
    assert after == before


def test_reverse_staging_builds_the_same_tree(sandboxes: LocalSpawner) -> None:
    action = _action("find . -type f -exec md5sum {} + | sort -k2 > ../out.txt; mv ../out.txt "
                     "posbuild-out/pkg/out.txt",
                     inputs=DATA)
    normal = _run(sandboxes, action)
    assert normal == _run(sandboxes, action, Perturbation(reverse_staging=True))
    assert len(normal.splitlines()) == len(DATA)


@pytest.mark.skipif(not (SHM.is_dir() and os.access(SHM, os.W_OK)), reason="no writable /dev/shm")
def test_tmpfs_lists_folders_in_creation_order() -> None:
    """Measured: tmpfs lists the newest entry first, so creation order decides the listing."""
    assert listing_follows_creation(SHM)


def test_reverse_staging_reverses_every_listing_where_the_file_system_allows(
    workspace: Path) -> None:
    base = Path(tempfile.mkdtemp(dir=SHM)) if SHM.is_dir() and os.access(SHM, os.W_OK) \
        else workspace.parent / ("sb")
    try:
        if not listing_follows_creation(base):
            pytest.skip(f"{base} lists folders in an order of its own (e.g. ext4 hash order)")
        sandboxes = LocalSpawner(workspace, base)
        action = _action(
            "{ ls -f pkg/data; ls -f pkg; ls -f .; } > ../l; mv ../l posbuild-out/pkg/out.txt",
            inputs=DATA)
        normal, reverse = _run(sandboxes, action), _run(sandboxes, action,
                                                        Perturbation(reverse_staging=True))
        assert normal != reverse
        def parts(text: str) -> list[list[str]]:
            blocks, current = [], []
            for name in text.splitlines():
                if name == "." and current:
                    blocks.append(current)
                    current = []
                current.append(name)
            return blocks + [current]

        for one, two in zip(parts(normal), parts(reverse)):
            names_one = [n for n in one if n not in (".", "..")]
            names_two = [n for n in two if n not in (".", "..")]
            assert names_one == names_two[::-1], (one, two)
    finally:
        import shutil
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(find_libfaketime() is None, reason="libfaketime is not installed")
def test_clock_shift_moves_the_clock_by_libfaketime(sandboxes: LocalSpawner) -> None:
    action = _action(
        "date +%Y > posbuild-out/pkg/out.txt; { env | grep -c FAKETIME || true; } >> "
        "posbuild-out/pkg/out.txt")
    real = _run(sandboxes, action).split()
    shifted = _run(sandboxes, action, Perturbation(clock_shift="+800d")).split()
    assert real[1] == "0" and shifted[1] == "2"  # FAKETIME and DONT_FAKE_MONOTONIC
    assert int(shifted[0]) - int(real[0]) in (2, 3)


def test_clock_shift_is_ignored_without_libfaketime(sandboxes: LocalSpawner,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module, "find_libfaketime", lambda: None)
    action = _action(
        "env | grep -c -E '^(FAKETIME|LD_PRELOAD)=' > posbuild-out/pkg/out.txt || true")
    assert _run(sandboxes, action, Perturbation(clock_shift="+800d")) == "0\n"
    assert sandboxes.faketime is None


def test_a_failed_staging_leaves_no_sandbox(sandboxes: LocalSpawner, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sandboxes.run(_action("true", inputs=("pkg/missing.txt",)), (), SECOND)
    assert os.listdir(tmp_path / "sandboxes") == []


# ---- verify.py without a shifted clock --------------------------------------------------------

def test_verify_without_libfaketime_waits_into_the_next_second(workspace: Path) -> None:
    config = load_config(workspace)
    graph = ActionGraph((
        _action("date +%s > posbuild-out/pkg/out.txt", label="//pkg:seconds"),
        _action("cat pkg/top.txt pkg/data/a.txt > posbuild-out/pkg/same.txt", inputs=DATA,
                outputs=("posbuild-out/pkg/same.txt",), label="//pkg:same"),
        _action("date > posbuild-out/pkg/nc.txt", outputs=("posbuild-out/pkg/nc.txt",),
                label="//pkg:nc", tags=("no-cache",)),
    ), ())
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        import time
        time.sleep(seconds)

    store = Store(config.store_dir)
    try:
        report = verify(config, graph, EMPTY, store, jobs=2, shift_clock=False, sleep=sleep)
    finally:
        store.close()
    assert len(slept) == 1 and 0 < slept[0] <= 1.01
    assert [f.label for f in report.findings] == ["//pkg:seconds"]
    assert report.findings[0].detail.startswith(
        "posbuild-out/pkg/out.txt: run 1 has 11 bytes, run 2 has 11 bytes")
    assert (report.actions, report.outputs, report.bytes) == (2, 2, 11 + 6)
    assert report.not_verified == ("//pkg:nc",)
    assert report.without_cache == 2
    assert report.perturbed[-1] == "clock (run 2 in a later second)"
    assert not config.sandbox_dir.exists() or os.listdir(config.sandbox_dir) == []


def test_the_two_runs_differ_in_every_field() -> None:
    for name in Perturbation.__dataclass_fields__:
        if name != "clock_shift":
            assert getattr(FIRST, name) != getattr(SECOND, name), name
    assert SECOND.clock_shift is not None
