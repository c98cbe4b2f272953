"""Bazel's BUILD idioms mean here what they mean in Bazel: a workspace written the way Bazel's
own documentation writes genrules, filegroups, globs, macros and visibility builds unchanged, and
each idiom (native.* in macros, visibility, tags = ["manual"], a target named `all`, the genrule
make variables, a source file as a target) behaves as Bazel's documentation says."""

from __future__ import annotations

import pytest

from conftest import counts, executed_labels

# Written as Bazel's documentation writes them: the genrule page (concat_all_files), the
# filegroup and glob pages (exported_testdata), the legacy macro page and tutorial
# (file_generator, miniature with **kwargs), and the visibility page (package default,
# __pkg__, __subpackages__, package_group, exports_files with visibility).
BAZEL_DOCS_WORKSPACE = {
    "BUILD": """
        package(default_visibility = ["//visibility:public"])

        # the tool the legacy macro page calls //:generator
        genrule(
            name = "generator",
            outs = ["generator.sh"],
            cmd = "printf '#!/bin/sh\\\\necho generated \\"$$1\\"\\\\n' > $@ && chmod +x $@",
        )
    """,
    "path/BUILD": "",
    "path/generator.bzl": """
        def file_generator(name, arg, visibility = None):
            native.genrule(
                name = name,
                outs = [name + ".txt"],
                cmd = "$(location //:generator) %s > $@" % arg,
                tools = ["//:generator"],
                visibility = visibility,
            )
    """,
    "path/miniature.bzl": """
        def miniature(name, src, size = "100x100", **kwargs):
            \"\"\"Create a miniature of the src image.

            The generated file is prefixed with 'small_'.
            \"\"\"
            native.genrule(
                name = name,
                srcs = [src],
                outs = ["small_" + src],
                cmd = "echo resize " + size + " > $@; cat $< >> $@",
                **kwargs
            )
    """,
    "app/BUILD": """
        load("//path:generator.bzl", "file_generator")
        load("//path:miniature.bzl", "miniature")

        file_generator(
            name = "file",
            arg = "some_arg",
        )

        file_generator(
            name = "file-two",
            arg = "some_arg_two",
        )

        miniature(
            name = "logo_miniature",
            src = "image.png",
            tags = ["manual"],
        )
    """,
    "app/image.png": "not really a png\n",
    "some/BUILD": """
        package(default_visibility = ["//visibility:private"])

        package_group(
            name = "consumers",
            packages = [
                "//concat",
                "//other/...",
            ],
        )

        filegroup(
            name = "files",
            srcs = glob(
                ["*.txt"],
                exclude = ["experimental.txt"],
            ),
            visibility = [":consumers"],
        )

        filegroup(
            name = "exported_testdata",
            srcs = glob([
                "testdata/*.dat",
                "testdata/logs/**/*.log",
            ]),
            visibility = ["//concat:__pkg__"],
        )

        exports_files(
            ["golden.txt"],
            visibility = ["//concat:__subpackages__"],
        )
    """,
    "some/a.txt": "a\n",
    "some/b.txt": "b\n",
    "some/experimental.txt": "experimental\n",
    "some/golden.txt": "golden\n",
    "some/testdata/one.dat": "one\n",
    "some/testdata/logs/day1/x.log": "log\n",
    "other/BUILD": """
        genrule(
            name = "gen",
            outs = ["gen.txt"],
            cmd = "echo gen > $@",
            visibility = ["//concat:__pkg__"],
        )
    """,
    "concat/BUILD": """
        genrule(
            name = "concat_all_files",
            srcs = [
                "//some:files",  # a filegroup with multiple files in it ==> $(locations)
                "//other:gen",   # a genrule with a single output ==> $(location)
            ],
            outs = ["concatenated.txt"],
            cmd = "cat $(locations //some:files) $(location //other:gen) > $@",
        )

        genrule(
            name = "testdata",
            srcs = ["//some:exported_testdata", "//some:golden.txt"],
            outs = ["testdata.txt"],
            cmd = "cat $(SRCS) > $@",
        )
    """,
}


