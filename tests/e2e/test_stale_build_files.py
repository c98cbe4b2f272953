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
