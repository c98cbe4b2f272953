"""The pieces of the data-file readers and config() (builtins.py), without the evaluator."""

from __future__ import annotations

import pytest

from posbuild.load.builtins import Builtins, data_path


@pytest.fixture
def root(tmp_path):
    (tmp_path / "pkg/sub").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "posbuild-out/pkg").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("path, expected", [
    ("s.tsv", "pkg/s.tsv"),
    ("sub/../s.tsv", "pkg/s.tsv"),
    ("../shared/s.tsv", "shared/s.tsv"),
    ("//shared:s.tsv", "shared/s.tsv"),
    ("//:top.tsv", "top.tsv"),
])
def test_a_path_is_relative_to_the_package_or_a_label(root, path, expected):
    assert data_path(root, "pkg", path, "read_tsv") == expected


@pytest.mark.parametrize("path, needle", [
    ("../../x", "leaves the workspace"),
    ("/etc/passwd", "an absolute path"),
    ("../posbuild-out/pkg/x", "posbuild-out/"),
    ("//.posbuild:x", ".posbuild/"),
    ("", "non-empty string"),
])
def test_a_path_outside_the_sources_is_refused(root, path, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.").replace("/", "/")):
        data_path(root, "pkg", path, "read_tsv")


def test_a_link_resolving_outside_is_refused_and_one_inside_is_not(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "x.tsv"
    outside.write_text("a\n")
    (root / "pkg/out.tsv").symlink_to(outside)
    (root / "shared/real.tsv").write_text("a\n")
    (root / "pkg/in.tsv").symlink_to(root / "shared/real.tsv")
    with pytest.raises(ValueError, match="outside the workspace"):
        data_path(root, "pkg", "out.tsv", "read_tsv")
    assert data_path(root, "pkg", "in.tsv", "read_tsv") == "pkg/in.tsv"


def _builtins(root, variables=None, reads=None):
    return Builtins(root, variables or {}, lambda: "pkg",
                    lambda rel, data: (reads if reads is not None else []).append(rel),
                    lambda line: None)


def test_config_returns_the_value_else_the_default_else_names_the_key(root):
    builtins = _builtins(root, {"MODE": "slow"})
    assert builtins.config("MODE", "fast") == "slow"
    assert builtins.config("OTHER", None) is None
    with pytest.raises(ValueError, match='config\\("OTHER"\\): no value.*--define OTHER=VALUE'):
        builtins.config("OTHER")


def test_a_sheet_is_a_list_of_dicts_in_file_order_and_every_read_is_recorded(root):
    (root / "pkg/s.csv").write_bytes("\ufeffid, group\n\nb,\"x, y\"\na,z\n".encode())
    reads: list[str] = []
    rows = _builtins(root, reads=reads).functions()["read_csv"]("s.csv")
    assert rows == [{"id": "b", "group": "x, y"}, {"id": "a", "group": "z"}]
    assert reads == ["pkg/s.csv"]