def test_a_workspace_written_as_bazels_documentation_writes_it_builds_unchanged(ws):
    ws.write(BAZEL_DOCS_WORKSPACE)
    ws.ok("//...")
    assert ws.out("app/file.txt") == "generated some_arg\n"
    assert ws.out("app/file-two.txt") == "generated some_arg_two\n"
    assert ws.out("concat/concatenated.txt") == "a\nb\ngolden\ngen\n"
    assert ws.out("concat/testdata.txt") == "log\none\ngolden\n"  # glob's order: sorted
    # the manual target stays out of //... and builds when named
    assert not (ws.root / "posbuild-out/app/small_image.png").exists()
    ws.ok("//app:logo_miniature")
    assert ws.out("app/small_image.png") == "resize 100x100\nnot really a png\n"


# --- native.* in macros ---------------------------------------------------------------------------


def test_native_functions_in_a_macro(ws):
    ws.write({
        "defs/BUILD": "",
        "defs/macros.bzl": """
            def bundle(name, pattern):
                files = native.glob([pattern])
                native.filegroup(name = name + "_files", srcs = files)
                native.exports_files(files)
                native.genrule(
                    name = name,
                    srcs = [":" + name + "_files"],
                    outs = [name + ".txt"],
                    cmd = "echo %s %s > $@; cat $(SRCS) >> $@" % (
                        native.package_name(), native.repository_name()),
                )
        """,
        "data/BUILD": 'load("//defs:macros.bzl", "bundle")\n'
                      'bundle(name = "csv", pattern = "*.csv")',
        "data/a.csv": "1\n",
        "data/b.csv": "2\n",
    })
    ws.ok("//data:csv")
    assert ws.out("data/csv.txt") == "data @\n1\n2\n"


def test_native_existing_rule_sees_the_targets_declared_so_far(ws):
    ws.write({
        "p/defs.bzl": """
            def once(name):
                if native.existing_rule(name) == None:
                    native.genrule(name = name, outs = [name + ".txt"], cmd = "touch $@",
                                   tags = ["t"])
                rule = native.existing_rule(name)
                native.genrule(
                    name = name + "_info",
                    outs = [name + "_info.txt"],
                    cmd = "echo %s %s %s > $@" % (rule["kind"], rule["tags"],
                                                  sorted(native.existing_rules().keys())),
                )
        """,
        "p/BUILD": 'load(":defs.bzl", "once")\nonce("a")',
    })
    ws.ok("//p:a_info")
    assert ws.out("p/a_info.txt") == "genrule [t] [a]\n"


def test_native_is_not_a_name_in_a_build_file_as_in_bazel(ws):
    ws.write({"p/BUILD": 'native.genrule(name = "g", outs = ["g"], cmd = "touch $@")'})
    result = ws.build("//p:g")
    assert result.returncode == 3
    assert "p/BUILD:1" in result.stderr and "native" in result.stderr


# --- visibility -----------------------------------------------------------------------------------


def _two_packages(ws, visibility, package_line="", toml=""):
    attr = f", visibility = {visibility}" if visibility is not None else ""
    ws.write({
        "posbuild.toml": toml,
        "lib/BUILD": package_line + '\ngenrule(name = "schema", outs = ["schema.json"], '
                                    f'cmd = "echo {{}} > $@"{attr})',
        "app/BUILD": 'genrule(name = "report", srcs = ["//lib:schema"], outs = ["report.md"], '
                     'cmd = "cat $< > $@")',
        "app/sub/BUILD": 'genrule(name = "deep", srcs = ["//lib:schema.json"], outs = ["d"], '
                         'cmd = "cat $< > $@")',
    })


