"""Bazel's visibility rules, checked on their own (core/visibility.py)."""

from __future__ import annotations

import pytest

from posbuild.core.label import Label
from posbuild.core.visibility import (PRIVATE, PUBLIC, PackageGroup, canonical_visibility,
                                      is_visible, package_specs)
from posbuild.errors import BuildFileError

GROUPS = {
    Label("g", "tropical"): PackageGroup(Label("g", "tropical"),
                                         ("//fruits/mango", "//fruits/papaya/...",
                                          "-//fruits/papaya/green"), ("//g:more",)),
    Label("g", "more"): PackageGroup(Label("g", "more"), ("//veg",), ("//g:tropical",)),
}


def group(label: Label) -> PackageGroup:
    if label not in GROUPS:
        raise BuildFileError(f"{label} is not a package_group")
    return GROUPS[label]


@pytest.mark.parametrize(("visibility", "consumer", "expected"), [
    ((PUBLIC,), "any/where", True),
    ((PRIVATE,), "lib/sub", False),
    ((PRIVATE,), "lib", True),  # always visible inside its own package
    (("//app:__pkg__",), "app", True),
    (("//app:__pkg__",), "app/sub", False),
    (("//app:__subpackages__",), "app/sub/deeper", True),
    (("//app:__subpackages__",), "application", False),  # a sibling sharing a prefix
    (("//:__subpackages__",), "anything", True),
    (("//:__pkg__",), "x", False),
    (("//g:tropical",), "fruits/mango", True),
    (("//g:tropical",), "fruits/mango/ripe", False),
    (("//g:tropical",), "fruits/papaya/ripe", True),
    (("//g:tropical",), "fruits/papaya/green", False),  # excluded
    (("//g:tropical",), "veg", True),  # through includes, which may form a cycle
    (("//g:tropical",), "meat", False),
])
def test_who_sees_a_target_of_package_lib(visibility, consumer, expected):
    assert is_visible(visibility, "lib", consumer, group) is expected


def test_canonical_visibility_resolves_relative_labels_and_refuses_unknown_words():
    assert canonical_visibility([":__subpackages__", "//visibility:public"], "a/b", "r") == \
        ("//a/b:__subpackages__", PUBLIC)
    with pytest.raises(ValueError, match="visibility entry '//visibility:friends' is unknown"):
        canonical_visibility(["//visibility:friends"], "a", "r")
    with pytest.raises(ValueError, match="must be a list of labels"):
        canonical_visibility(PUBLIC, "a", "r")


@pytest.mark.parametrize("spec", ["//a", "//a/...", "//...", "public", "private", "-//a/b"])
def test_package_specs_accept_bazels_forms(spec):
    assert package_specs([spec], "g") == (spec,)


@pytest.mark.parametrize("spec", ["a", "//a:b", ":x", "//a/../b", ""])
def test_package_specs_refuse_anything_else(spec):
    with pytest.raises(ValueError, match="is not '//pkg', '//pkg/...', 'public' or 'private'"):
        package_specs([spec], "g")
