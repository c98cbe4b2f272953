"""The standard rule library (`@posbuild//rules:*.bzl`), driven through the CLI on temp
workspaces."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import textwrap
import time
import tomllib
from pathlib import Path

from blake3 import blake3

from conftest import Workspace, counts, executed_labels
from posbuild.load.loader import rules_dir

MACROS = ("checked_file", "concat", "copy_file", "expand_template", "tar_archive", "write_file")
LOADS = "".join(f'load("@posbuild//rules:{m}.bzl", "{m}")\n' for m in MACROS)


def rules_build(body: str) -> str:
    """A BUILD file loading every library macro, then `body` (dedented)."""
    return LOADS + textwrap.dedent(body)


def starlark_string(text: str) -> str:
    """A double-quoted Starlark literal for `text` (non-ASCII characters are written as they
    are)."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\t", "\\t").replace("\r", "\\r").replace("\0", "\\x00"))
    return f'"{escaped}"'


def digest(data: bytes) -> str:
    return blake3(data).hexdigest()


def out_bytes(ws: Workspace, rel: str) -> bytes:
    return (ws.root / "posbuild-out" / rel).read_bytes()


def test_every_macro_is_shipped_where_the_loader_looks() -> None:
    for macro in MACROS:
        text = (rules_dir() / f"{macro}.bzl").read_text()
        assert f"def {macro}(" in text
        assert text.startswith(f"# {macro}: ")  # documented, usage first
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]["rules"] == (
        "posbuild/_rules")


def test_copy_concat_write_expand_outputs_are_exact(ws: Workspace) -> None:
    ws.write({
        "lib/BUILD": rules_build("""
            exports_files(["footer.txt"])
            """),
        "lib/footer.txt": "-- end --\n",
        "app/head.txt": "head\n",
        "app/no_newline.txt": "tail",
        "app/run.sh": "#!/bin/sh\necho run\n",
        "app/page.html.in": "<h1>{TITLE}</h1>\n<p>{BODY}</p>\n{MISSING}\n",
        "app/BUILD": rules_build("""
            copy_file(name = "head_copy", src = "head.txt", out = "copied/head.txt")
            copy_file(name = "runner", src = "run.sh", out = "runner.sh", is_executable = True)
            write_file(name = "lines", out = "lines.txt", content = ["alpha", "", "gamma"])
            write_file(name = "none", out = "empty.txt", content = [])
            write_file(name = "raw", out = "raw.txt", content = "no newline at the end")
            concat(name = "joined", srcs = [":head_copy", "no_newline.txt", ":lines", "//lib:footer.txt"],
                   out = "joined.txt")
            concat(name = "nothing", srcs = [], out = "nothing.txt")
            expand_template(name = "page", template = "page.html.in", out = "page.html",
                            substitutions = {"{TITLE}": "Report", "{BODY}": "all good"})
            """),  # noqa: E501
    })
    result = ws.ok("//app:all")
    assert counts(result) == {"executed": 8, "cached": 0, "failed": 0}
    assert ws.out("app/copied/head.txt") == "head\n"
    assert ws.out("app/runner.sh") == "#!/bin/sh\necho run\n"
    assert os.stat(ws.root / "posbuild-out/app/runner.sh").st_mode & stat.S_IXUSR
    assert not os.stat(ws.root / "posbuild-out/app/copied/head.txt").st_mode & stat.S_IXUSR
    assert ws.out("app/lines.txt") == "alpha\n\ngamma\n"
    assert ws.out("app/empty.txt") == ""
    assert ws.out("app/raw.txt") == "no newline at the end"
    assert ws.out("app/joined.txt") == "head\ntailalpha\n\ngamma\n-- end --\n"
    assert ws.out("app/nothing.txt") == ""
    assert ws.out("app/page.html") == "<h1>Report</h1>\n<p>all good</p>\n{MISSING}\n"
    assert counts(ws.ok("//app:all"))["executed"] == 0

    ws.write({"app/head.txt": "HEAD\n"})  # a changed input re-runs the copy and the concat only
    assert executed_labels(ws.ok("//app:all")) == ["//app:head_copy", "//app:joined"]
    assert ws.out("app/joined.txt") == "HEAD\ntailalpha\n\ngamma\n-- end --\n"


