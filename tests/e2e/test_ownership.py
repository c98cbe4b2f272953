"""Every output path has exactly one owner: overlapping outputs are BUILD errors (exit 3) at
analysis.

Two targets writing one file, an output that would be the folder of another output, of a
subpackage or of source files, and an output named like a source file are all refused before
anything runs, with a message naming both owners, whatever the pattern and whether the graph comes
from the graph cache or from a fresh analysis.
"""

from __future__ import annotations

import pytest

from conftest import Workspace
from ownership_cases import cases, generate


def refused(ws: Workspace, *patterns: str) -> str:
    """Build `patterns` (default //...), check it is one BUILD error line, and return it."""
    result = ws.build(*(patterns or ("//...",)))
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("posbuild: "), result.stderr
    assert result.stdout == ""
    out = ws.root / "posbuild-out"
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), "something ran"
    return lines[0][len("posbuild: "):]


CROSSING = {
    "p/BUILD": (
        'genrule(name = "outer", outs = ["q/x.txt"], cmd = "echo outer > $@")\n'
        'genrule(name = "use", srcs = ["//p/q:x.txt"], outs = ["use.txt"], cmd = "cat $< > $@")\n'
    ),
    "p/q/BUILD": 'genrule(name = "inner", outs = ["x.txt"], cmd = "echo inner > $@")\n',
}


def test_an_output_that_crosses_into_a_subpackage_is_refused(ws):
    ws.write(CROSSING)
    assert refused(ws) == "p/BUILD:1:1: output 'q/x.txt' of //p:outer crosses into package //p/q"


def test_the_crossing_is_refused_whenever_its_package_is_loaded(ws):
    ws.write(CROSSING)
    assert refused(ws,
                   "//p:use").endswith("output 'q/x.txt' of //p:outer crosses into package //p/q")
    ws.ok("//p/q:inner")  # //p is not loaded: nothing claims posbuild-out/p/q/ but //p/q
    assert ws.out("p/q/x.txt") == "inner\n"


def test_an_output_named_like_a_subpackage_folder_is_refused(ws):
    ws.write({
        "p/BUILD": 'genrule(name = "a", outs = ["q"], cmd = "echo > $@")\n',
        "p/q/r/BUILD": 'genrule(name = "r", outs = ["r.txt"], cmd = "echo > $@")\n',
    })
    assert refused(ws) == (
        "p/BUILD:1:1: output 'q' of //p:a conflicts with package //p/q/r, which lies under it")


def test_an_output_of_the_root_package_inside_a_package_folder_is_refused(ws):
    ws.write({
        "BUILD": 'genrule(name = "top", outs = ["p/x.txt"], cmd = "echo > $@")\n',
        "p/BUILD": 'genrule(name = "x", outs = ["x.txt"], cmd = "echo > $@")\n',
    })
    assert refused(ws, "//:top") == "BUILD:1:1: output 'p/x.txt' of //:top crosses into package //p"


@pytest.mark.parametrize("build, message", [
    ('genrule(name = "a", outs = ["sub"], cmd = "echo > $@")\n'
     'genrule(name = "b", outs = ["sub/x.txt"], cmd = "echo > $@")\n',
     "p/BUILD:2:1: output 'sub/x.txt' of //p:b conflicts with output 'sub' of //p:a: "
     "a path cannot be both a file and a folder"),
    ('genrule(name = "b", outs = ["sub/x.txt"], cmd = "echo > $@")\n'
     'genrule(name = "a", outs = ["sub"], cmd = "echo > $@")\n',
     "p/BUILD:2:1: output 'sub' of //p:a conflicts with output 'sub/x.txt' of //p:b: "
     "a path cannot be both a file and a folder"),
    ('genrule(name = "a", outs = ["sub/deep/x.txt", "sub"], cmd = "touch $(OUTS)")\n',
     "p/BUILD:1:1: output 'sub' of //p:a conflicts with output 'sub/deep/x.txt' of //p:a: "
     "a path cannot be both a file and a folder"),
])
def test_an_output_that_is_the_folder_of_another_output_is_refused(ws, build, message):
    ws.write({"p/BUILD": build})
    assert refused(ws) == message


def test_an_output_named_like_a_source_file_is_refused_not_a_cycle(ws):
    ws.write({
        "p/data.txt": "source\n",
        "p/BUILD": 'genrule(name = "a", srcs = ["data.txt"], outs = ["data.txt"], cmd = "cp $< '
                   '$@")\n',
    })
    assert refused(ws) == (
        "p/BUILD:1:1: output 'data.txt' of //p:a conflicts with source file p/data.txt")


@pytest.mark.parametrize("out, source", [
    ("data", "p/data/raw.csv"),  # the output would be a folder of sources
    ("raw.csv/x", "p/raw.csv"),  # the output would be inside a source file
])
def test_an_output_overlapping_a_source_path_is_refused(ws, out, source):
    ws.write({"p/data/raw.csv": "1\n", "p/raw.csv": "2\n",
              "p/BUILD": f'genrule(name = "a", outs = ["{out}"], cmd = "echo > $@")\n'})
    assert refused(ws) == (
        f"p/BUILD:1:1: output '{out}' of //p:a conflicts with source file {source}")


@pytest.mark.parametrize("out", ["../x", "/abs", ".", "a/./b", "a//b", "a/"])
def test_an_output_outside_its_package_is_refused(ws, out):
    ws.write({"p/BUILD": f'genrule(name = "a", outs = ["{out}"], cmd = "echo > $@")\n'})
    assert refused(
        ws) == (f"p/BUILD:1:1: genrule 'a': output '{out}' must be a relative path inside "
                           f"the package, without '.', '..' or empty parts")


