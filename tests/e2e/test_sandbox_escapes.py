"""Attacks on output collection and on large inputs, through the real CLI, in every sandbox.

An action owns its sandbox: when its command ends, the folder of a declared output may be a
symbolic link to a source folder, the secrets file's folder or the store; the output itself may
be a link. posbuild (which sees the whole file system) must follow none of them: the action
fails with one line saying which path is a link, and nothing moves into `posbuild-out/` or the
store. A large input must not give the action a writable path to the original. The namespace
sandbox hides the workspace, but not the tools installed beside it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Result, Workspace, bwrap_problem, counts, landlock_problem
from posbuild.exec import namespaces

PROBLEM = bwrap_problem()
NEEDS_BWRAP = pytest.mark.skipif(PROBLEM is not None,
                                 reason=f"bubblewrap cannot run here: {PROBLEM}")
NEEDS_LANDLOCK = pytest.mark.skipif(landlock_problem() is not None,
                                    reason=f"Landlock cannot run here: {landlock_problem()}")
MODES = [pytest.param("folder", id="folder"),
         pytest.param("namespace", id="namespace", marks=NEEDS_BWRAP),
         pytest.param("landlock", id="landlock", marks=NEEDS_LANDLOCK)]
# no test probe folder left writable in the namespaces
NO_ESCAPE = {namespaces.WRITABLE_VARIABLE: ""}
MARK = "do-not-take-me-3f9a1c"


def _setup(ws: Workspace, tmp_path: Path, mode: str, same_fs: bool) -> None:
    """`mode` sandbox; with `same_fs`, sandboxes beside the workspace (outputs are renamed out of
    them) instead of on /dev/shm (outputs are copied)."""
    toml = f'[sandbox]\nmode = "{mode}"\n'
    if same_fs:
        toml += f'[build]\nsandbox_base = "{tmp_path / "sandboxes"}"\n'
    ws.write({"posbuild.toml": toml})


def _build(ws: Workspace, *args: str) -> Result:
    return ws.build(*args, env=NO_ESCAPE)


def _kept_anywhere(root: Path, needle: bytes) -> list[str]:
    """Files under posbuild-out/ and .posbuild/ (the store) that hold `needle`."""
    found = []
    for folder in (root / "posbuild-out", root / ".posbuild"):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path))
    return found


def _swap(folder_target: Path, name: str) -> str:
    """A BUILD rule whose output folder `d` is replaced by a link to `folder_target`."""
    return f"""
        genrule(name = "swap", outs = ["d/{name}"],
                cmd = "rm -rf posbuild-out/pkg/d && ln -s {folder_target} posbuild-out/pkg/d")
    """


def _refused(result: Result, output: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert (
        f"declared output 'posbuild-out/pkg/d/{output}' lies below 'posbuild-out/pkg/d', which is "
        "a symbolic link") \
        in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize("same_fs", [True, False], ids=["renamed", "copied"])
@pytest.mark.parametrize("mode", MODES)
def test_an_output_folder_linked_to_a_source_folder_takes_nothing(ws, tmp_path, mode, same_fs):
    _setup(ws, tmp_path, mode, same_fs)
    ws.write({"secret/x.txt": f"{MARK}\n", "pkg/BUILD": _swap(ws.root / "secret", "x.txt")})
    _refused(_build(ws, "//pkg:swap"), "x.txt")
    assert (ws.root / "secret/x.txt").read_text() == f"{MARK}\n"
    assert not (ws.root / "posbuild-out/pkg/d").exists()
    assert _kept_anywhere(ws.root, MARK.encode()) == []


@pytest.mark.parametrize("same_fs", [True, False], ids=["renamed", "copied"])
@pytest.mark.parametrize("mode", MODES)
def test_an_output_folder_linked_to_the_secrets_file_takes_nothing(ws, tmp_path, mode, same_fs):
    _setup(ws, tmp_path, mode, same_fs)
    conf = tmp_path / "conf"
    conf.mkdir()
    secrets = conf / "secrets"
    secrets.write_text(f"SIGNING={MARK}\n")
    secrets.chmod(0o600)
    ws.write({"pkg/BUILD": _swap(conf, "secrets")})
    result = ws.build("//pkg:swap", env={**NO_ESCAPE, "POSBUILD_SECRETS_FILE": str(secrets)})
    _refused(result, "secrets")
    assert secrets.read_text() == f"SIGNING={MARK}\n"
    assert _kept_anywhere(ws.root, MARK.encode()) == []


@pytest.mark.parametrize("same_fs", [True, False], ids=["renamed", "copied"])
@pytest.mark.parametrize("mode", MODES)
def test_an_output_folder_linked_to_the_store_takes_nothing(ws, tmp_path, mode, same_fs):
    _setup(ws, tmp_path, mode, same_fs)
    store = ws.root / ".posbuild/store/db"
    ws.write({"pkg/BUILD": """
        genrule(name = "first", outs = ["first.txt"], cmd = "echo first > $@")
    """ + _swap(store, "data.mdb")})
    assert _build(ws, "//pkg:first").returncode == 0
    before = (store / "data.mdb").stat()
    _refused(_build(ws, "//pkg:swap"), "data.mdb")
    after = (store / "data.mdb").stat()
    assert (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev)
    assert not (ws.root / "posbuild-out/pkg/d").exists()
    shutil.rmtree(ws.root / "posbuild-out")
    again = _build(ws, "//pkg:first")
    assert again.returncode == 0 and counts(again)["cached"] == 1, again.stdout + again.stderr


@pytest.mark.parametrize("mode", MODES)
def test_the_sandboxes_working_folder_linked_away_takes_nothing(ws, tmp_path, mode):
    """`posbuild-out` itself (the top of every output's path in the sandbox) replaced by a link."""
    _setup(ws, tmp_path, mode, True)
    (ws.root / "secret/pkg").mkdir(parents=True)
    (ws.root / "secret/pkg/x.txt").write_text(f"{MARK}\n")
    ws.write({"pkg/BUILD": f"""
        genrule(name = "swap", outs = ["x.txt"],
                cmd = "rm -rf posbuild-out && ln -s {ws.root / 'secret'} posbuild-out")
    """})
    result = _build(ws, "//pkg:swap")
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "lies below 'posbuild-out', which is a symbolic link" in text, text
    assert (ws.root / "secret/pkg/x.txt").read_text() == f"{MARK}\n"
    assert _kept_anywhere(ws.root, MARK.encode()) == []


@pytest.mark.parametrize("mode", MODES)
def test_an_output_that_is_a_link_takes_nothing(ws, tmp_path, mode):
    _setup(ws, tmp_path, mode, True)
    ws.write({"secret.txt": f"{MARK}\n", "pkg/BUILD": f"""
        genrule(name = "link", outs = ["x.txt"], cmd = "ln -s {ws.root / 'secret.txt'} $@")
    """})
    result = _build(ws, "//pkg:link")
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "declared output 'posbuild-out/pkg/x.txt' is a symbolic link" in text, text
    assert (ws.root / "secret.txt").read_text() == f"{MARK}\n"
    assert _kept_anywhere(ws.root, MARK.encode()) == []


BIG = 16 * 1024 * 1024 + 16  # just over the size at which inputs used to be symlinked


@pytest.mark.parametrize("mode", MODES)
def test_a_large_source_input_cannot_be_written_through(ws, tmp_path, mode):
    _setup(ws, tmp_path, mode, False)
    (ws.root / "pkg").mkdir()
    (ws.root / "pkg/big.bin").write_bytes(b"\0" * BIG)
    ws.write({"pkg/BUILD": """
        genrule(name = "spoil", srcs = ["big.bin"], outs = ["o.txt"],
                cmd = "echo x > $@; chmod u+w pkg/big.bin || true; printf X | dd of=pkg/big.bin conv=notrunc || true")
    """})  # noqa: E501
    # may succeed (it wrote only its own copy) or fail (a read-only input)
    _build(ws, "//pkg:spoil")
    data = (ws.root / "pkg/big.bin").read_bytes()
    assert len(data) == BIG and data[:1] == b"\0"


@pytest.mark.parametrize("mode", MODES)
def test_a_large_generated_input_cannot_be_written_through(ws, tmp_path, mode):
    _setup(ws, tmp_path, mode, False)
    ws.write({"pkg/BUILD": f"""
        genrule(name = "gen", outs = ["big.out"], cmd = "head -c {BIG} /dev/zero > $@")
        genrule(name = "spoil", srcs = [":gen"], outs = ["o.txt"],
                cmd = "echo x > $@; chmod u+w $< || true; printf X | dd of=$< conv=notrunc || true")
    """})
    _build(ws, "//pkg:spoil")
    data = (ws.root / "posbuild-out/pkg/big.out").read_bytes()
    assert len(data) == BIG and data[:1] == b"\0"
    verified = ws.run("fsck")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A workspace folder outside /tmp (which the namespace sandbox replaces wholesale), as a
    user's checkout under /home or /srv is."""
    for parent in ("/var/tmp", os.path.expanduser("~")):
        if os.access(parent, os.W_OK):
            folder = Path(tempfile.mkdtemp(prefix="posbuild-mountinfo-", dir=parent))
            break
    else:
        pytest.skip("no writable folder outside /tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("mode", MODES[1:])
def test_a_tool_installed_beside_the_workspace_stays_visible_while_the_workspace_is_hidden(
    outside_tmp, mode):
    """A conda under the home folder, next to the checkout: hiding the checkout must not hide it."""
    tool = outside_tmp / "miniconda3/bin/samtools"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho samtools 1.0\n")
    tool.chmod(0o755)
    ws = Workspace(outside_tmp / "project")
    ws.write({"posbuild.toml": f'[sandbox]\nmode = "{mode}"\n', "pkg/in.txt": "x\n",
              "pkg/hidden.txt": "h\n", "pkg/BUILD": f"""
        genrule(name = "run", srcs = ["in.txt"], outs = ["version.txt"],
                cmd = "{tool} > $@; if cat {ws.root}/pkg/hidden.txt; then echo LEAK >> $@; fi")
    """})
    result = _build(ws, "//pkg:run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ws.out("pkg/version.txt") == "samtools 1.0\n"


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One Dask worker (a separate process, running this checkout's posbuild)."""
    from tests.e2e.test_dask_executor import Cluster

    running = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        running.add_workers(1)
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("mode", MODES)
def test_an_output_folder_linked_away_on_a_dask_worker_takes_nothing(ws, tmp_path, mode,
                                                                     dask_cluster):
    _setup(ws, tmp_path, mode, False)
    ws.write({"secret/x.txt": f"{MARK}\n", "pkg/BUILD": _swap(ws.root / "secret", "x.txt")})
    result = ws.build("--executor", dask_cluster.url, "//pkg:swap", env=NO_ESCAPE)  # type: ignore[attr-defined]
    _refused(result, "x.txt")
    assert (ws.root / "secret/x.txt").read_text() == f"{MARK}\n"
    assert _kept_anywhere(ws.root, MARK.encode()) == []


@pytest.mark.parametrize("mode", MODES)
def test_the_sandboxes_exec_folder_linked_away_takes_nothing(ws, tmp_path, mode):
    """`exec/` itself (the command's working folder) renamed and replaced by a link."""
    _setup(ws, tmp_path, mode, True)
    (ws.root / "secret/posbuild-out/pkg").mkdir(parents=True)
    (ws.root / "secret/posbuild-out/pkg/x.txt").write_text(f"{MARK}\n")
    ws.write({"pkg/BUILD": f"""
        genrule(name = "swap", outs = ["x.txt"], cmd = "cd .. && mv exec moved && ln -s {ws.root / 'secret'} exec")
    """})  # noqa: E501
    result = _build(ws, "//pkg:swap")
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "cannot be reached: the sandbox's exec/ is a symbolic link or not a folder" in text, text
    assert (ws.root / "secret/posbuild-out/pkg/x.txt").read_text() == f"{MARK}\n"
    assert _kept_anywhere(ws.root, MARK.encode()) == []
