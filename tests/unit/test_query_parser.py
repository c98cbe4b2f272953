"""The query language without a workspace: parsing (structure, columns of errors) and evaluation
on a hand-built TargetGraph, including a cycle, which a query must survive."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from posbuild.errors import BuildFileError, UsageError
from posbuild.core.label import PatternKind, parse_pattern
from posbuild.load.query import (Allpaths, Attr, Deps, Evaluator, Kind, Pattern, QueryResult, Rdeps,
                            SetOp, TargetGraph, parse_query)


def pat(text: str, package: str = "") -> Pattern:
    return Pattern(parse_pattern(text, package))


def test_patterns_and_functions_parse_into_a_tree() -> None:
    assert parse_query("//...") == pat("//...")
    assert parse_query("deps(//a:x)") == Deps(pat("//a:x"), None)
    assert parse_query("deps( //a:x , 2 )") == Deps(pat("//a:x"), 2)
    assert parse_query("rdeps(//..., //a:x, 1)") == Rdeps(pat("//..."), pat("//a:x"), 1)
    assert parse_query("allpaths(//a:x, '//b:y')") == Allpaths(pat("//a:x"), pat("//b:y"))


def test_relative_patterns_use_the_current_package() -> None:
    expr = parse_query(":x + y + sub/... + :all", "pkg")
    assert isinstance(expr, SetOp)
    assert expr.right == Pattern(parse_pattern("//pkg:all"))
    assert expr.left.right.pattern.kind is PatternKind.RECURSIVE
    assert expr.left.right.pattern.package == "pkg/sub"
    assert expr.left.left.right == pat("//pkg:y")
    assert expr.left.left.left == pat("//pkg:x")


def test_operators_have_equal_precedence_and_group_from_the_left() -> None:
    a, b, c = pat("//p:a"), pat("//p:b"), pat("//p:c")
    assert parse_query("//p:a + //p:b ^ //p:c") == SetOp("^", SetOp("+", a, b), c)
    assert parse_query("//p:a + (//p:b ^ //p:c)") == SetOp("+", a, SetOp("^", b, c))
    assert parse_query("//p:a - //p:b - //p:c") == SetOp("-", SetOp("-", a, b), c)
    assert parse_query("//p:a union //p:b intersect //p:c except //p:a") == \
        SetOp("-", SetOp("^", SetOp("+", a, b), c), a)


def test_a_dash_inside_a_word_belongs_to_the_label() -> None:
    assert parse_query("//p:a-b - //p:c") == SetOp("-", pat("//p:a-b"), pat("//p:c"))


def test_regex_arguments_may_be_bare_or_quoted() -> None:
    kind = parse_query("kind(genrule|filegroup, //...)")
    assert isinstance(kind, Kind) and kind.regex.pattern == "genrule|filegroup"
    assert parse_query("kind((gen|file)[a-z]{1,4}, //...)").regex.pattern == "(gen|file)[a-z]{1,4}"
    assert parse_query('kind("source file", //...)').regex.pattern == "source file"
    attr = parse_query("attr(tags, 'a,b', deps(//p:a))")
    assert isinstance(attr, Attr) and (attr.name, attr.regex.pattern) == ("tags", "a,b")
    assert attr.expr == Deps(pat("//p:a"), None)


@pytest.mark.parametrize("text,column,fragment", [
    ("", 1, "empty query expression"),
    ("deps(//a:x", 11, "expected ')'"),
    ("deps(//a:x))", 12, "expected an operator"),
    ("//a:x +", 8, "expected a target pattern"),
    ("//a:x //b:y", 7, "expected an operator"),
    ("deps(//a:x, -1)", 13, "expected a depth"),
    ("deps(//a:x, two)", 13, "expected a depth"),
    ("siblings(//a:x)", 1, "unknown function 'siblings'"),
    ("somepath(//a:x)", 15, "expected ','"),
    ("filter(, //...)", 8, "expected a regular expression"),
    ("kind('(', //...)", 6, "bad regular expression"),
    ("kind('abc, //...)", 6, "unterminated string"),
    ("attr(, x, //...)", 6, "expected an attribute name"),
    ("rdeps(//...)", 12, "expected ','"),
    ("union", 1, "expected a target pattern"),
    ("(//a:x", 7, "expected ')'"),
])
def test_syntax_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_query(text)
    assert caught.value.exit_code == 2
    assert caught.value.detail.startswith(f"query syntax error at column {column}: ")
    assert fragment in caught.value.detail


def test_a_malformed_label_is_a_label_error() -> None:
    with pytest.raises(BuildFileError) as caught:
        parse_query("deps(//a/../b:x)")
    assert caught.value.exit_code == 3


def graph() -> TargetGraph:
    """//p:a -> //p:b -> //p:c -> //p:b (a cycle), //p:a -> //p:f.txt, //q:d (a filegroup) ->
    //p:c."""
    labels = ["//p:a", "//p:b", "//p:c", "//p:f.txt", "//q:d"]
    kinds = ["filegroup", "genrule", "source file"]
    kind_of = [1, 1, 1, 2, 0]
    deps = [[1, 3], [2], [1], [], [2]]
    tags = msgpack.packb([["x"], [], ["x", "y"], None, []])
    return TargetGraph(Path("/nonexistent"), ["p", "q"], labels, kinds, kind_of, deps,
                       [[0, 1, 2], [4]], [[], []], {"tags": tags}, msgpack.packb({"//p:a.out": 0}),
                       b"")


