"""Folder outputs' manifests (core/tree.py) and the folder walk (store/trees.py): one encoding
per content, untrusted manifests checked before anything is written from them, links and FIFOs
refused, and a folder written whole."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from posbuild.core.digest import hash_bytes
from posbuild.core.records import ActionResult, OutputFile
from posbuild.core.tree import Tree, TreeFile, inside, member_blobs
from posbuild.store.trees import RefusedEntry, intact, refusal, take, write_tree

A = TreeFile("a.txt", hash_bytes(b"a"), 1, False)
B = TreeFile("sub/b", hash_bytes(b"bb"), 2, True)


def test_a_manifest_round_trips_and_its_digest_ignores_listing_order() -> None:
    tree = Tree.of([B, A], ["sub", "empty"])
    assert tree.files == (A, B) and tree.folders == ("empty", "sub")
    assert Tree.unpack(tree.pack()) == tree
    assert Tree.of([A, B], ["sub", "empty"]).digest() == tree.digest()
    assert tree.size == 3


def test_every_part_of_the_content_changes_the_digest() -> None:
    tree = Tree.of([A, B], ["sub"])
    others = [
        Tree.of([A, TreeFile("sub/b", hash_bytes(b"bc"), 2, True)], ["sub"]),  # bytes
        Tree.of([A, TreeFile("sub/b", hash_bytes(b"bb"), 2, False)], ["sub"]),  # mode
        Tree.of([A, TreeFile("sub/c", hash_bytes(b"bb"), 2, True)], ["sub"]),  # name
        Tree.of([A, B], ["sub", "empty"]),  # an empty folder
    ]
    assert len({tree.digest(), *(o.digest() for o in others)}) == 5


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "",
                                  "a\0b"])
def test_a_path_leaving_its_folder_is_refused(path: str) -> None:
    assert not inside(path)
    data = msgpack.packb(["posbuild-tree", 1, [], [[path, hash_bytes(b""), 0, False]]])
    with pytest.raises(ValueError):
        Tree.unpack(data)


@pytest.mark.parametrize("data", [
    b"not msgpack \xc1",
    msgpack.packb(["other-tool", 1, [], []]),
    msgpack.packb(["posbuild-tree", 99, [], []]),
    msgpack.packb(["posbuild-tree", 1, [], [["b", b"d" * 32, 0, False],
                                            ["a", b"d" * 32, 0, False]]]),  # unsorted
    msgpack.packb(["posbuild-tree", 1, [], [["a", b"d" * 32, 0, False]] * 2]),  # twice
    msgpack.packb(["posbuild-tree", 1, [], [["sub/a", b"d" * 32, 0, False]]]),  # no folder
    msgpack.packb(["posbuild-tree", 1, ["a"], [["a", b"d" * 32, 0, False]]]),  # both
])
def test_an_unsound_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        Tree.unpack(data)


def test_a_result_row_carries_the_folder_flag_and_old_rows_read_as_files() -> None:
    folder = OutputFile("posbuild-out/p/d", b"m" * 32, 3, False, tree=True)
    file = OutputFile("posbuild-out/p/f", b"f" * 32, 1, True)
    result = ActionResult((folder, file), 0, b"o" * 32, b"e" * 32)
    assert ActionResult.unpack(result.pack()) == result
    old = msgpack.packb([1, 0, b"o" * 32, b"e" * 32, [["posbuild-out/p/f", b"f" * 32, 1, True]]])
    assert ActionResult.unpack(old).outputs == (file,)
    # a result without folders packs exactly as before the flag existed
    assert ActionResult((file,), 0, b"o" * 32, b"e" * 32).pack() == old


def test_member_blobs_names_every_file_of_every_folder_output() -> None:
    tree = Tree.of([A, B], ["sub"])
    folder = OutputFile("posbuild-out/p/d", tree.digest(), 3, False, tree=True)
    result = ActionResult((folder,), 0, b"o" * 32, b"e" * 32)
    blobs = {tree.digest(): tree.pack()}
    assert list(member_blobs(result, blobs.get)) == [
        (A.digest, "output posbuild-out/p/d/a.txt"), (B.digest, "output posbuild-out/p/d/sub/b")]
    assert list(member_blobs(result, {}.get)) == []  # a missing manifest names nothing


def _folder(tmp_path: Path) -> Path:
    top = tmp_path / "made" / "d"
    (top / "sub" / "deep").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "a.txt").write_bytes(b"a")
    (top / "sub" / "b").write_bytes(b"bb")
    (top / "sub" / "b").chmod(0o755)
    (top / "sub" / "deep" / "big").write_bytes(b"x" * 5000)
    return top


def test_take_hashes_every_file_and_keeps_large_ones_by_file(tmp_path: Path) -> None:
    top = _folder(tmp_path)
    stored: dict[bytes, bytes] = {}
    parent = os.open(top.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert refusal(parent, "d") is None
        taken = take(parent, "d", 4096, lambda d, p: stored.__setitem__(d, p.read_bytes()))
    finally:
        os.close(parent)
    assert [f.path for f in taken.tree.files] == ["a.txt", "sub/b", "sub/deep/big"]
    assert taken.tree.folders == ("empty", "sub", "sub/deep")
    assert [f.executable for f in taken.tree.files] == [False, True, False]
    assert stored == {hash_bytes(b"x" * 5000): b"x" * 5000}
    assert dict(taken.blobs) == {hash_bytes(b"a"): b"a", hash_bytes(b"bb"): b"bb",
                                 hash_bytes(b"x" * 5000): None}


@pytest.mark.parametrize("make, kind", [
    (lambda top: (top / "sub" / "link").symlink_to("../a.txt"), "a symbolic link"),
    (lambda top: (top / "loop").symlink_to("."), "a symbolic link"),
    (lambda top: os.mkfifo(top / "sub" / "pipe"), "a FIFO"),
])
def test_a_link_or_fifo_inside_is_refused_by_its_path(tmp_path: Path, make: object,
                                                      kind: str) -> None:
    top = _folder(tmp_path)
    make(top)  # type: ignore[operator]
    parent = os.open(top.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        refused = refusal(parent, "d")
        assert refused is not None and refused.kind == kind
        assert refused.path in ("sub/link", "loop", "sub/pipe")
        with pytest.raises(RefusedEntry):
            take(parent, "d", 4096, lambda d, p: None)
    finally:
        os.close(parent)


class _Memo:
    def __init__(self) -> None:
        self.rows: dict[str, object] = {}

    def get_memo(self, path: str) -> object:
        return self.rows.get(path)


def test_a_written_folder_replaces_the_old_one_whole_and_is_checked_by_stat(
        tmp_path: Path) -> None:
    root = tmp_path / "ws"
    temp = tmp_path / "tmp"
    temp.mkdir()
    (root / "posbuild-out/p/d/old").mkdir(parents=True)
    (root / "posbuild-out/p/d/old/stale").write_text("stale")
    content = {A.digest: b"a", B.digest: b"bb"}
    tree = Tree.of([A, B], ["sub", "empty"])
    output = OutputFile("posbuild-out/p/d", tree.digest(), tree.size, False, tree=True)
    written = write_tree(str(root), temp, output, tree, content.__getitem__)
    top = root / "posbuild-out/p/d"
    assert sorted(p.relative_to(top).as_posix() for p in top.rglob("*")) == [
        "a.txt", "empty", "sub", "sub/b"]
    assert (top / "sub/b").stat().st_mode & 0o777 == 0o555
    assert (top / "a.txt").stat().st_mode & 0o777 == 0o444
    assert list(temp.iterdir()) == []  # nothing left beside
    assert [p for p, _ in written.memo] == ["posbuild-out/p/d", "posbuild-out/p/d/a.txt",
                                            "posbuild-out/p/d/sub/b"]
    memo = _Memo()
    memo.rows.update(written.memo)
    assert intact(str(root), output, tree, memo) == written  # type: ignore[arg-type]
    (top / "empty" / "stray").write_text("x")
    assert intact(str(root), output, tree, memo) is None  # type: ignore[arg-type]
    (top / "empty" / "stray").unlink()
    (top / "a.txt").chmod(0o644)
    (top / "a.txt").write_text("A")
    assert intact(str(root), output, tree, memo) is None  # type: ignore[arg-type]


def test_a_device_inside_is_refused(tmp_path: Path) -> None:
    import stat

    top = _folder(tmp_path)
    try:
        os.mknod(top / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    parent = os.open(top.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        refused = refusal(parent, "d")
    finally:
        os.close(parent)
    assert refused is not None and (refused.path, refused.kind) == ("null", "a device")
