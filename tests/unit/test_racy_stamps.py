"""The racy-entry rule of the graph caches' stamps (stamps.py): a path changed too close to the
load that stamped it has its content recorded, and a later use checks the content, not the stamp."""

from __future__ import annotations

import os
import time
from pathlib import Path

from posbuild.core.digest import hash_bytes
from posbuild.load.stamps import (RACY_WINDOW_NS, content_digest, file_stamp, folder_stamp,
                                  racy_digests, stamps_current)


def test_only_paths_changed_since_the_load_began_are_racy(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("text\n")
    # the load began well after the file was written
    began_later = time.time_ns() + 2 * RACY_WINDOW_NS
    assert racy_digests(str(tmp_path), ["file"], began_later) == {}
    began_before = time.time_ns() - 10 ** 12  # the file changed while loading
    assert racy_digests(str(tmp_path), ["file"], began_before) == {"file": hash_bytes(b"text\n")}


def test_the_digest_of_what_loading_read_is_recorded_not_the_file_now(tmp_path: Path) -> None:
    (tmp_path / "BUILD").write_text("new\n")  # changed while loading, after it was read as "old"
    read = {"BUILD": hash_bytes(b"old\n")}
    racy = racy_digests(str(tmp_path), ["BUILD"], time.time_ns(), read)
    assert racy == read
    stamp = file_stamp(str(tmp_path), "BUILD")
    assert not stamps_current(str(tmp_path), [], [("BUILD", stamp)], racy)


def test_a_racy_path_whose_content_still_matches_keeps_the_entry(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/BUILD").write_text("x = 1\n")
    root = str(tmp_path)
    racy = racy_digests(root, ["pkg", "pkg/BUILD"], time.time_ns())
    assert set(racy) == {"pkg", "pkg/BUILD"}
    folders, files = [("pkg", folder_stamp(root, "pkg"))], [("pkg/BUILD",
                                                             file_stamp(root, "pkg/BUILD"))]
    assert stamps_current(root, folders, files, racy)
    assert not stamps_current(root, folders, files, {**racy, "pkg/BUILD": hash_bytes(b"x = 2\n")})
    assert content_digest(root, "gone") == b""


def test_a_folder_stamp_holds_while_its_names_and_kinds_do(tmp_path: Path) -> None:
    """A file renamed over another changes the folder's mtime, not what loading sees."""
    from posbuild.load.stamps import MISSING_FOLDER, folder_current

    root = str(tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/a.txt").write_text("a")
    stamp = folder_stamp(root, "pkg")
    (tmp_path / "pkg/.a.new").write_text("b")
    os.replace(tmp_path / "pkg/.a.new", tmp_path / "pkg/a.txt")
    assert folder_current(root, "pkg", stamp)
    (tmp_path / "pkg/a.txt").unlink()
    (tmp_path / "pkg/a.txt").mkdir()
    assert not folder_current(root, "pkg", stamp)  # the same name, another kind
    (tmp_path / "pkg/a.txt").rmdir()
    (tmp_path / "pkg/a.txt").symlink_to("x")
    linked = folder_stamp(root, "pkg")
    (tmp_path / "pkg/.new").symlink_to("y")
    os.replace(tmp_path / "pkg/.new", tmp_path / "pkg/a.txt")
    assert not folder_current(root, "pkg", linked)  # a link that points elsewhere
    assert not folder_current(root, "pkg", 12345)  # a stamp of an older posbuild
    assert folder_stamp(root, "gone") == MISSING_FOLDER
    assert folder_current(root, "gone", MISSING_FOLDER)
    assert not folder_current(root, "pkg", MISSING_FOLDER)
