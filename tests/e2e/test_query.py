"""`posbuild query` through the CLI on a known graph: exact results, every output format, errors.

The graph (two packages; edges point to dependencies):

    //lib: a diamond    top -> left -> base -> base.txt        right also reads schema.txt
                        top -> right -> base (through its output base.out)
    //app: a chain report -> step2 -> step1 -> inputs (a filegroup) -> raw.csv, //lib:schema.txt
                        report -> //lib:top, and -> //lib:base as a tool
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Workspace

BUILD_LIB = """\
exports_files(["schema.txt"])
genrule(name = "base", srcs = ["base.txt"], outs = ["base.out"], cmd = "cat $< > $@", tags = ["no-cache"])
genrule(name = "left", srcs = [":base"], outs = ["left.out"], cmd = "cat $< > $@", version = {"schema": "3"})
genrule(name = "right", srcs = ["base.out", "schema.txt"], outs = ["right.out"], cmd = "cat $(SRCS) > $@")
genrule(name = "top", srcs = [":left", ":right"], outs = ["top.out"], cmd = "cat $(SRCS) > $@")
"""  # noqa: E501
BUILD_APP = """\
filegroup(name = "inputs", srcs = ["raw.csv", "//lib:schema.txt"])
genrule(name = "step1", srcs = [":inputs"], outs = ["s1.out"], cmd = "cat $(SRCS) > $@")
genrule(name = "step2", srcs = [":step1"], outs = ["s2.out"], cmd = "cat $< > $@", timeout = 60)
genrule(name = "report", srcs = [":step2", "//lib:top"], outs = ["report.txt"],
        cmd = "cat $(SRCS) > $@", tools = ["//lib:base"])