NASTY = ("quotes ' \" `backticks` $HOME $(echo no) ${PATH} $$ %s %d %% \\ \\n \\0 \\\\ \n"
         "tab\there\r\nunicode: café ✓ 日本語 🚀\n"
         "nul:\0:after nul\n-n -e\n\n\n")


def test_write_file_writes_any_characters_exactly(ws: Workspace) -> None:
    # > 128 KiB: more than one variable can hold
    big = "".join(f"line {i} ✓ '$x'\n" for i in range(12000))
    lines = ", ".join(starlark_string(line) for line in ("a'\"$b", "\\\\"))
    build = LOADS + f"""
write_file(name = "nasty", out = "nasty.txt", content = {starlark_string(NASTY)})
write_file(name = "nasty_lines", out = "nasty_lines.txt", content = [{lines}])
write_file(name = "big", out = "big.txt", content = {starlark_string(big)})
write_file(name = "only_nul", out = "nul.bin", content = "\\x00")
"""
    (ws.root / "BUILD").write_text(build, encoding="utf-8")
    ws.ok("//:all")
    assert out_bytes(ws, "nasty.txt") == NASTY.encode()
    assert out_bytes(ws, "nasty_lines.txt") == b"a'\"$b\n\\\\\n"
    assert out_bytes(ws, "big.txt") == big.encode()
    assert len(big.encode()) > 128 * 1024
    assert out_bytes(ws, "nul.bin") == b"\0"

    (ws.root / "BUILD").write_text(build.replace("after nul", "after NUL"), encoding="utf-8")
    assert executed_labels(ws.ok("//:all")) == ["//:nasty"]  # the content is part of the key
    assert out_bytes(ws, "nasty.txt") == NASTY.replace("after nul", "after NUL").encode()


def test_expand_template_special_characters_single_pass(ws: Workspace) -> None:
    template = "a={A} ab={A}{B} dots=... re=(.*)+? nasty={NASTY} again={A}\n".encode() + (
        b"latin1:\xe9\xff\n")
    (ws.root / "tpl").mkdir()
    (ws.root / "tpl/in.txt").write_bytes(template)
    substitutions = {
        # a replacement that holds another placeholder is not expanded again
        "{A}": "<{B}>",
        "{B}": "b",
        "{A}{B}": "LONGEST",       # the longest placeholder wins where several match
        "...": "$1 \\1 \\g<0>",    # regex metacharacters on both sides are literal
        "(.*)+?": "regex",
        "{NASTY}": NASTY,
    }
    entries = ", ".join(f"{starlark_string(k)}: {starlark_string(v)}"
                        for k, v in substitutions.items())
    (ws.root / "tpl/BUILD").write_text(LOADS + f"""
expand_template(name = "out", template = "in.txt", out = "out.txt", substitutions = {{{entries}}})
expand_template(name = "reversed", template = "in.txt", out = "reversed.txt",
                substitutions = {{{", ".join(reversed(entries.split(", ")))}}})
""", encoding="utf-8")
    ws.ok("//tpl:all")
    expected = (f"a=<{{B}}> ab=LONGEST dots=$1 \\1 \\g<0> re=regex nasty={NASTY} "
                f"again=<{{B}}>\n".encode() + b"latin1:\xe9\xff\n")
    assert out_bytes(ws, "tpl/out.txt") == expected
    assert out_bytes(ws, "tpl/reversed.txt") == expected  # the order of the dict does not matter


