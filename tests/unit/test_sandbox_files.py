"""The sandbox's own file helpers: removing a sandbox never follows a link out of it, and reading
captured output returns exactly the bytes written."""

from __future__ import annotations

import os
from pathlib import Path

from posbuild.host.nofollow import read_small
from posbuild.exec.stage import remove_tree


def test_remove_tree_removes_everything_and_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    sandbox = tmp_path / "sandbox"
    (sandbox / "exec/a/b").mkdir(parents=True)
    (sandbox / "exec/a/b/out.txt").write_text("x")
    (sandbox / "stdout").write_bytes(b"")
    os.symlink(outside, sandbox / "exec/a/link-to-folder")
    os.symlink(outside / "keep.txt", sandbox / "exec/link-to-file")
    os.symlink(tmp_path / "nowhere", sandbox / "exec/dangling")
    remove_tree(str(sandbox))
    assert not sandbox.exists()
    assert (outside / "keep.txt").read_text() == "keep\n"
    remove_tree(str(sandbox))  # already gone: nothing to do, no error


def test_remove_tree_given_a_link_leaves_its_target_alone(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    os.symlink(outside, tmp_path / "sandbox")
    remove_tree(str(tmp_path / "sandbox"))
    assert (outside / "keep.txt").exists()


def test_read_small_returns_the_whole_content_up_to_the_limit(tmp_path: Path) -> None:
    for size in (0, 1, 4096, 3 * (1 << 16) + 7):
        path = tmp_path / f"f{size}"
        data = os.urandom(size)
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        info, content = read_small(fd, size)
        assert content == data and info.st_size == size
        info, content = read_small(fd, size - 1)
        assert content is None and info.st_size == size
        os.close(fd)