"""
ALL = [
    "//app:inputs", "//app:raw.csv", "//app:report", "//app:step1", "//app:step2",
    "//lib:base", "//lib:base.txt", "//lib:left", "//lib:right", "//lib:schema.txt", "//lib:top",
]


@pytest.fixture(scope="module")
def graph_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("query") / "ws"
    root.mkdir()
    ws = Workspace(root)
    ws.write({"posbuild.toml": "", "lib/BUILD": BUILD_LIB, "app/BUILD": BUILD_APP,
              "lib/base.txt": "b\n", "lib/schema.txt": "s\n", "app/raw.csv": "r\n"})
    return ws


def query(ws: Workspace, *args: str, cwd: Path | None = None) -> list[str]:
    result = ws.run("query", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


CASES = [
    # deps
    ("deps(//app:report)", ALL),
    ("deps(//lib:top)", ["//lib:base", "//lib:base.txt", "//lib:left", "//lib:right",
                         "//lib:schema.txt", "//lib:top"]),
    ("deps(//app:step2, 1)", ["//app:step1", "//app:step2"]),
    ("deps(//app:step2, 0)", ["//app:step2"]),
    ("deps(//lib:base.out)", ["//lib:base", "//lib:base.txt"]),  # an output names its rule
    # rdeps
    ("rdeps(//..., //lib:base)",
     ["//app:report", "//lib:base", "//lib:left", "//lib:right", "//lib:top"]),
    ("rdeps(//lib/..., //lib:base)", ["//lib:base", "//lib:left", "//lib:right", "//lib:top"]),
    ("rdeps(//..., //lib:schema.txt, 1)", ["//app:inputs", "//lib:right", "//lib:schema.txt"]),
    ("rdeps(//app:step1, //lib:base)", []),
    # allpaths
    ("allpaths(//app:report, //lib:schema.txt)",
     ["//app:inputs", "//app:report", "//app:step1", "//app:step2", "//lib:right",
      "//lib:schema.txt", "//lib:top"]),
    ("allpaths(//lib:top, //lib:base)", ["//lib:base", "//lib:left", "//lib:right", "//lib:top"]),
    ("allpaths(//lib:left, //lib:schema.txt)", []),
    # kind
    ("kind(filegroup, //...)", ["//app:inputs"]),
    ("kind(genrule|filegroup, //app:all)",
     ["//app:inputs", "//app:report", "//app:step1", "//app:step2"]),
    ('kind("source file", deps(//app:step1))', ["//app:raw.csv", "//lib:schema.txt"]),
    ("kind(rule, deps(//lib:left))", ["//lib:base", "//lib:left"]),
    ("kind('^genrule', //app/...)", ["//app:report", "//app:step1", "//app:step2"]),
    # attr
    ("attr(tags, no-cache, //...)", ["//lib:base"]),
    ('attr(version, "schema=3", //...)', ["//lib:left"]),
    ("attr(srcs, ^:, //lib:all)", ["//lib:left", "//lib:top"]),
    ("attr(srcs, raw, //...)", ["//app:inputs"]),
    ('attr(cmd, "SRCS", //...)', ["//app:report", "//app:step1", "//lib:right", "//lib:top"]),
    ("attr(timeout, ^60$, //...)", ["//app:step2"]),
    ("attr(tools, //lib:base, //...)", ["//app:report"]),
    # set operations, word forms, precedence and parentheses
    ("//app:step1 + //lib:top", ["//app:step1", "//lib:top"]),
    ("//lib:all - //lib:base", ["//lib:left", "//lib:right", "//lib:top"]),
    ("deps(//lib:left) ^ deps(//lib:right)", ["//lib:base", "//lib:base.txt"]),
    ("deps(//lib:left) intersect deps(//lib:right) except //lib:base.txt union //app:step1",
     ["//app:step1", "//lib:base"]),
    ("//lib:left + //lib:right ^ //lib:right", ["//lib:right"]),  # equal precedence, from the left
    ("//lib:left + (//lib:right ^ //lib:right)", ["//lib:left", "//lib:right"]),
    ("//lib:all - //lib:left - //lib:right", ["//lib:base", "//lib:top"]),
    ("//lib:all - (//lib:left - //lib:right)", ["//lib:base", "//lib:right", "//lib:top"]),
    ("deps(//...) - deps(//app:report)", []),
    ("kind(rule, deps(//app:report) - deps(//lib:top)) - //app:report",
     ["//app:inputs", "//app:step1", "//app:step2"]),
]


@pytest.mark.parametrize("expr,expected", CASES, ids=[c[0] for c in CASES])
def test_query_results_are_exact(graph_ws: Workspace, expr: str, expected: list[str]) -> None:
    assert query(graph_ws, expr) == expected


def test_relative_labels_resolve_in_the_current_package(graph_ws: Workspace) -> None:
    assert query(graph_ws, "deps(:step2, 1) + :report.txt", cwd=graph_ws.root / "app") == [
        "//app:report", "//app:step1", "//app:step2"]
    assert query(graph_ws, ":all - kind(genrule, :*)",
                 cwd=graph_ws.root / "app") == ["//app:inputs"]


def test_label_output_is_sorted_one_per_line(graph_ws: Workspace) -> None:
    result = graph_ws.run("query", "rdeps(//..., //lib:right)", "--output", "label")
    assert result.stdout == "//app:report\n//lib:right\n//lib:top\n"


def test_graph_output_is_deterministic_dot(graph_ws: Workspace) -> None:
    result = graph_ws.run("query", "allpaths(//app:report, //lib:base)", "--output", "graph")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "digraph posbuild {\n"
        '  "//app:report";\n  "//lib:base";\n  "//lib:left";\n  "//lib:right";\n  "//lib:top";\n  '
        '"//app:report" -> "//lib:base";\n  "//app:report" -> "//lib:top";\n  "//lib:left" -> '
        '"//lib:base";\n  "//lib:right" -> "//lib:base";\n  "//lib:top" -> "//lib:left";\n  '
        '"//lib:top" -> "//lib:right";\n'
        "}\n"
    )
    again = graph_ws.run("query", "allpaths(//app:report, //lib:base)", "--output", "graph")
    assert again.stdout == result.stdout


def test_json_output_has_labels_edges_and_kinds(graph_ws: Workspace) -> None:
    result = graph_ws.run("query", "deps(//app:step1)", "--output", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["labels"] == ["//app:inputs", "//app:raw.csv", "//app:step1",
                                  "//lib:schema.txt"]
    assert document["edges"] == [
        ["//app:inputs", "//app:raw.csv"], ["//app:inputs", "//lib:schema.txt"],
        ["//app:step1", "//app:inputs"]]
    assert document["kinds"] == {"//app:inputs": "filegroup rule", "//app:raw.csv": "source file",
                                 "//app:step1": "genrule rule", "//lib:schema.txt": "source file"}


def test_empty_result_prints_nothing(graph_ws: Workspace) -> None:
    result = graph_ws.run("query", "kind(nothing, //...)")
    assert (result.returncode, result.stdout) == (0, "")
    empty = json.loads(graph_ws.run("query", "kind(nothing, //...)", "--output", "json").stdout)
    assert empty == {"labels": [], "edges": [], "kinds": {}}
    assert graph_ws.run("query", "kind(nothing, //...)", "--output",
                        "graph").stdout == ("digraph posbuild {\n}\n")


@pytest.mark.parametrize("expr,column", [
    ("deps(//app:report", 18),
    ("deps(//app:report))", 19),
    ("//lib:all +", 12),
    ("deps(//app:report, x)", 20),
    ("kind(, //...)", 6),
    ("(//lib:all", 11),
    ("rdeps(//...)", 12),
])
def test_syntax_error_is_a_usage_error_naming_the_column(graph_ws: Workspace, expr: str,
                                                         column: int) -> None:
    result = graph_ws.run("query", expr)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"posbuild: query syntax error at column {column}: ")
    assert result.stdout == ""


def test_unknown_function_and_bad_regex_are_usage_errors(graph_ws: Workspace) -> None:
    result = graph_ws.run("query", "dep(//app:report)")
    assert result.returncode == 2
    assert "unknown function 'dep'" in result.stderr and "did you mean 'deps'?" in result.stderr
    result = graph_ws.run("query", "kind('(', //...)")
    assert result.returncode == 2
    assert "bad regular expression '('" in result.stderr


def test_unknown_output_format_is_a_usage_error(graph_ws: Workspace) -> None:
    result = graph_ws.run("query", "//...", "--output", "xml")
    assert result.returncode == 2
    assert "xml" in result.stderr


@pytest.mark.parametrize("expr,message", [
    ("//app:reprt", "posbuild: no such target '//app:reprt' (did you mean 'report'?)"),
    ("deps(//ap:report)", "posbuild: no such package '//ap' (did you mean 'app'?)"),
    ("//lbi/...", "posbuild: pattern '//lbi/...' matches no targets (did you mean 'lib'?)"),
    ("//lbi:all", "posbuild: no such package '//lbi' (did you mean 'lib'?)"),
    ("//lib:shema.txt + //app:step1",
     "posbuild: no such target '//lib:shema.txt' (did you mean 'schema.txt'?)"),
])
def test_unknown_target_or_pattern_is_exit_3_with_did_you_mean(graph_ws: Workspace, expr: str,
                                                               message: str) -> None:
    result = graph_ws.run("query", expr)
    assert result.returncode == 3
    assert result.stderr.strip() == message


def test_bad_build_file_is_exit_3_with_its_location(ws: Workspace) -> None:
    ws.write(
        {"pkg/BUILD": 'genrule(name = "a", srcs = ["missing.txt"], outs = ["a.out"], cmd = '
                      '"true")\n'})
    result = ws.run("query", "//...")
    assert result.returncode == 3
    assert result.stderr.startswith(
        "posbuild: pkg/BUILD:1: //pkg:a: srcs entry 'missing.txt': no such target")


def test_the_cache_follows_edits_of_build_files_and_new_packages(ws: Workspace) -> None:
    ws.write({"a/BUILD": 'genrule(name = "x", srcs = ["in.txt"], outs = ["x.out"], cmd = "cat $< > '
                         '$@")\n',
              "a/in.txt": "1\n"})
    assert query(ws, "deps(//...)") == ["//a:in.txt", "//a:x"]
    assert (ws.root / ".posbuild" / "graphs" / "targets.query").is_file()
    ws.write({"a/BUILD": 'genrule(name = "x", srcs = ["in.txt"], outs = ["x.out"], cmd = "cat $< > '
                         '$@")\nfilegroup(name = "fg", srcs = [":x"])\n',
              "b/BUILD": 'genrule(name = "y", srcs = ["//a:x.out"], outs = ["y.out"], cmd = "cat '
                         '$< > $@")\n'})
    assert query(ws, "rdeps(//..., //a:x)") == ["//a:fg", "//a:x", "//b:y"]


def test_query_works_next_to_a_build(ws: Workspace) -> None:
    ws.write({"p/BUILD": 'genrule(name = "g", srcs = ["s.txt"], outs = ["g.out"], cmd = "cat $< > '
                         '$@")\nfilegroup(name = "fg", srcs = [":g"])\n',
              "p/s.txt": "s\n"})
    ws.ok("//...")
    assert query(ws, "deps(//p:fg)") == ["//p:fg", "//p:g", "//p:s.txt"]
    assert ws.ok("//...").returncode == 0


def test_help_lists_the_query_command(ws: Workspace) -> None:
    assert "query" in ws.run("--help").stdout
    result = ws.run("query", "--help")
    assert result.returncode == 0 and "rdeps(UNIVERSE, X" in result.stdout


def test_a_query_on_an_unchanged_workspace_evaluates_no_build_file(
        graph_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import posbuild.load.loader
    from posbuild.load.query import run_query

    first = run_query(graph_ws.root, "deps(//app:report)").labels

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("BUILD files were evaluated although nothing changed")

    monkeypatch.setattr(posbuild.load.loader.Loader, "__init__", no_loading)
    assert run_query(graph_ws.root, "deps(//app:report)").labels == first == ALL
    assert run_query(graph_ws.root, "attr(tags, no-cache, //...)").labels == ["//lib:base"]