@pytest.mark.parametrize(("visibility", "report", "deep"), [
    ('["//visibility:public"]', True, True),
    ('["//visibility:private"]', False, False),
    ('["//app:__pkg__"]', True, False),
    ('["//app:__subpackages__"]', True, True),
    ('["//app/sub:__pkg__"]', False, True),
    ('["//other:__pkg__", "//app:__pkg__"]', True, False),
])
def test_visibility_is_enforced_as_in_bazel(ws, visibility, report, deep):
    _two_packages(ws, visibility)
    for label, allowed in (("//app:report", report), ("//app/sub:deep", deep)):
        result = ws.build(label)
        assert result.returncode == (0 if allowed else 3), result.stderr
        if not allowed:
            used = "//lib:schema" if label == "//app:report" else "//lib:schema.json"
            assert f"target '{used}' is not visible from target '{label}'" in result.stderr
            assert "lib/BUILD:2" in result.stderr  # where the former's visibility is declared
            assert result.stderr.startswith("posbuild: app/")
            output = "report.md" if label == "//app:report" else "sub/d"
            assert not (ws.root / "posbuild-out/app" / output).exists()


def test_package_default_visibility_applies_to_targets_without_their_own(ws):
    _two_packages(ws, None, 'package(default_visibility = ["//app:__pkg__"])')
    ws.ok("//app:report")
    result = ws.build("//app/sub:deep")
    assert result.returncode == 3
    assert "is not visible from target '//app/sub:deep'" in result.stderr


def test_a_targets_own_visibility_overrides_the_package_default(ws):
    _two_packages(ws, '["//visibility:public"]',
                  'package(default_visibility = ["//visibility:private"])')
    ws.ok("//app:report", "//app/sub:deep")


def test_without_any_declaration_targets_are_public_unless_posbuild_toml_says_private(ws):
    _two_packages(ws, None)
    ws.ok("//app:report")
    _two_packages(ws, None, toml='[build]\ndefault_visibility = "private"\n')
    result = ws.build("//app:report")
    assert result.returncode == 3
    assert "target '//lib:schema' is not visible from target '//app:report'" in result.stderr


def test_package_group_with_includes_and_exclusions(ws):
    ws.write({
        "lib/BUILD": """
            package_group(name = "friends", packages = ["//app/...", "-//app/sub"],
                          includes = ["//groups:more"])
            genrule(name = "x", outs = ["x.txt"], cmd = "echo x > $@", visibility = [":friends"])
        """,
        "groups/BUILD": 'package_group(name = "more", packages = ["//tools"])',
        **{f"{package}/BUILD": f'genrule(name = "{name}", srcs = ["//lib:x"], outs = ["{name}"], '
                               'cmd = "cat $< > $@")'
           for package, name in (("app", "a"), ("app/sub", "s"), ("tools", "t"), ("other", "o"))},
    })
    ws.ok("//app:a", "//tools:t")
    for label in ("//app/sub:s", "//other:o"):
        result = ws.build(label)
        assert result.returncode == 3, label
        assert f"target '//lib:x' is not visible from target '{label}'" in result.stderr


def test_exported_files_are_public_unless_exports_files_says_otherwise(ws):
    ws.write({
        "data/BUILD": 'exports_files(["open.csv"])\n'
                      'exports_files(["closed.csv"], visibility = ["//visibility:private"])',
        "data/open.csv": "o\n",
        "data/closed.csv": "c\n",
        "app/BUILD": """
            genrule(name = "o", srcs = ["//data:open.csv"], outs = ["o"], cmd = "cat $< > $@")
            genrule(name = "c", srcs = ["//data:closed.csv"], outs = ["c"], cmd = "cat $< > $@")
        """,
    })
    ws.ok("//app:o")
    result = ws.build("//app:c")
    assert result.returncode == 3
    assert "target '//data:closed.csv' is not visible from target '//app:c'" in result.stderr


def test_a_py_env_named_in_python_is_checked_for_visibility_too(ws):
    ws.write({
        "envs/BUILD": 'py_env(name = "e", requirements = "req.txt", '
                      'visibility = ["//visibility:private"])',
        "envs/req.txt": "",
        "app/BUILD": 'py_task(name = "t", script = "t.py", outs = ["o"], python = "//envs:e")',
        "app/t.py": "",
    })
    result = ws.build("//app:t")
    assert result.returncode == 3
    assert "target '//envs:e' is not visible from target '//app:t'" in result.stderr
    assert not (ws.root / ".posbuild/envs").exists()  # checked before any environment is made


