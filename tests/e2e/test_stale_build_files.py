"""The graph caches never serve a stale BUILD or .bzl file: one replaced in place with the same
size and mtime (`cp -p`, a reproducible tarball, the Nix store's mtime 1) is seen by `build` and
by `query`, through the real CLI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import Workspace


def replace_in_place(path: Path, text: str, mtime_ns: int | None = None) -> None:
    """Write `text` over `path` keeping its inode, size and mtime, as `cp -p` does; the copy
    comes from outside the workspace, so that no folder of it changes."""
    old = path.stat()
    assert len(text.encode()) == old.st_size, "the test needs a same-size replacement"
    twin = path.parents[2] / f"{path.name}.new"
    twin.write_text(text)
    keep = old.st_mtime_ns if mtime_ns is None else mtime_ns
    os.utime(twin, ns=(keep, keep))
    shutil.copy2(twin, path)  # cp -p: opens the same file, writes, puts the mtime back
    twin.unlink()
    assert path.stat().st_ino == old.st_ino and path.stat().st_mtime_ns == keep


def test_a_build_file_copied_over_with_cp_p_is_seen(ws: Workspace) -> None:
    ws.write({"pkg/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo aaaa > $@")\n'})
    ws.ok("//...")
    replace_in_place(ws.root / "pkg/BUILD",
                     'genrule(name = "a", outs = ["a.txt"], cmd = "echo bbbb > $@")\n')
    ws.ok("//...")
    assert ws.out("pkg/a.txt") == "bbbb\n"


def test_build_and_bzl_files_with_the_nix_store_mtime_are_seen(ws: Workspace) -> None:
    ws.write({
        "pkg/defs.bzl": 'WORD = "aaaa"\n',
        "pkg/BUILD": 'load(":defs.bzl", "WORD")\ngenrule(name = "a", outs = ["a.txt"], cmd = "echo '
                     '" + WORD + " > $@")\n',
    })
    for name in ("pkg/defs.bzl", "pkg/BUILD"):
        os.utime(ws.root / name, ns=(1_000_000_000, 1_000_000_000))
    ws.ok("//...")
    assert ws.out("pkg/a.txt") == "aaaa\n"
    replace_in_place(ws.root / "pkg/defs.bzl", 'WORD = "cccc"\n', mtime_ns=1_000_000_000)
    ws.ok("//...")
    assert ws.out("pkg/a.txt") == "cccc\n"


def test_query_sees_a_dependency_changed_in_place(ws: Workspace) -> None:
    ws.write({"pkg/BUILD": 'genrule(name = "a", srcs = [":x"], outs = ["a.txt"], cmd = "cat $< > '
                           '$@")\ngenrule(name = "x", outs = ["x.txt"], cmd = "echo > $@")\n'
                           'genrule(name = "y", outs = ["y.txt"], cmd = "echo > $@")\n'})
    first = ws.run("query", "deps(//pkg:a)")
    assert first.returncode == 0 and first.stdout.split() == ["//pkg:a", "//pkg:x"], first.stderr
    text = (ws.root / "pkg/BUILD").read_text().replace('srcs = [":x"]', 'srcs = [":y"]')
    replace_in_place(ws.root / "pkg/BUILD", text)
    second = ws.run("query", "deps(//pkg:a)")
    assert second.returncode == 0 and second.stdout.split() == ["//pkg:a", "//pkg:y"], second.stderr


def _graph_entries(ws: Workspace) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (ws.root / ".posbuild/graphs").glob("*.graph")}


def test_a_source_saved_by_rename_keeps_the_graph_and_a_new_name_or_kind_does_not(
        ws: Workspace) -> None:
    """Editors, `sed -i` and git save a file by renaming a new one over it: its folder's mtime
    moves, but no name does, so the BUILD files are not evaluated again (at 10,000 actions that
    is seconds). A new name, or a name that became a folder, is what a glob sees: re-evaluated."""
    ws.write({"pkg/BUILD": 'genrule(name = "all_txt", srcs = glob(["*.txt"]), outs = ["all.out"],'
                           ' cmd = "cat $(SRCS) > $@")\n',
              "pkg/a.txt": "a\n", "pkg/b.txt": "b\n"})
    ws.ok("//...")
    entries = _graph_entries(ws)
    assert len(entries) == 1

    (ws.root / "pkg/.a.txt.swp").write_text("A\n")
    os.replace(ws.root / "pkg/.a.txt.swp", ws.root / "pkg/a.txt")
    ws.ok("//...")
    assert ws.out("pkg/all.out") == "A\nb\n"
    assert _graph_entries(ws) == entries  # the same entry file: not even rewritten

    (ws.root / "pkg/c.txt").write_text("c\n")
    ws.ok("//...")
    assert ws.out("pkg/all.out") == "A\nb\nc\n"
    assert _graph_entries(ws) != entries

    (ws.root / "pkg/b.txt").unlink()
    (ws.root / "pkg/b.txt").mkdir()  # the same name, now a folder: no longer a glob match
    ws.ok("//...")
    assert ws.out("pkg/all.out") == "A\nc\n"