def test_an_output_listed_twice_by_one_target_is_refused(ws):
    ws.write({"p/BUILD": 'genrule(name = "a", outs = ["x", "x"], cmd = "touch $(OUTS)")\n'})
    assert refused(ws) == "p/BUILD:1:1: genrule: attribute 'outs' lists 'x' twice"


def test_one_file_declared_by_two_targets_names_both(ws):
    ws.write({"p/BUILD": (
        'genrule(name = "a", outs = ["same.txt"], cmd = "echo > $@")\n'
        'genrule(name = "b", outs = ["same.txt"], cmd = "echo > $@")\n'
    )})
    assert refused(ws) == "p/BUILD:2:1: output 'same.txt' of //p:b is already an output of //p:a"


def test_a_source_of_the_root_package_inside_posbuild_out_is_refused(ws):
    ws.write({
        "BUILD": 'genrule(name = "peek", srcs = ["posbuild-out/p/x.txt"], outs = ["y.txt"], cmd = '
                 '"cp $< $@")\n',
        "p/BUILD": 'genrule(name = "x", outs = ["x.txt"], cmd = "echo x > $@")\n',
    })
    ws.ok("//p:x")
    message = refused_keeping(ws, "//:peek")
    assert message == ("BUILD:1: //:peek: srcs entry 'posbuild-out/p/x.txt': posbuild-out/ holds "
                       "the outputs of rules, not sources; name the rule that produces it (e.g. "
                       "//p:x.txt)")


def refused_keeping(ws: Workspace, *patterns: str) -> str:
    """Like `refused`, for a workspace that holds earlier outputs."""
    result = ws.build(*patterns)
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr.strip()[len("posbuild: "):]


# --- the graph cache ----------------------------------------------------------------------------


def test_a_new_source_file_makes_a_cached_graph_conflict(ws):
    ws.write({"p/BUILD": 'genrule(name = "a", outs = ["gen.txt"], cmd = "echo > $@")\n'})
    ws.ok("//...")
    ws.ok("//...")  # the graph now comes from the graph cache
    ws.write({"p/gen.txt": "a source now\n"})
    assert refused_keeping(ws, "//...") == (
        "p/BUILD:1:1: output 'gen.txt' of //p:a conflicts with source file p/gen.txt")


def test_a_new_subpackage_makes_a_cached_graph_conflict(ws):
    ws.write({"p/BUILD": 'genrule(name = "outer", outs = ["q/x.txt"], cmd = "echo > $@")\n'})
    ws.ok("//p:outer")
    ws.ok("//p:outer")
    ws.write({"p/q/BUILD": 'genrule(name = "inner", outs = ["x.txt"], cmd = "echo > $@")\n'})
    message = refused_keeping(ws, "//p:outer")
    assert message == "p/BUILD:1:1: output 'q/x.txt' of //p:outer crosses into package //p/q"


def test_a_new_source_file_in_a_hidden_folder_makes_a_cached_graph_conflict(ws):
    # package discovery skips hidden folders, so their stamps alone would not notice the file
    ws.write({"p/BUILD": 'genrule(name = "a", outs = [".well-known/gen.txt"], cmd = "echo > $@")\n',
              "p/.well-known/other.txt": "a source\n"})
    ws.ok("//...")
    ws.ok("//...")
    ws.write({"p/.well-known/gen.txt": "a source now\n"})
    assert refused_keeping(ws, "//...") == (
        "p/BUILD:1:1: output '.well-known/gen.txt' of //p:a conflicts with source file "
        "p/.well-known/gen.txt")


# --- what does not overlap builds ---------------------------------------------------------------


def test_outputs_beside_each_other_and_beside_sources_build(ws):
    ws.write({
        "p/data/raw.csv": "raw\n",
        "p/sub.txt": "a source\n",
        "p/q/BUILD": 'genrule(name = "inner", outs = ["x.txt"], cmd = "echo inner > $@")\n',
        "p/BUILD": (
            'genrule(name = "clean", srcs = ["data/raw.csv"], outs = ["data/clean.csv"], cmd = "cp '
            '$< $@")\ngenrule(name = "a", outs = ["sub/x.txt", "sub-x", "sub.out", "qq/x.txt"], '
            'cmd = "for o in $(OUTS); do echo a > $$o; done")\n'
            'genrule(name = "b", outs = ["sub/y/z.txt"], cmd = "echo b > $@")\n'
        ),
    })
    ws.ok("//...")
    assert ws.out("p/data/clean.csv") == "raw\n"
    assert ws.out("p/sub/x.txt") == ws.out("p/qq/x.txt") == "a\n"
    assert ws.out("p/sub/y/z.txt") == "b\n"
    assert ws.out("p/q/x.txt") == "inner\n"


# --- the property, end to end -------------------------------------------------------------------


@pytest.mark.parametrize("seed",
                         cases(3, conflict=True, start=1000) + cases(3, conflict=False, start=1000))
def test_random_workspaces_build_exactly_when_no_output_overlaps(tmp_path, seed):
    case = generate(seed)
    ws = Workspace(tmp_path / "ws")
    ws.write(case.files)
    if case.conflict:
        message = refused(ws)
        assert "crosses into package" in message or "conflicts with" in message \
                or "already an output" in message
        return
    ws.ok("//...")
    for package, name, out in case.outputs:
        assert ws.out(f"{package}/{out}" if package else out) == f"//{package}:{name}\n"