@pytest.mark.parametrize(("build", "message"), [
    ('genrule(name = "g", outs = ["g"], cmd = "touch $@", visibility = ["//visibility:friends"])',
     "visibility entry '//visibility:friends' is unknown"),
    ('genrule(name = "g", outs = ["g"], cmd = "touch $@", visibility = "//visibility:public")',
     "'visibility' must be a list of labels"),
    ('genrule(name = "g", outs = ["g"], cmd = "touch $@")\npackage(default_visibility = [])',
     "package() must be called before any target is declared"),
    ('package(features = ["x"])', "package(): 'features' is not supported"),
    ('package_group(name = "g", packages = ["app"])',
     "package specification 'app' is not '//pkg', '//pkg/...', 'public' or 'private'"),
])
def test_bad_visibility_declarations_are_build_errors_with_their_line(ws, build, message):
    ws.write({"p/BUILD": build, "q/BUILD": 'genrule(name = "q", outs = ["q"], cmd = "touch $@")'})
    result = ws.build("//p/...")
    assert result.returncode == 3, result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("posbuild: p/BUILD:")
    assert "Traceback" not in result.stderr


def test_a_visibility_label_that_is_no_package_group_is_an_error(ws):
    ws.write({
        "lib/BUILD": 'genrule(name = "x", outs = ["x"], cmd = "touch $@", visibility = [":y"])\n'
                     'genrule(name = "y", outs = ["y"], cmd = "touch $@")',
        "app/BUILD": 'genrule(name = "a", srcs = ["//lib:x"], outs = ["a"], cmd = "touch $@")',
    })
    result = ws.build("//app:a")
    assert result.returncode == 3
    assert "visibility of '//lib:x': '//lib:y' is not a package_group" in result.stderr


# --- tags = ["manual"] ----------------------------------------------------------------------------


def test_manual_targets_stay_out_of_wildcards_but_build_when_named_or_needed(ws):
    ws.write({"p/BUILD": """
        genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")
        genrule(name = "slow", outs = ["slow.txt"], cmd = "echo slow > $@", tags = ["manual"])
        genrule(name = "uses", srcs = [":slow"], outs = ["uses.txt"], cmd = "cat $< > $@",
                tags = ["manual"])
    """})
    for pattern in ("//...", "//p:all", "//p/...", "//p:*"):
        assert executed_labels(ws.ok(pattern)) in (["//p:a"], [])
        assert not (ws.root / "posbuild-out/p/slow.txt").exists()
    result = ws.ok("//p:uses")
    assert counts(result)["executed"] == 2
    assert ws.out("p/uses.txt") == "slow\n"


def test_a_pattern_whose_targets_are_all_manual_says_so(ws):
    ws.write({"p/BUILD": 'genrule(name = "m", outs = ["m"], cmd = "touch $@", tags = ["manual"])'})
    result = ws.build("//p:all")
    assert result.returncode == 3
    assert "pattern '//p:all' matches no targets: its 1 target is tagged manual" \
        in result.stderr


def test_query_still_sees_manual_targets_as_bazel_query_does(ws):
    ws.write({"p/BUILD": 'genrule(name = "m", outs = ["m"], cmd = "touch $@", tags = ["manual"])'})
    result = ws.run("query", "//...")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "//p:m\n"


# --- a target named all ---------------------------------------------------------------------------


def test_colon_all_names_the_target_called_all_when_there_is_one(ws):
    ws.write({"p/BUILD": """
        genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")
        genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")
        genrule(name = "all", srcs = [":a"], outs = ["all.txt"], cmd = "cat $< > $@")
    """})
    result = ws.ok("//p:all")
    assert executed_labels(result) == ["//p:a", "//p:all"]
    assert not (ws.root / "posbuild-out/p/b.txt").exists()
    assert ws.run("query", "//p:all").stdout == "//p:all\n"
    # `:*` and `//p/...` still mean every target
    assert executed_labels(ws.ok("//p:*")) == ["//p:b"]
    assert ws.run("query", "//p:*").stdout == "//p:a\n//p:all\n//p:b\n"


