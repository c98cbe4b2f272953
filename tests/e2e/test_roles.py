"""Roles (`POSBUILD_ROLE`, `[roles]` in posbuild.toml): which target patterns a role may build and
whether it may upload; a request the role may not make fails before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Workspace, counts
from posbuild.core.action import Action
from posbuild.workspace.config import Role
from posbuild.core.label import parse_pattern
from posbuild.workspace.roles import may_build, requested_targets

ROLES = """
[roles.dev]
build = ["//...", "-//deploy/..."]

[roles.release]
build = ["//deploy/...", "//lib:base"]
upload = true
"""

SOURCES = {
    "lib/BUILD": """
        genrule(name = "base", srcs = [], outs = ["base.txt"], cmd = "echo base > $@")
        genrule(name = "extra", srcs = [], outs = ["extra.txt"], cmd = "echo extra > $@")
    """,
    "deploy/BUILD": """
        genrule(name = "push", srcs = ["//lib:base"], outs = ["pushed.txt"], cmd = "cat $< > $@")
        filegroup(name = "files", srcs = [":push"])
    """,
    "app/BUILD": """
        genrule(name = "app", srcs = ["//lib:base"], outs = ["app.txt"], cmd = "cat $< > $@")
    """,
}


@pytest.fixture
def roles_ws(ws: Workspace) -> Workspace:
    (ws.root / "posbuild.toml").write_text(ROLES)
    ws.write(SOURCES)
    return ws


def test_dev_may_not_build_deploy_and_nothing_runs(roles_ws):
    result = roles_ws.build("//deploy/...", env={"POSBUILD_ROLE": "dev"})
    assert result.returncode == 2
    assert result.stderr == (
        "posbuild: role 'dev' may not build //deploy:push ([roles.dev] build = [\"//...\", "
        "\"-//deploy/...\"] in posbuild.toml); a role that may: release (set POSBUILD_ROLE); "
        "nothing was built\n")
    assert not (roles_ws.root / "posbuild-out").exists()
    assert not (roles_ws.root / ".posbuild" / "store").exists()


def test_the_default_role_is_dev(roles_ws):
    result = roles_ws.build("//...", env={"POSBUILD_ROLE": ""})
    assert result.returncode == 2
    assert "role 'dev' may not build //deploy:push" in result.stderr


def test_release_may_build_deploy_and_the_dependencies_it_needs(roles_ws):
    result = roles_ws.build("//deploy/...", env={"POSBUILD_ROLE": "release"})
    assert result.returncode == 0, result.stderr
    assert counts(result)["executed"] == 2  # //lib:base is a dependency, not a request: not checked
    assert roles_ws.out("deploy/pushed.txt") == "base\n"


def test_a_role_is_checked_against_each_selected_target(roles_ws):
    ok = roles_ws.build("//lib:base", "//deploy:push", env={"POSBUILD_ROLE": "release"})
    assert ok.returncode == 0, ok.stderr
    # selects //lib:extra too
    denied = roles_ws.build("//lib/...", env={"POSBUILD_ROLE": "release"})
    assert denied.returncode == 2
    assert "role 'release' may not build //lib:extra (" in denied.stderr
    assert "a role that may: dev" in denied.stderr


def test_dev_builds_everything_else(roles_ws):
    result = roles_ws.build("//app/...", "//lib/...", env={"POSBUILD_ROLE": "dev"})
    assert result.returncode == 0, result.stderr


def test_naming_an_output_or_a_filegroup_is_naming_its_target(roles_ws):
    assert "may not build //deploy:push" in roles_ws.build("//deploy:pushed.txt",
                                                           env={"POSBUILD_ROLE": "dev"}).stderr
    assert "may not build //deploy:files" in roles_ws.build("//deploy:files",
                                                            env={"POSBUILD_ROLE": "dev"}).stderr


def test_an_unknown_role_is_an_error(roles_ws):
    result = roles_ws.build("//app/...", env={"POSBUILD_ROLE": "intern"})
    assert result.returncode == 2
    assert result.stderr == ("posbuild: POSBUILD_ROLE=intern is not a role of posbuild.toml (known "
                             "roles: dev, release); set POSBUILD_ROLE to one of them\n")


def test_an_unlisted_default_role_is_an_error(ws):
    (ws.root / "posbuild.toml").write_text('[roles.release]\nbuild = ["//..."]\n')
    ws.write(SOURCES)
    result = ws.build("//app/...", env={"POSBUILD_ROLE": ""})
    assert result.returncode == 2
    assert result.stderr.endswith(
        "(known roles: release); set POSBUILD_ROLE to one of them, or add [roles.dev]\n")


def test_without_roles_every_role_builds_everything(ws):
    ws.write(SOURCES)
    assert ws.build("//...", env={"POSBUILD_ROLE": "anyone"}).returncode == 0


def test_a_denied_request_fails_even_when_everything_is_up_to_date(roles_ws):
    assert roles_ws.build("//deploy/...", env={"POSBUILD_ROLE": "release"}).returncode == 0
    assert roles_ws.build("//deploy/...", env={"POSBUILD_ROLE": "dev"}).returncode == 2
    assert roles_ws.build("-n", "//deploy/...", env={"POSBUILD_ROLE": "dev"}).returncode == 2


def test_only_roles_with_upload_may_ask_to_upload(roles_ws):
    toml = roles_ws.root / "posbuild.toml"
    toml.write_text('[cache]\nremote = "http://127.0.0.1:9/cache"\n' + ROLES)
    result = roles_ws.build("--remote-upload", "//app/...",
                            env={"POSBUILD_ROLE": "dev", "POSBUILD_CACHE_KEY": "k"})
    assert result.returncode == 2
    assert result.stderr == ("posbuild: role 'dev' may not upload to the remote cache ([roles.dev] "
                             "upload is not true in posbuild.toml); build without "
                             "--remote-upload\n")
    assert not (roles_ws.root / "posbuild-out").exists()


def test_a_bad_role_pattern_is_a_workspace_error(ws):
    (ws.root / "posbuild.toml").write_text('[roles.dev]\nbuild = ["//a:b:c"]\n')
    ws.write(SOURCES)
    result = ws.build("//app/...")
    assert result.returncode == 3
    assert result.stderr.startswith(
        "posbuild: posbuild.toml: [roles.dev] build: invalid target pattern")


# -- the matching rules on their own ------------------------------------------------------------

def _action(label: str, outputs: tuple[str, ...] = ()) -> Action:
    return Action(label, "genrule", "", (), (), outputs, (), (), 0, (), b"", (), ())


@pytest.mark.parametrize("patterns, label, allowed", [
    (("//...",), "//a:b", True),
    (("//...", "-//deploy/..."), "//deploy/prod:x", False),
    (("//...", "-//deploy/..."), "//deployment:x", True),  # a package prefix is not a parent folder
    (("//deploy:all",), "//deploy:x", True),
    (("//deploy:all",), "//deploy/sub:x", False),
    (("//deploy/...", "-//deploy:secret"), "//deploy:secret", False),
    (("//deploy/...", "-//deploy:secret"), "//deploy:public", True),
    (("-//x/...",), "//y:z", False),  # excludes alone allow nothing
    ((), "//y:z", False),
])
def test_may_build(patterns, label, allowed):
    assert may_build(Role("r", patterns), label) is allowed


def test_requested_targets_are_the_selected_targets_not_their_dependencies():
    actions = [_action("//lib:base", ("posbuild-out/lib/base.txt",)),
               _action("//deploy:push", ("posbuild-out/deploy/pushed.txt",))]
    assert requested_targets([parse_pattern("//deploy/...")], actions) == ["//deploy:push"]
    assert requested_targets([parse_pattern("//deploy:pushed.txt")], actions) == ["//deploy:push"]
    assert requested_targets([parse_pattern("//...")], actions) == ["//deploy:push", "//lib:base"]
    assert requested_targets([parse_pattern("//deploy:files")], actions) == ["//deploy:files"]


def test_the_check_costs_nothing_without_roles(tmp_path: Path):
    from posbuild.workspace.config import load_config
    from posbuild.workspace.roles import authorize

    (tmp_path / "posbuild.toml").write_text("")
    grant = authorize(load_config(tmp_path), [parse_pattern("//...")], [_action("//a:b")] * 10000,
                      "x")
    assert grant.role == "x" and not grant.upload
