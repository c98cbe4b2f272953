"""Writing outputs into posbuild-out/: complete, read-only, and leaving no temp file behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

import posbuild.store.materialize as materialize
from posbuild.core.digest import hash_bytes
from posbuild.store.materialize import Materializer
from posbuild.host.nofollow import open_outputs
from posbuild.core.records import OutputFile
from posbuild.store.lmdbstore import Store


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Materializer, Store, Path]]:
    store = Store(tmp_path / ".posbuild/store")
    materializer = Materializer(tmp_path, store, tmp_path / ".posbuild/tmp")
    materializer.clear_temp()
    yield materializer, store, tmp_path
    store.close()


def _restore(materializer: Materializer, store: Store, path: str, data: bytes,
             executable: bool = False) -> None:
    digest = hash_bytes(data)
    store.commit(blobs=[(digest, data)])
    materializer.restore(OutputFile(path, digest, len(data), executable))


def test_a_new_output_is_linked_into_place_without_a_rename(setup, monkeypatch) -> None:
    materializer, store, root = setup
    renames: list[tuple[str, str]] = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a,
                        b: (renames.append((str(a), str(b))), real_rename(a, b)))
    _restore(materializer, store, "posbuild-out/pkg/a.txt", b"alpha\n", executable=True)
    target = root / "posbuild-out/pkg/a.txt"
    assert target.read_bytes() == b"alpha\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o555
    assert renames == []  # an unnamed file, linked in when complete
    assert os.listdir(root / ".posbuild/tmp") == [] \
            and os.listdir(root / "posbuild-out/pkg") == ["a.txt"]


def test_an_existing_output_is_replaced_by_rename(setup) -> None:
    materializer, store, root = setup
    _restore(materializer, store, "posbuild-out/pkg/a.txt", b"alpha\n")
    _restore(materializer, store, "posbuild-out/pkg/a.txt", b"beta\n")
    target = root / "posbuild-out/pkg/a.txt"
    assert target.read_bytes() == b"beta\n" and stat.S_IMODE(target.stat().st_mode) == 0o444
    assert os.listdir(root / ".posbuild/tmp") == [] \
            and os.listdir(root / "posbuild-out/pkg") == ["a.txt"]


@pytest.mark.parametrize("unnamed", [True, False])
def test_a_replacing_file_is_made_in_its_output_folder_and_renamed_from_the_temp_folder(
        setup, monkeypatch, unnamed) -> None:
    # where the new file's inode comes from is the folder it is made in: the output's folder,
    # not the temp folder where replaced files are later freed (materialize._unnamed)
    materializer, store, root = setup
    _restore(materializer, store, "posbuild-out/pkg/a.txt", b"alpha\n", executable=True)
    if not unnamed:
        monkeypatch.setattr(materialize, "_proc", -1)  # no O_TMPFILE: made in the temp folder
    made: list[str] = []
    real_open, real_rename = os.open, os.rename
    monkeypatch.setattr(os, "open", lambda path, flags, *rest, **kw: (
        made.append(str(path)) if flags & (os.O_CREAT | os.O_TMPFILE) else None,
        real_open(path, flags, *rest, **kw))[1])
    renamed: list[str] = []
    monkeypatch.setattr(os, "rename", lambda a, b: (renamed.append(str(a)), real_rename(a, b)))
    _restore(materializer, store, "posbuild-out/pkg/a.txt", b"beta\n", executable=True)
    target = root / "posbuild-out/pkg/a.txt"
    assert target.read_bytes() == b"beta\n" and stat.S_IMODE(target.stat().st_mode) == 0o555
    temp = str(root / ".posbuild/tmp")
    assert made == ([str(root / "posbuild-out/pkg")] if unnamed else [renamed[0]])
    assert [os.path.dirname(path) for path in renamed] == [temp]  # one rename, atomic
    assert os.listdir(temp) == [] and os.listdir(root / "posbuild-out/pkg") == ["a.txt"]


def test_without_unnamed_files_a_new_output_goes_through_the_temp_folder(setup,
                                                                         monkeypatch) -> None:
    materializer, store, root = setup
    monkeypatch.setattr(materialize, "_proc", -1)  # as on a system without O_TMPFILE or /proc
    _restore(materializer, store, "posbuild-out/pkg/b.txt", b"gamma\n")
    assert (root / "posbuild-out/pkg/b.txt").read_bytes() == b"gamma\n"
    assert os.listdir(root / ".posbuild/tmp") == []


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a memory file system")
def test_outputs_made_on_another_file_system_are_copied_and_the_rename_is_tried_once(
    setup, monkeypatch) -> None:
    materializer, store, root = setup
    if os.stat("/dev/shm").st_dev == os.stat(root).st_dev:
        pytest.skip("/dev/shm is on the workspace's file system here")
    import tempfile

    attempts: list[str] = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b,
                        **kw: (attempts.append(str(a)), real_rename(a, b, **kw)))
    with tempfile.TemporaryDirectory(dir="/dev/shm") as sandbox:
        for name in ("a.txt", "b.txt", "c.txt"):
            produced = os.path.join(sandbox, name)
            Path(produced).write_bytes(name.encode())
            output = OutputFile(f"posbuild-out/pkg/{name}", hash_bytes(name.encode()), len(name),
                                False)
            opened = open_outputs(sandbox, [name])
            state = materializer.install(opened.opened[name], output, None)
            opened.close()
            target = root / output.path
            assert target.read_bytes() == name.encode() \
                    and stat.S_IMODE(target.stat().st_mode) == 0o444
            assert state.signature[1] == target.stat().st_size
    assert attempts == ["a.txt"]  # the first rename fails (EXDEV); the others copy


def _install(materializer: Materializer, sandbox: Path, data: bytes) -> list[str]:
    """Install `data`, made as `a.txt` in `sandbox`, as posbuild-out/pkg/a.txt; what it set
    aside."""
    (sandbox / "a.txt").write_bytes(data)
    output = OutputFile("posbuild-out/pkg/a.txt", hash_bytes(data), len(data), False)
    opened = open_outputs(str(sandbox), ["a.txt"])
    replaced: list[str] = []
    try:
        materializer.install(opened.opened["a.txt"], output, data, replaced)
    finally:
        opened.close()
    return replaced


@pytest.mark.parametrize("where", ["same file system", "/dev/shm"])
def test_a_replaced_output_is_set_aside_until_discarded(setup, tmp_path_factory,
                                                        where: str) -> None:
    # the file an install replaces keeps a name in the temp folder, so that the rename over it
    # frees nothing; `discard` frees it later, and leaves the temp folder empty. Both ways in:
    # renamed from a sandbox on the same file system, copied from one on another
    materializer, store, root = setup
    _restore(materializer, store, "posbuild-out/pkg/a.txt", b"alpha\n")
    target = root / "posbuild-out/pkg/a.txt"
    old = target.stat()
    if where == "/dev/shm":
        if not os.path.isdir(where) or os.stat(where).st_dev == old.st_dev:
            pytest.skip("no memory file system apart from the workspace's")
        import tempfile

        sandbox = Path(tempfile.mkdtemp(dir=where))
    else:
        sandbox = tmp_path_factory.mktemp("sandbox")
    try:
        replaced = _install(materializer, sandbox, b"beta\n")
    finally:
        if where == "/dev/shm":
            import shutil

            shutil.rmtree(sandbox)
    assert target.read_bytes() == b"beta\n" and stat.S_IMODE(target.stat().st_mode) == 0o444
    assert len(replaced) == 1
    aside = os.stat(replaced[0])
    assert (aside.st_ino, aside.st_dev) == (old.st_ino, old.st_dev)
    assert Path(replaced[0]).read_bytes() == b"alpha\n"
    materialize.discard(replaced)
    assert replaced == [] and os.listdir(root / ".posbuild/tmp") == []


def test_a_new_output_sets_nothing_aside(setup, tmp_path_factory) -> None:
    materializer, store, root = setup
    replaced = _install(materializer, tmp_path_factory.mktemp("sandbox"), b"beta\n")
    assert (root / "posbuild-out/pkg/a.txt").read_bytes() == b"beta\n" and replaced == []