def test_colon_all_in_a_package_without_such_a_target_is_every_target(ws):
    ws.write({"p/BUILD": 'genrule(name = "a", outs = ["a"], cmd = "touch $@")\n'
                         'genrule(name = "b", outs = ["b"], cmd = "touch $@")'})
    assert sorted(executed_labels(ws.ok("//p:all"))) == ["//p:a", "//p:b"]


def test_the_readme_and_docs_examples_name_no_target_all():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for doc in [root / "README.md", root / "BUILD.example", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert 'name = "all"' not in text, doc


# --- genrule make variables -----------------------------------------------------------------------


def test_genrule_make_variables_mean_what_they_mean_in_bazel(ws):
    ws.write({
        "tools/BUILD": 'exports_files(["tool.sh"])',
        "tools/tool.sh": "#!/bin/sh\necho tool\n",
        "p/BUILD": """
            genrule(name = "one", outs = ["sub/one.txt"],
                    cmd = "echo $(@D) $(RULEDIR) $(GENDIR) $(BINDIR) > $@")
            genrule(name = "two", outs = ["x.txt", "y.txt"],
                    cmd = "echo $(@D) > $(@D)/x.txt; touch $(RULEDIR)/y.txt")
            genrule(
                name = "paths",
                srcs = [":one", "in.txt"],
                tools = ["//tools:tool.sh"],
                outs = ["paths.txt"],
                cmd = "echo $(execpath :one) $(rootpath :one) $(execpath in.txt) "
                      + "$(rootpaths in.txt) $(execpaths //tools:tool.sh) "
                      + "$(rootpath //tools:tool.sh) $(location :one) > $@",
            )
        """,
        "p/in.txt": "in\n",
    })
    ws.ok("//p:all")
    assert ws.out("p/sub/one.txt") == \
        "posbuild-out/p/sub posbuild-out/p posbuild-out posbuild-out\n"
    assert ws.out("p/x.txt") == "posbuild-out/p\n"
    assert ws.out("p/paths.txt") == ("posbuild-out/p/sub/one.txt p/sub/one.txt p/in.txt "
                                     "p/in.txt tools/tool.sh tools/tool.sh "
                                     "posbuild-out/p/sub/one.txt\n")


def test_py_task_args_take_rootpaths_one_word_per_file(ws):
    ws.write({"p/BUILD": """
        py_task(name = "t", script = "t.py", srcs = ["a.txt", "b.txt"], outs = ["o.txt"],
                args = ["$(rootpaths :a.txt)", "$(RULEDIR)"])
    """, "p/t.py": "import sys\nopen(sys.argv[-1] + '/o.txt', 'w').write(repr(sys.argv[1:]))\n",
        "p/a.txt": "", "p/b.txt": ""})
    ws.ok("//p:t")
    assert ws.out("p/o.txt") == "['p/a.txt', 'posbuild-out/p']"


# --- a source file as a target --------------------------------------------------------------------


def test_building_a_source_file_by_its_label_checks_it_exists(ws):
    ws.write({"data/BUILD": 'genrule(name = "g", outs = ["g"], cmd = "touch $@")',
              "data/a.csv": "1\n", "data/sub/BUILD": "", "data/sub/b.csv": "2\n"})
    result = ws.ok("//data:a.csv")
    assert counts(result)["executed"] == 0
    assert not (ws.root / "posbuild-out/data/g").exists()
    (ws.root / "data/a.csv").unlink()
    result = ws.build("//data:a.csv")
    assert result.returncode == 3
    assert result.stderr == "posbuild: no such target '//data:a.csv'\n"
    result = ws.build("//data:sub/b.csv")
    assert result.returncode == 3
    assert "data/sub/b.csv belongs to the package //data/sub; name it //data/sub:b.csv" \
        in result.stderr
    ws.ok("//data/sub:b.csv")
