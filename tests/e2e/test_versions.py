"""`version` feeds the action key; `requires` is checked before anything runs (ORCH-02, exit 12)."""

from __future__ import annotations

from conftest import Workspace, counts, executed_labels

CHAIN = {
    "data/raw.csv": "a,b\n1,2\n",
    "data/BUILD": """
        genrule(name = "clean", srcs = ["raw.csv"], outs = ["clean.csv"], cmd = "cat $< > $@",
                version = {"schema": "2"})
        """,
    "model/BUILD": """
        genrule(name = "train", srcs = ["//data:clean"], outs = ["model.txt"], cmd = "cat $(SRCS) > $@",
                requires = {"//data:clean": {"schema": "3"}})
        genrule(name = "report", srcs = [":train"], outs = ["report.txt"], cmd = "wc -l < $< > $@")
        """,  # noqa: E501
}

MISMATCH = ("posbuild: ORCH-02 version mismatch: model/BUILD:2: //model:train requires "
            "//data:clean schema=3, but //data:clean declares schema=2\n")


def test_unmet_requirement_is_orch02_and_runs_nothing(ws: Workspace) -> None:
    ws.write(CHAIN)
    for args in ((), ("//model:report",), ("-n",)):
        result = ws.build(*args)
        assert result.returncode == 12, result
        assert result.stderr == MISMATCH
        assert result.stdout == ""
        assert not (ws.root / "posbuild-out").exists()


def test_a_required_key_the_target_does_not_declare(ws: Workspace) -> None:
    ws.write({**CHAIN, "data/BUILD": """
        genrule(name = "clean", srcs = ["raw.csv"], outs = ["clean.csv"], cmd = "cat $< > $@",
                version = {"data": "2024-06"})
        """})
    result = ws.build()
    assert result.returncode == 12
    assert result.stderr == ("posbuild: ORCH-02 version mismatch: model/BUILD:2: //model:train "
                             "requires //data:clean schema=3, "
                             "but //data:clean declares no schema\n")
    assert not (ws.root / "posbuild-out").exists()


def test_satisfied_requirement_builds_with_relative_labels_and_int_values(ws: Workspace) -> None:
    ws.write({
        "pkg/in.txt": "x\n",
        "pkg/BUILD": """
            genrule(name = "a", srcs = ["in.txt"], outs = ["a.txt"], cmd = "cat $< > $@",
                    version = {"schema": "3", "model": "v7"})
            filegroup(name = "group", srcs = [":a"])
            genrule(name = "b", srcs = [":group"], outs = ["b.txt"], cmd = "cat $< > $@",
                    requires = {":a": {"schema": 3, "model": "v7"}})
            """,
    })
    result = ws.ok()
    assert executed_labels(result) == ["//pkg:a", "//pkg:b"]
    assert ws.out("pkg/b.txt") == "x\n"


def test_requirement_is_checked_when_the_graph_came_from_the_cache(ws: Workspace) -> None:
    ws.write({**CHAIN, "data/BUILD": CHAIN["data/BUILD"].replace('"2"', '"3"')})
    assert counts(ws.ok())["executed"] == 3
    assert counts(ws.ok())["executed"] == 0  # the analysed graph is now cached
    ws.write({"data/BUILD": CHAIN["data/BUILD"]})  # the dependency now declares schema=2
    for _ in range(2):  # a failed analysis is never cached
        result = ws.build()
        assert result.returncode == 12
        assert result.stderr == MISMATCH
        assert result.stdout == ""


def test_requirement_on_a_target_that_is_not_a_dependency_is_a_build_error(ws: Workspace) -> None:
    ws.write({**CHAIN, "model/BUILD": """
        genrule(name = "train", srcs = ["//data:clean"], outs = ["model.txt"], cmd = "cat $(SRCS) > $@")
        genrule(name = "report", srcs = [":train"], outs = ["report.txt"], cmd = "wc -l < $< > $@",
                requires = {"//data:clean": {"schema": "2"}, ":other": {"schema": "1"}})
        genrule(name = "other", outs = ["other.txt"], cmd = "echo > $@", version = {"schema": "1"})
        """})  # noqa: E501
    result = ws.build()
    assert result.returncode == 3
    assert result.stderr == (
        "posbuild: model/BUILD:3: //model:report: requires entry ':other': //model:other is not a "
        "dependency of //model:report; a target may require versions only of targets it depends "
        "on through srcs or tools (directly or transitively)\n")
    assert not (ws.root / "posbuild-out").exists()


def test_requirement_must_name_a_rule(ws: Workspace) -> None:
    ws.write({**CHAIN, "model/BUILD": """
        genrule(name = "train", srcs = ["//data:clean"], outs = ["model.txt"], cmd = "cat $(SRCS) > $@",
                requires = {"//data:clean.csv": {"schema": "2"}})
        """})  # noqa: E501
    result = ws.build()
    assert result.returncode == 3
    assert "requires entry '//data:clean.csv': '//data:clean.csv' is not a rule target; " \
           "name the rule that produces it, '//data:clean'" in result.stderr


def test_version_change_reexecutes_the_action_and_only_dependents_whose_inputs_changed(
    ws: Workspace) -> None:
    ws.write({
        "p/in.txt": "x\n",
        "p/BUILD": """
            genrule(name = "stable", srcs = ["in.txt"], outs = ["stable.txt"], cmd = "cat $< > $@",
                    version = {"data": "1"})
            genrule(name = "after_stable", srcs = [":stable"], outs = ["s2.txt"], cmd = "cat $< > $@")
            genrule(name = "stamp", srcs = ["in.txt"], outs = ["stamp.txt"], cmd = "date +%s%N > $@",
                    version = {"model": "v1"})
            genrule(name = "after_stamp", srcs = [":stamp"], outs = ["t2.txt"], cmd = "cat $< > $@")
            genrule(name = "other", srcs = ["in.txt"], outs = ["other.txt"], cmd = "cat $< > $@")
            """,  # noqa: E501
    })
    assert counts(ws.ok())["executed"] == 5
    assert counts(ws.ok())["executed"] == 0

    build = (ws.root / "p/BUILD").read_text()
    ws.write({"p/BUILD": build.replace('{"data": "1"}', '{"data": "2"}')})
    result = ws.ok()
    # same bytes out: early cutoff keeps the dependent a cache hit
    assert executed_labels(result) == ["//p:stable"]
    assert counts(result) == {"executed": 1, "cached": 4, "failed": 0}

    build = (ws.root / "p/BUILD").read_text()
    ws.write({"p/BUILD": build.replace('{"model": "v1"}', '{"model": "v2"}')})
    result = ws.ok()
    # new bytes out: the dependent's input changed, so it re-executes too
    assert executed_labels(result) == ["//p:after_stamp", "//p:stamp"]

    ws.write({"p/BUILD": build})  # back to v1: the earlier result is in the cache
    assert counts(ws.ok())["executed"] == 0