def run(text: str) -> list[str]:
    g = graph()
    return QueryResult(g, tuple(sorted(Evaluator(g)(parse_query(text))))).labels


def test_evaluation_on_a_graph_with_a_cycle() -> None:
    assert run("deps(//p:b)") == ["//p:b", "//p:c"]
    assert run("deps(//p:a, 1)") == ["//p:a", "//p:b", "//p:f.txt"]
    assert run("rdeps(//..., //p:c)") == ["//p:a", "//p:b", "//p:c", "//q:d"]
    assert run("rdeps(//p:all, //p:c)") == ["//p:a", "//p:b", "//p:c"]
    assert run("allpaths(//p:a, //p:c)") == ["//p:a", "//p:b", "//p:c"]
    assert run("allpaths(//q:d, //p:f.txt)") == []
    assert run("kind(filegroup, //...)") == ["//q:d"]
    assert run("kind(file, deps(//...))") == ["//p:f.txt", "//q:d"]
    assert run("attr(tags, ^y$, //...)") == ["//p:c"]
    assert run("attr(tags, x, //...)") == ["//p:a", "//p:c"]
    assert run("attr(nosuch, ., //...)") == []
    assert run("//p:a.out") == ["//p:a"]
    assert run("//...") == ["//p:a", "//p:b", "//p:c", "//q:d"]


def test_somepath_filter_and_tests_on_a_graph_with_a_cycle() -> None:
    assert run("somepath(//p:a, //p:c)") == ["//p:a", "//p:b", "//p:c"]
    assert run("somepath(//q:d, //p:b)") == ["//p:b", "//p:c", "//q:d"]  # through the cycle
    assert run("somepath(//p:c, //p:c)") == ["//p:c"]
    assert run("somepath(//q:d, //p:f.txt)") == []
    assert run("somepath(//p:b, //p:a)") == []  # edges point to dependencies only
    assert run("filter(':[ab]$', //...)") == ["//p:a", "//p:b"]
    assert run("filter(txt, deps(//p:a))") == ["//p:f.txt"]
    assert run("tests(//...)") == []


def test_somepath_is_one_shortest_path_whatever_the_order_found() -> None:
    """a -> b -> d and a -> c -> d, a -> d directly: one path, the shortest."""
    labels = ["//p:a", "//p:b", "//p:c", "//p:d"]
    g = TargetGraph(Path("/nonexistent"), ["p"], labels, ["genrule", "source file"], [0] * 4,
                    [[1, 2, 3], [3], [3], []], [[0, 1, 2, 3]], [[]], {}, b"", b"")
    found = QueryResult(g, tuple(sorted(Evaluator(g)(parse_query("somepath(//p:a, //p:d)")))))
    assert found.labels == ["//p:a", "//p:d"]
    g.deps[0].remove(3)
    found = QueryResult(g, tuple(sorted(Evaluator(g)(parse_query("somepath(//p:a, //p:d)")))))
    assert found.labels == ["//p:a", "//p:b", "//p:d"]  # of two equal paths, the first in order


def test_tests_selects_the_kinds_named_like_bazel_tests() -> None:
    labels = ["//p:build", "//p:py", "//p:sh", "//p:testing"]
    kinds = ["genrule", "py_test", "sh_test", "test_data"]
    g = TargetGraph(Path("/nonexistent"), ["p"], labels, kinds, [0, 1, 2, 3], [[], [], [], []],
                    [[0, 1, 2, 3]], [[]], {}, b"", b"")
    found = QueryResult(g, tuple(sorted(Evaluator(g)(parse_query("tests(//...)")))))
    assert found.labels == ["//p:py", "//p:sh"]


def test_outputs_render_edges_among_the_result() -> None:
    g = graph()
    result = QueryResult(g, tuple(sorted(Evaluator(g)(parse_query("deps(//p:b) + //q:d")))))
    assert result.render("label") == "//p:b\n//p:c\n//q:d\n"
    assert result.edges() == [("//p:b", "//p:c"), ("//p:c", "//p:b"), ("//q:d", "//p:c")]
    assert result.render("graph").splitlines()[-2:] == ['  "//q:d" -> "//p:c";', "}"]


def test_unknown_labels_get_did_you_mean() -> None:
    with pytest.raises(BuildFileError,
                       match=r"no such target '//p:f\.tx' \(did you mean 'f\.txt'\?\)"):
        run("//p:f.tx")
    with pytest.raises(BuildFileError, match=r"no such package '//qq' \(did you mean 'q'\?\)"):
        run("//qq:d")
