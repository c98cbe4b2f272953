"""Labels and target patterns: parsing, relative resolution, errors, pattern scope, did-you-mean."""

from __future__ import annotations

import itertools
import re
from typing import Callable

import pytest

from posbuild.errors import BuildFileError
from posbuild.core.label import (Label, PatternKind, TargetPattern, did_you_mean, parse_label,
                            parse_pattern)

# -- parse_label: accepted forms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("//pkg:name", Label("pkg", "name")),
        ("//a/b/c:name", Label("a/b/c", "name")),
        ("//pkg", Label("pkg", "pkg")),
        ("//a/b", Label("a/b", "b")),
        ("//:name", Label("", "name")),
    ],
)
def test_absolute_labels(text: str, expected: Label) -> None:
    assert parse_label(text, "elsewhere") == expected


def test_short_form_equals_explicit_name() -> None:
    assert parse_label("//pkg", "") == parse_label("//pkg:pkg", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":name", Label("pkg", "name")),
        ("file.txt", Label("pkg", "file.txt")),
        ("sub/file.txt", Label("pkg", "sub/file.txt")),
    ],
)
def test_relative_labels_resolve_against_current_package(text: str, expected: Label) -> None:
    assert parse_label(text, "pkg") == expected


def test_relative_label_in_root_package() -> None:
    assert parse_label(":name", "") == Label("", "name")
    assert parse_label("file.txt", "") == Label("", "file.txt")


@pytest.mark.parametrize(
    ("label", "text"),
    [(Label("pkg", "name"), "//pkg:name"), (Label("", "name"), "//:name"),
     (Label("a/b", "f.txt"), "//a/b:f.txt")],
)
def test_label_str_is_canonical_and_round_trips(label: Label, text: str) -> None:
    assert str(label) == text
    assert parse_label(str(label), "other") == label


def test_labels_sort_by_package_then_name() -> None:
    labels = [Label("b", "a"), Label("a", "z"), Label("a", "b"), Label("", "x")]
    assert sorted(labels) == [Label("", "x"), Label("a", "b"), Label("a", "z"), Label("b", "a")]


# -- parse_label: errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("//pkg/../x:y", "invalid label '//pkg/../x:y': bad package path 'pkg/../x'"),
        ("//a//b:c", "invalid label '//a//b:c': bad package path 'a//b'"),
        ("//pkg/./x:y", "invalid label '//pkg/./x:y': bad package path 'pkg/./x'"),
        ("//pkg/:x", "invalid label '//pkg/:x': bad package path 'pkg/'"),
        ("//pkg:", "invalid label '//pkg:': empty target name"),
        ("//:", "invalid label '//:': empty target name"),
        ("//pkg:a:b", "invalid label '//pkg:a:b': bad target name 'a:b'"),
        ("//pkg:../x", "invalid label '//pkg:../x': bad target name '../x'"),
        ("@repo//x:y", "invalid label '@repo//x:y': external repositories are only for load()"),
        ("//", "invalid label '//': the root package needs ':name'"),
    ],
)
def test_malformed_labels_raise_build_file_error(text: str, message: str) -> None:
    with pytest.raises(BuildFileError) as info:
        parse_label(text, "pkg")
    assert info.value.render() == message


def test_relative_label_with_dotdot_is_rejected() -> None:
    with pytest.raises(BuildFileError, match="bad target name '../secret'"):
        parse_label("../secret", "pkg")


def test_empty_relative_name_is_rejected() -> None:
    with pytest.raises(BuildFileError, match="empty target name"):
        parse_label(":", "pkg")


# -- parse_pattern
# ----------------------------------------------------------------------------------


def test_recursive_pattern_for_whole_workspace() -> None:
    pattern = parse_pattern("//...")
    assert pattern == TargetPattern(PatternKind.RECURSIVE, "")
    assert str(pattern) == "//..."


def test_recursive_pattern_for_a_package() -> None:
    pattern = parse_pattern("//pkg/sub/...")
    assert pattern == TargetPattern(PatternKind.RECURSIVE, "pkg/sub")
    assert str(pattern) == "//pkg/sub/..."


@pytest.mark.parametrize("text", ["//pkg:all", "//pkg:*"])
def test_all_targets_of_a_package(text: str) -> None:
    pattern = parse_pattern(text)
    assert pattern.kind is PatternKind.ALL and pattern.package == "pkg"
    assert str(pattern) == text


def test_all_targets_of_root_package() -> None:
    assert parse_pattern("//:all") == TargetPattern(PatternKind.ALL, "", Label("", "all"))


def test_colon_all_names_a_target_called_all_when_the_package_has_one() -> None:
    """As in Bazel: `:all` is the target `all` if there is one; `:*` is always every target."""
    assert parse_pattern("//pkg:all").named_target({"all", "x"}) == Label("pkg", "all")
    assert parse_pattern("//pkg:all").named_target({"x"}) is None
    assert parse_pattern("//pkg:*").named_target({"all", "x"}) is None
    assert parse_pattern("//pkg/...").named_target({"all"}) is None


