"""Collecting outputs without following links (nofollow.py), installing them by descriptor
(materialize.py), and covering hidden folders without naming them (namespaces.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterator

import pytest

from posbuild.core.digest import hash_bytes
from posbuild.store.materialize import Materializer
from posbuild.host.nofollow import Outputs, fd_path, open_outputs
from posbuild.core.records import OutputFile
from posbuild.store.lmdbstore import Store


@pytest.fixture
def exec_root(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox/exec"
    (root / "posbuild-out/pkg/d").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/x.txt").write_text("outside\n")
    return root


def _collect(root: Path, *paths: str) -> Outputs:
    return open_outputs(str(root), paths)


def test_regular_outputs_are_opened_and_read_through_their_descriptor(exec_root: Path) -> None:
    (exec_root / "posbuild-out/pkg/a.txt").write_text("a\n")
    (exec_root / "posbuild-out/pkg/d/x.txt").write_text("x\n")
    found = _collect(exec_root, "posbuild-out/pkg/a.txt", "posbuild-out/pkg/d/x.txt",
                     "posbuild-out/pkg/gone.txt")
    try:
        assert found.missing == ["posbuild-out/pkg/gone.txt"] and found.irregular == []
        with found.opened["posbuild-out/pkg/d/x.txt"].reading() as fd:
            assert Path(fd_path(fd)).read_text() == "x\n"
        assert found.opened["posbuild-out/pkg/a.txt"].name == "a.txt"
    finally:
        found.close()


@pytest.mark.parametrize("make, why", [
    (lambda root, out: os.symlink(out / "x.txt", root / "posbuild-out/pkg/d/x.txt"),
     "is a symbolic link"),
    (lambda root,
     out: (os.rmdir(root / "posbuild-out/pkg/d"), os.symlink(out, root / "posbuild-out/pkg/d")),
     "lies below 'posbuild-out/pkg/d', which is a symbolic link"),
    (lambda root, out: (os.rename(root / "posbuild-out", root / "moved"),
                        os.symlink(root / "moved", root / "posbuild-out")),
     "lies below 'posbuild-out', which is a symbolic link"),
    (lambda root,
     out: (os.rmdir(root / "posbuild-out/pkg/d"), (root / "posbuild-out/pkg/d").write_text("")),
     "lies below 'posbuild-out/pkg/d', which is not a folder"),
    (lambda root, out: os.mkfifo(root / "posbuild-out/pkg/d/x.txt"), "is not a regular file"),
    (lambda root, out: os.mkdir(root / "posbuild-out/pkg/d/x.txt"), "is a folder"),
])
def test_anything_but_a_regular_file_in_real_folders_is_irregular(exec_root: Path, make,
                                                                  why) -> None:
    make(exec_root, exec_root.parent.parent / "outside")
    found = _collect(exec_root, "posbuild-out/pkg/d/x.txt")
    assert found.opened == {} and found.irregular == found.missing == ["posbuild-out/pkg/d/x.txt"]
    assert found.why == why
    found.close()


def test_an_exec_folder_replaced_by_a_link_reaches_nothing(exec_root: Path, tmp_path: Path) -> None:
    os.rename(exec_root, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", exec_root)
    found = _collect(exec_root, "posbuild-out/pkg/d/x.txt")
    assert found.irregular == ["posbuild-out/pkg/d/x.txt"] \
            and "exec/ is a symbolic link" in found.why


def test_close_releases_every_descriptor(exec_root: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for name in ("a", "b"):
        (exec_root / f"posbuild-out/pkg/d/{name}").write_text(name)
    found = _collect(exec_root, "posbuild-out/pkg/d/a", "posbuild-out/pkg/d/b",
                     "posbuild-out/pkg/none")
    # their folder; files are opened when used
    assert len(os.listdir("/proc/self/fd")) == before + 1
    found.close()
    found.close()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.fixture
def materializer(tmp_path: Path) -> Iterator[Materializer]:
    store = Store(tmp_path / "ws/.posbuild/store")
    made = Materializer(tmp_path / "ws", store, tmp_path / "ws/.posbuild/tmp")
    made.clear_temp()
    yield made
    store.close()


def _output(data: bytes) -> OutputFile:
    return OutputFile("posbuild-out/pkg/d/x.txt", hash_bytes(data), len(data), False)


def test_a_folder_swapped_for_a_link_after_collection_moves_the_collected_file(
        exec_root: Path, tmp_path: Path, materializer: Materializer) -> None:
    (exec_root / "posbuild-out/pkg/d/x.txt").write_bytes(b"made\n")
    found = _collect(exec_root, "posbuild-out/pkg/d/x.txt")
    # a process left behind
    os.rename(exec_root / "posbuild-out/pkg/d", exec_root / "posbuild-out/pkg/real")
    os.symlink(tmp_path / "outside", exec_root / "posbuild-out/pkg/d")
    materializer.install(found.opened["posbuild-out/pkg/d/x.txt"], _output(b"made\n"), None)
    found.close()
    assert (tmp_path / "ws/posbuild-out/pkg/d/x.txt").read_bytes() == b"made\n"
    assert (tmp_path / "outside/x.txt").read_text() == "outside\n"


def test_a_file_swapped_after_it_was_hashed_is_not_installed(exec_root: Path, tmp_path: Path,
                                                             materializer: Materializer) -> None:
    produced = exec_root / "posbuild-out/pkg/d/x.txt"
    produced.write_bytes(b"made\n")
    found = _collect(exec_root, "posbuild-out/pkg/d/x.txt")
    produced.rename(produced.with_name("aside"))  # kept: a new file must not reuse its inode number
    produced.write_bytes(b"other\n")
    with pytest.raises(OSError) as raised:
        materializer.install(found.opened["posbuild-out/pkg/d/x.txt"], _output(b"made\n"), None)
    found.close()
    assert raised.value.errno == errno.ESTALE
    assert not (tmp_path / "ws/posbuild-out/pkg/d/x.txt").exists()


def test_an_output_hard_linked_to_another_file_is_copied_not_moved(
        exec_root: Path, tmp_path: Path, materializer: Materializer) -> None:
    os.link(tmp_path / "outside/x.txt", exec_root / "posbuild-out/pkg/d/x.txt")
    found = _collect(exec_root, "posbuild-out/pkg/d/x.txt")
    materializer.install(found.opened["posbuild-out/pkg/d/x.txt"], _output(b"outside\n"), None)
    found.close()
    installed = (tmp_path / "ws/posbuild-out/pkg/d/x.txt").stat()
    assert installed.st_ino != (tmp_path / "outside/x.txt").stat().st_ino
    assert (tmp_path / "outside/x.txt").stat().st_mode & 0o200  # its mode is left alone


def test_reading_a_file_swapped_since_it_was_found_fails(exec_root: Path) -> None:
    produced = exec_root / "posbuild-out/pkg/d/x.txt"
    produced.write_bytes(b"made\n")
    found = _collect(exec_root, "posbuild-out/pkg/d/x.txt")
    produced.rename(produced.with_name("aside"))  # kept: a new file must not reuse its inode number
    produced.write_bytes(b"other\n")
    with pytest.raises(OSError) as raised:
        with found.opened["posbuild-out/pkg/d/x.txt"].reading():
            pass
    assert raised.value.errno == errno.ESTALE
    produced.unlink()
    os.symlink(exec_root.parent.parent / "outside/x.txt", produced)
    with pytest.raises(OSError) as raised:
        with found.opened["posbuild-out/pkg/d/x.txt"].reading():
            pass
    assert raised.value.errno == errno.ELOOP
    found.close()


def test_openat2_finds_folders_in_one_call_and_a_linked_sandbox_base_falls_back_to_the_walk(
        exec_root: Path, tmp_path: Path, monkeypatch) -> None:
    import posbuild.host.nofollow as nofollow

    (exec_root / "posbuild-out/pkg/d/x.txt").write_text("x\n")
    monkeypatch.setattr(nofollow, "_fast", True)
    found = _collect(exec_root, "posbuild-out/pkg/d/x.txt")
    assert found.opened and nofollow._fast == (nofollow._openat2 is not None)
    found.close()
    # a link above exec/: not the action's doing
    os.symlink(tmp_path / "sandbox", tmp_path / "linked-base")
    found = _collect(tmp_path / "linked-base/exec", "posbuild-out/pkg/d/x.txt")
    assert list(found.opened) == ["posbuild-out/pkg/d/x.txt"] and not nofollow._fast
    found.close()
    monkeypatch.setattr(nofollow, "_fast", True)
    os.rename(exec_root / "posbuild-out/pkg/d", exec_root / "posbuild-out/pkg/real")
    # the action's link
    os.symlink(exec_root / "posbuild-out/pkg/real", exec_root / "posbuild-out/pkg/d")
    found = _collect(exec_root, "posbuild-out/pkg/d/x.txt")
    assert found.why == "lies below 'posbuild-out/pkg/d', which is a symbolic link" \
            and nofollow._fast
    found.close()