def test_checked_file_passes_with_the_right_digest(ws: Workspace) -> None:
    data = b"id,value\n1,2\n"
    ws.write({
        "data/raw.csv": data.decode(),
        "data/BUILD": 'exports_files(["raw.csv"])\n',
        "pipe/BUILD": rules_build(f"""
            checked_file(name = "raw", src = "//data:raw.csv", digest = "{digest(data).upper()}")
            genrule(name = "rows", srcs = [":raw"], outs = ["rows.txt"], cmd = "wc -l < $< | tr -d ' ' > $@")
            """),  # noqa: E501
    })
    ws.ok("//pipe:rows")
    assert out_bytes(ws, "pipe/raw/raw.csv") == data
    assert ws.out("pipe/rows.txt") == "2\n"
    assert counts(ws.ok("//pipe:rows"))["executed"] == 0

    changed = b"id,value\n1,3\n"
    (ws.root / "data/raw.csv").write_bytes(changed)
    result = ws.build("//pipe:rows")
    assert result.returncode == 13
    assert result.stderr == (
        "posbuild: ORCH-03 checksum inconsistency: data/raw.csv is pinned by //pipe:raw to "
        f"{digest(data)} but hashes to {digest(changed)}; update the digest in its BUILD file to "
        "accept the change\n"
    )
    assert ws.out("pipe/rows.txt") == "2\n"  # nothing ran, nothing was touched


def test_checked_file_wrong_digest_is_orch03_and_runs_nothing(ws: Workspace) -> None:
    data = b"weights 0.5\n"
    wrong = "0" * 64
    ws.write({
        "m/weights.txt": data.decode(),
        "m/BUILD": rules_build(f"""
            write_file(name = "independent", out = "independent.txt", content = "x")
            checked_file(name = "weights", src = "weights.txt", digest = "{wrong}", out = "checked.txt")
            """),  # noqa: E501
    })
    for args in (["//m:all"], ["-k", "//m:all"], ["-n", "//m:all"]):
        result = ws.build(*args)
        assert result.returncode == 13, result
        assert "ORCH-03" in result.stderr and "m/weights.txt" in result.stderr
        assert wrong in result.stderr and digest(data) in result.stderr
        assert not (ws.root / "posbuild-out").exists()  # not even the independent action ran
    assert ws.ok("//m:independent")  # a request that does not read the file is not concerned

    ws.write({"m/BUILD": (ws.root / "m/BUILD").read_text().replace(wrong, digest(data))})
    ws.ok("//m:all")
    assert out_bytes(ws, "m/checked.txt") == data


def test_checked_file_rejects_bad_digests_and_generated_files(ws: Workspace) -> None:
    ws.write({"a.txt": "a",
              "BUILD": LOADS + 'checked_file(name = "c", src = "a.txt", digest = "abc")\n'})
    result = ws.build("//:c")
    assert result.returncode == 3 and "64 hex characters" in result.stderr
    ws.write({"BUILD": rules_build(f"""
        write_file(name = "gen", out = "gen.txt", content = "g")
        checked_file(name = "c", src = ":gen", digest = "{digest(b'g')}")
        """)})
    result = ws.build("//:c")
    assert result.returncode == 3 and "only source files can be pinned" in result.stderr
    assert not (ws.root / "posbuild-out").exists()