@pytest.mark.parametrize(
    ("text", "label"),
    [("//pkg:x", Label("pkg", "x")), ("//pkg", Label("pkg", "pkg")), ("//:x", Label("", "x"))],
)
def test_single_label_patterns(text: str, label: Label) -> None:
    pattern = parse_pattern(text)
    assert pattern == TargetPattern(PatternKind.SINGLE, label.package, label)
    assert str(pattern) == str(label)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":x", TargetPattern(PatternKind.SINGLE, "pkg", Label("pkg", "x"))),
        ("x", TargetPattern(PatternKind.SINGLE, "pkg", Label("pkg", "x"))),
        ("sub:x", TargetPattern(PatternKind.SINGLE, "pkg/sub", Label("pkg/sub", "x"))),
        ("sub/...", TargetPattern(PatternKind.RECURSIVE, "pkg/sub")),
        ("...", TargetPattern(PatternKind.RECURSIVE, "pkg")),
        (":all", TargetPattern(PatternKind.ALL, "pkg", Label("pkg", "all"))),
        ("//other:y", TargetPattern(PatternKind.SINGLE, "other", Label("other", "y"))),
    ],
)
def test_relative_patterns_resolve_against_current_package(text: str,
                                                           expected: TargetPattern) -> None:
    assert parse_pattern(text, "pkg") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x", TargetPattern(PatternKind.SINGLE, "", Label("", "x"))),
        ("sub/...", TargetPattern(PatternKind.RECURSIVE, "sub")),
        ("...", TargetPattern(PatternKind.RECURSIVE, "")),
    ],
)
def test_relative_patterns_from_workspace_root(text: str, expected: TargetPattern) -> None:
    assert parse_pattern(text, "") == expected


@pytest.mark.parametrize("text", ["//a//b/...", "//pkg/../x/...", "//pkg:", "@repo//x:y", "///",
                                  "//a/.../b"])
def test_malformed_patterns_raise(text: str) -> None:
    with pytest.raises(BuildFileError, match=f"^invalid target pattern '{re.escape(text)}': "):
        parse_pattern(text)


@pytest.mark.parametrize("text, expected", [
    ("//a/...:all", TargetPattern(PatternKind.RECURSIVE, "a")),
    ("//a/...:*", TargetPattern(PatternKind.RECURSIVE, "a")),
    ("//...:all", TargetPattern(PatternKind.RECURSIVE, "")),
])
def test_recursive_pattern_with_all_suffix_as_in_bazel(text: str, expected: TargetPattern) -> None:
    assert parse_pattern(text) == expected


# -- TargetPattern.covers_package
# ---------------------------------------------------------------------


def test_workspace_recursive_pattern_covers_every_package() -> None:
    pattern = parse_pattern("//...")
    assert all(pattern.covers_package(p) for p in ("", "a", "a/b", "zzz/y"))


def test_package_recursive_pattern_covers_package_and_descendants_only() -> None:
    pattern = parse_pattern("//a/...")
    assert pattern.covers_package("a")
    assert pattern.covers_package("a/b")
    assert pattern.covers_package("a/b/c")
    assert not pattern.covers_package("")
    assert not pattern.covers_package("ab")  # a sibling sharing a prefix is not below //a
    assert not pattern.covers_package("b/a")


@pytest.mark.parametrize("text", ["//a:all", "//a:x"])
def test_non_recursive_patterns_cover_exactly_their_package(text: str) -> None:
    pattern = parse_pattern(text)
    assert pattern.covers_package("a")
    assert not pattern.covers_package("a/b")
    assert not pattern.covers_package("")


# -- did_you_mean
# ----------------------------------------------------------------------------------------


def test_did_you_mean_names_closest_candidate() -> None:
    assert did_you_mean("trian", ["test", "train", "evaluate"]) == " (did you mean 'train'?)"


def test_did_you_mean_is_empty_when_nothing_is_close() -> None:
    assert did_you_mean("zzzz", ["train", "test"]) == ""
    assert did_you_mean("train", []) == ""


def test_did_you_mean_accepts_any_iterable() -> None:
    assert did_you_mean("evalute",
                        (n for n in ["evaluate", "report"])) == (" (did you mean 'evaluate'?)")


def test_the_quick_parse_says_what_the_checks_say() -> None:
    # every label text built from the pieces below, against every current package: the quick
    # match in front of the checks returns what they return, or leaves it to them to refuse
    from posbuild.core import label as module

    def outcome(split: Callable[[str, str], Label], text: str, package: str) -> object:
        try:
            return split(text, package)
        except module._Malformed as error:
            return str(error)

    pieces = ["a", "b.c", ".", "..", ".x", "..y", "...", "", "a b", "x$", "-", "é"]
    paths = {"/".join(p) for p in itertools.product(pieces, repeat=2)} | set(pieces)
    texts = {t for path in paths for t in (path, f":{path}", f"//{path}", f"//{path}:n",
                                             f"//p:{path}", f"//:{path}", f"@{path}",
                                             f"//{path}::n", f"/{path}", f"{path}/")}
    for package in ("", "p", "p/q", "p/", ".", "é"):
        for text in sorted(texts):
            assert outcome(module._split, text, package) == \
                outcome(module._split_checked, text, package), (text, package)