def read_members(archive: bytes) -> list[tuple[str, int, int, int, str, str, int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return [(m.name, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime, tar.extractfile(m).read())  # type: ignore[union-attr]
                for m in tar.getmembers()]


def test_tar_archive_is_byte_reproducible(ws: Workspace) -> None:
    ws.write({
        "pkg/z_last.txt": "zzz\n",
        "pkg/a_first.txt": "aaa\n",
        "pkg/sub/m_middle.txt": "mmm\n",
        "pkg/tool.sh": "#!/bin/sh\n",
        "pkg/BUILD": rules_build("""
            write_file(name = "gen", out = "gen/b_generated.txt", content = "generated\\n")
            FILES = ["z_last.txt", "sub/m_middle.txt", ":gen", "tool.sh", "a_first.txt"]
            tar_archive(name = "plain", srcs = FILES, out = "plain.tar")
            tar_archive(name = "rel", srcs = FILES, out = "rel.tar.gz", strip_prefix = ".")
            """),
    })
    os.chmod(ws.root / "pkg/tool.sh", 0o755)
    ws.ok("//pkg:all")
    first = {name: out_bytes(ws, f"pkg/{name}") for name in ("plain.tar", "rel.tar.gz")}

    members = read_members(first["plain.tar"])
    assert [m[0] for m in members] == ["pkg/a_first.txt", "pkg/gen/b_generated.txt",
                                       "pkg/sub/m_middle.txt", "pkg/tool.sh", "pkg/z_last.txt"]
    for name, mode, uid, gid, uname, gname, mtime, _ in members:
        assert (uid, gid, uname, gname, mtime) == (0, 0, "", "", 0), name
        assert mode == (0o755 if name.endswith(".sh") else 0o644), name
    assert dict((m[0], m[7]) for m in members)["pkg/gen/b_generated.txt"] == b"generated\n"
    assert b"PaxHeader" not in first["plain.tar"] and b"mtime=" not in first["plain.tar"]
    compressed = first["rel.tar.gz"]
    # gzip header: mtime 0, no file name
    assert compressed[4:8] == b"\0\0\0\0" and not compressed[3] & 0x08
    assert [m[0] for m in read_members(gzip.decompress(compressed))] == [
        "a_first.txt", "gen/b_generated.txt", "sub/m_middle.txt", "tool.sh", "z_last.txt"]

    time.sleep(1.1)
    for path in (ws.root / "pkg").rglob("*.txt"):
        os.utime(path)  # new mtimes, same bytes
    assert ws.run("clean", "--all").returncode == 0
    assert counts(ws.ok("//pkg:all"))["executed"] == 3  # really rebuilt from nothing
    for name, data in first.items():
        assert out_bytes(ws, f"pkg/{name}") == data, name


def test_tar_archive_rejects_a_file_outside_strip_prefix(ws: Workspace) -> None:
    ws.write({
        "a/x.txt": "a", "a/BUILD": 'exports_files(["x.txt"])\n',
        "b/x.txt": "b",
        "b/BUILD": rules_build("""
            tar_archive(name = "outside", srcs = ["x.txt", "//a:x.txt"], out = "outside.tar", strip_prefix = ".")
            """),  # noqa: E501
    })
    result = ws.build("//b:outside")
    assert result.returncode == 1
    assert "tar_archive: a/x.txt is not under strip_prefix 'b'" in result.stdout + result.stderr


def test_a_user_macro_wraps_library_macros(ws: Workspace) -> None:
    ws.write({
        "build_defs/release.bzl": """
            load("@posbuild//rules:write_file.bzl", "write_file")
            load("@posbuild//rules:tar_archive.bzl", "tar_archive")

            def release(name, version, files):
                write_file(name = name + "_version", out = name + "/VERSION", content = [version])
                tar_archive(name = name, srcs = files + [":" + name + "_version"],
                            out = name + "-" + version + ".tar", strip_prefix = ".")
            """,
        "build_defs/BUILD": "",
        "app/main.py": "print('hi')\n",
        "app/BUILD": """
            load("//build_defs:release.bzl", "release")
            release(name = "dist", version = "1.2.3", files = ["main.py"])
            """,
    })
    ws.ok("//app:dist")
    assert ws.out("app/dist/VERSION") == "1.2.3\n"
    members = read_members(out_bytes(ws, "app/dist-1.2.3.tar"))
    assert [(m[0], m[7]) for m in members] == [("dist/VERSION", b"1.2.3\n"),
                                               ("main.py", b"print('hi')\n")]
