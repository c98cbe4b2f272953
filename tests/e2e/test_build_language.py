"""The BUILD language as a user meets it: native rules, glob, load(), labels, patterns, cmd
substitutions."""

from __future__ import annotations

import stat

from conftest import counts, executed_labels


def out_path(ws, rel):
    return ws.root / "posbuild-out" / rel


# --- native rules -------------------------------------------------------------------------------


def test_genrule_output_lands_in_posbuild_out_read_only(ws):
    ws.write({"p/BUILD": 'genrule(name = "g", outs = ["g.txt"], cmd = "echo generated > $@")'})
    ws.ok("//p:g")
    path = out_path(ws, "p/g.txt")
    assert path.read_text() == "generated\n"
    assert stat.S_ISREG(path.stat().st_mode)
    assert path.stat().st_mode & 0o222 == 0


def test_genrule_in_root_package_lands_directly_in_posbuild_out(ws):
    ws.write({"BUILD": 'genrule(name = "top", outs = ["top.txt"], cmd = "echo root > $@")'})
    ws.ok("//:top")
    assert ws.out("top.txt") == "root\n"


def test_genrule_with_several_outputs(ws):
    ws.write({"p/BUILD": 'genrule(name = "two", outs = ["one.txt", "two.txt"], '
                         'cmd = "echo 1 > $(location one.txt); echo 2 > $(location two.txt)")'})
    ws.ok("//p:two")
    assert ws.out("p/one.txt") == "1\n"
    assert ws.out("p/two.txt") == "2\n"


def test_filegroup_collects_files_for_a_consumer(ws):
    ws.write({
        "p/a.txt": "A\n",
        "p/b.txt": "B\n",
        "p/BUILD": """
            filegroup(name = "inputs", srcs = ["b.txt", "a.txt"])
            genrule(name = "cat", srcs = [":inputs"], outs = ["cat.txt"], cmd = "cat $(SRCS) > $@")
        """,
    })
    ws.ok("//p:cat")
    assert ws.out("p/cat.txt") == "B\nA\n"


def test_filegroup_of_generated_files(ws):
    ws.write({"p/BUILD": """
        genrule(name = "x", outs = ["x.txt"], cmd = "echo x > $@")
        genrule(name = "y", outs = ["y.txt"], cmd = "echo y > $@")
        filegroup(name = "both", srcs = [":x", ":y"])
        genrule(name = "join", srcs = [":both"], outs = ["join.txt"], cmd = "cat $(SRCS) > $@")
    """})
    result = ws.ok("//p:join")
    assert ws.out("p/join.txt") == "x\ny\n"
    assert executed_labels(result) == ["//p:join", "//p:x", "//p:y"]


def test_exports_files_lets_another_package_use_a_source(ws):
    ws.write({
        "lib/schema.txt": "id,name\n",
        "lib/BUILD": 'exports_files(["schema.txt"])',
        "app/BUILD": 'genrule(name = "use", srcs = ["//lib:schema.txt"], outs = ["use.txt"], '
                     'cmd = "cp $< $@")',
    })
    ws.ok("//app:use")
    assert ws.out("app/use.txt") == "id,name\n"


def test_unexported_source_of_another_package_is_an_error(ws):
    ws.write({
        "lib/secret.txt": "s\n",
        "lib/BUILD": 'exports_files([])',
        "app/BUILD": 'genrule(name = "use", srcs = ["//lib:secret.txt"], outs = ["use.txt"], '
                     'cmd = "cp $< $@")',
    })
    result = ws.build("//app:use")
    assert result.returncode == 3
    assert result.stderr == (
        "posbuild: app/BUILD:1: //app:use: srcs entry '//lib:secret.txt': '//lib:secret.txt' is a "
        "source file of another package; add exports_files([\"secret.txt\"]) to lib/BUILD\n"
    )
    assert not (ws.root / "posbuild-out").exists()


# --- glob ---------------------------------------------------------------------------------------


def _glob_ws(ws, expr):
    files = {
        "g/zeta.txt": "", "g/alpha.txt": "", "g/mid.csv": "", "g/skip.txt": "",
        "g/sub/beta.txt": "", "g/sub/deep/gamma.txt": "",
        "g/inner/BUILD": "", "g/inner/hidden.txt": "",
    }
    files["g/BUILD"] = f'genrule(name = "list", srcs = {expr}, outs = ["list.txt"], ' \
                       'cmd = "for f in $(SRCS); do echo $$f; done > $@")'
    ws.write(files)
    ws.ok("//g:list")
    return ws.out("g/list.txt").splitlines()


def test_glob_star_is_sorted_and_stays_in_one_folder(ws):
    assert _glob_ws(ws, 'glob(["*.txt"])') == ["g/alpha.txt", "g/skip.txt", "g/zeta.txt"]


def test_glob_double_star_recurses_but_not_into_subpackages(ws):
    assert _glob_ws(ws, 'glob(["**/*.txt"])') == [
        "g/alpha.txt", "g/skip.txt", "g/sub/beta.txt", "g/sub/deep/gamma.txt", "g/zeta.txt",
    ]


def test_glob_exclude(ws):
    assert _glob_ws(ws, 'glob(["**/*.txt"], exclude = ["skip.txt", "sub/deep/**"])') == [
        "g/alpha.txt", "g/sub/beta.txt", "g/zeta.txt",
    ]


def test_glob_several_includes_give_one_sorted_list(ws):
    assert _glob_ws(ws, 'glob(["*.txt", "*.csv"])') == ["g/alpha.txt", "g/mid.csv", "g/skip.txt",
                                                        "g/zeta.txt"]


def test_glob_result_is_the_same_on_every_run(ws):
    first = _glob_ws(ws, 'glob(["**/*"], exclude = ["BUILD"])')
    (ws.root / "posbuild-out/g/list.txt").unlink()
    (ws.root / ".posbuild").rename(ws.root / ".posbuild-old")
    second = _glob_ws(ws, 'glob(["**/*"], exclude = ["BUILD"])')
    assert first == second == sorted(first)
    assert "g/inner/hidden.txt" not in first


# --- load() -------------------------------------------------------------------------------------


def test_load_macro_from_workspace_bzl(ws):
    ws.write({
        "tools/BUILD": "",
        "tools/macros.bzl": """
            def my_macro(name, text):
                genrule(name = name, outs = [name + ".txt"], cmd = "echo %s > $@" % text)
        """,
        "p/BUILD": """
            load("//tools:macros.bzl", "my_macro")
            my_macro(name = "hello", text = "from-macro")
        """,
    })
    result = ws.ok("//p:hello")
    assert ws.out("p/hello.txt") == "from-macro\n"
    assert executed_labels(result) == ["//p:hello"]


def test_load_macro_can_see_package_name_and_chain_loads(ws):
    ws.write({
        "tools/BUILD": "",
        "tools/base.bzl": 'SUFFIX = ".out"\n',
        "tools/macros.bzl": """
            load("//tools:base.bzl", "SUFFIX")
            def tagged(name):
                genrule(name = name, outs = [name + SUFFIX], cmd = "echo %s > $@" % package_name())
        """,
        "deep/pkg/BUILD": """
            load("//tools:macros.bzl", "tagged")
            tagged(name = "t")
        """,
    })
    ws.ok("//deep/pkg:t")
    assert ws.out("deep/pkg/t.out") == "deep/pkg\n"


def test_a_relative_load_in_a_bzl_file_is_relative_to_that_file_not_to_the_build_file(ws):
    # as in Bazel: tools/macros.bzl's ":base.bzl" is //tools:base.bzl, whoever loads macros.bzl
    ws.write({
        "tools/BUILD": "",
        "tools/base.bzl": 'WORD = "tools"\n',
        "tools/macros.bzl": """
            load(":base.bzl", "WORD")
            def said(name):
                genrule(name = name, outs = [name + ".txt"], cmd = "echo %s > $@" % WORD)
        """,
        "p/base.bzl": 'WORD = "p"\n',
        "p/BUILD": """
            load("//tools:macros.bzl", "said")
            said(name = "a")
        """,
        "q/BUILD": """
            load("//tools:macros.bzl", "said")
            said(name = "b")
        """,
    })
    ws.ok("//q:b", "//p:a")
    assert (ws.out("p/a.txt"), ws.out("q/b.txt")) == ("tools\n", "tools\n")


# --- labels -------------------------------------------------------------------------------------


def test_label_forms_absolute_relative_and_bare_source(ws):
    ws.write({
        "p/raw.txt": "raw\n",
        "p/BUILD": """
            genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")
            genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")
            genrule(name = "all_three", srcs = ["//p:a", ":b", "raw.txt"], outs = ["three.txt"],
                    cmd = "cat $(SRCS) > $@")
        """,
    })
    ws.ok("//p:all_three")
    assert ws.out("p/three.txt") == "a\nb\nraw\n"


def test_package_label_without_name_means_same_named_target(ws):
    ws.write({
        "lib/BUILD": 'genrule(name = "lib", outs = ["lib.txt"], cmd = "echo lib > $@")',
        "app/BUILD": 'genrule(name = "app", srcs = ["//lib"], outs = ["app.txt"], cmd = "cat $< > '
                     '$@")',
    })
    result = ws.ok("//app")
    assert ws.out("app/app.txt") == "lib\n"
    assert executed_labels(result) == ["//app:app", "//lib:lib"]


def test_label_of_another_rules_single_output_file(ws):
    ws.write({
        "gen/BUILD": 'genrule(name = "pair", outs = ["left.txt", "right.txt"], '
                     'cmd = "echo L > $(location left.txt); echo R > $(location right.txt)")',
        "use/BUILD": """
            genrule(name = "r", srcs = ["//gen:right.txt"], outs = ["r.txt"], cmd = "cat $< > $@")
        """,
    })
    ws.ok("//use:r")
    assert ws.out("use/r.txt") == "R\n"


def test_output_file_label_on_the_command_line_builds_its_rule(ws):
    ws.write({"p/BUILD": 'genrule(name = "mk", outs = ["made.txt"], cmd = "echo made > $@")'})
    result = ws.ok("//p:made.txt")
    assert ws.out("p/made.txt") == "made\n"
    assert executed_labels(result) == ["//p:mk"]


# --- patterns and what gets built ---------------------------------------------------------------


def _pattern_ws(ws):
    ws.write({
        "a/BUILD": 'genrule(name = "a1", outs = ["a1.txt"], cmd = "echo a1 > $@")\n'
                   'genrule(name = "a2", outs = ["a2.txt"], cmd = "echo a2 > $@")\n',
        "a/sub/BUILD": 'genrule(name = "s", outs = ["s.txt"], cmd = "echo s > $@")\n',
        "b/BUILD": 'genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")\n',
    })


def _outputs(ws):
    base = ws.root / "posbuild-out"
    if not base.exists():
        return []
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def test_pattern_everything(ws):
    _pattern_ws(ws)
    result = ws.ok("//...")
    assert executed_labels(result) == ["//a/sub:s", "//a:a1", "//a:a2", "//b:b"]
    assert _outputs(ws) == ["a/a1.txt", "a/a2.txt", "a/sub/s.txt", "b/b.txt"]


def test_build_without_patterns_means_everything(ws):
    _pattern_ws(ws)
    result = ws.ok()
    assert executed_labels(result) == ["//a/sub:s", "//a:a1", "//a:a2", "//b:b"]


def test_pattern_recursive_package(ws):
    _pattern_ws(ws)
    result = ws.ok("//a/...")
    assert executed_labels(result) == ["//a/sub:s", "//a:a1", "//a:a2"]
    assert _outputs(ws) == ["a/a1.txt", "a/a2.txt", "a/sub/s.txt"]


def test_pattern_all_excludes_subpackages(ws):
    _pattern_ws(ws)
    result = ws.ok("//a:all")
    assert executed_labels(result) == ["//a:a1", "//a:a2"]
    assert _outputs(ws) == ["a/a1.txt", "a/a2.txt"]


def test_pattern_single_label_builds_only_that_target(ws):
    _pattern_ws(ws)
    result = ws.ok("//a:a2")
    assert executed_labels(result) == ["//a:a2"]
    assert counts(result) == {"executed": 1, "cached": 0, "failed": 0}
    assert _outputs(ws) == ["a/a2.txt"]


def test_several_patterns_are_united(ws):
    _pattern_ws(ws)
    result = ws.ok("//b:b", "//a/sub:all", "//b:all")
    assert executed_labels(result) == ["//a/sub:s", "//b:b"]
    assert _outputs(ws) == ["a/sub/s.txt", "b/b.txt"]


def test_shorthand_without_build_word(ws):
    _pattern_ws(ws)
    result = ws.run("//b:b")
    assert result.returncode == 0, result.stderr
    assert executed_labels(result) == ["//b:b"]
    assert ws.out("b/b.txt") == "b\n"


def test_relative_label_from_inside_package_folder(ws):
    _pattern_ws(ws)
    result = ws.build(":a1", cwd=ws.root / "a")
    assert result.returncode == 0, result.stderr
    assert executed_labels(result) == ["//a:a1"]
    assert _outputs(ws) == ["a/a1.txt"]


def test_relative_bare_name_and_recursive_from_inside_package_folder(ws):
    _pattern_ws(ws)
    first = ws.build("a2", cwd=ws.root / "a")
    assert first.returncode == 0, first.stderr
    assert executed_labels(first) == ["//a:a2"]
    second = ws.build("...", cwd=ws.root / "a")
    assert second.returncode == 0, second.stderr
    assert executed_labels(second) == ["//a/sub:s", "//a:a1"]
    assert counts(second) == {"executed": 2, "cached": 1, "failed": 0}


def test_relative_subpackage_pattern_from_inside_package_folder(ws):
    _pattern_ws(ws)
    result = ws.build("sub:all", cwd=ws.root / "a")
    assert result.returncode == 0, result.stderr
    assert executed_labels(result) == ["//a/sub:s"]


def test_only_requested_targets_and_their_deps_run(ws):
    ws.write({
        "lib/BUILD": 'genrule(name = "dep", outs = ["dep.txt"], cmd = "echo dep > $@")\n'
                     'genrule(name = "unrelated", outs = ["unrelated.txt"], '
                     'cmd = "echo no > $@")\n',
        "app/BUILD": 'genrule(name = "app", srcs = ["//lib:dep"], outs = ["app.txt"], cmd = "cat '
                     '$< > $@")\ngenrule(name = "other", outs = ["other.txt"], cmd = "echo other '
                     '> $@")\n',
    })
    result = ws.ok("//app:app")
    assert executed_labels(result) == ["//app:app", "//lib:dep"]
    assert _outputs(ws) == ["app/app.txt", "lib/dep.txt"]
    assert ws.out("app/app.txt") == "dep\n"


# --- cmd substitutions --------------------------------------------------------------------------


def test_cmd_srcs_and_outs(ws):
    ws.write({
        "p/x.txt": "x\n",
        "p/y.txt": "y\n",
        "p/BUILD": 'genrule(name = "g", srcs = ["x.txt", "y.txt"], outs = ["o1.txt", "o2.txt"], '
                   'cmd = "echo $(SRCS) > o; echo $(OUTS) >> o; cp o posbuild-out/p/o1.txt; cp o '
                   'posbuild-out/p/o2.txt")',
    })
    ws.ok("//p:g")
    expected = "p/x.txt p/y.txt\nposbuild-out/p/o1.txt posbuild-out/p/o2.txt\n"
    assert ws.out("p/o1.txt") == expected
    assert ws.out("p/o2.txt") == expected


def test_cmd_first_src_and_single_out(ws):
    ws.write({
        "p/in.txt": "payload\n",
        "p/BUILD": 'genrule(name = "g", srcs = ["in.txt"], outs = ["out.txt"], '
                   'cmd = "(echo $< $@; cat $<) > $@")',
    })
    ws.ok("//p:g")
    assert ws.out("p/out.txt") == "p/in.txt posbuild-out/p/out.txt\npayload\n"


def test_cmd_location_of_source_generated_file_and_own_output(ws):
    ws.write({
        "p/src.txt": "S\n",
        "p/BUILD": """
            genrule(name = "gen", outs = ["gen.txt"], cmd = "echo G > $@")
            genrule(
                name = "use",
                srcs = ["src.txt", ":gen"],
                outs = ["use.txt"],
                cmd = "echo $(location src.txt) $(location :gen) $(location use.txt) > $@; "
                      + "cat $(location src.txt) $(location :gen) >> $(location use.txt)",
            )
        """,
    })
    ws.ok("//p:use")
    assert ws.out("p/use.txt") == "p/src.txt posbuild-out/p/gen.txt posbuild-out/p/use.txt\nS\nG\n"


def test_cmd_location_of_a_tool(ws):
    ws.write({
        "tools/BUILD": 'exports_files(["up.sh"])',
        "tools/up.sh": "tr a-z A-Z\n",
        "p/in.txt": "shout\n",
        "p/BUILD": 'genrule(name = "g", srcs = ["in.txt"], outs = ["o.txt"], tools = '
                   '["//tools:up.sh"], cmd = "sh $(location //tools:up.sh) < $< > $@")',
    })
    ws.ok("//p:g")
    assert ws.out("p/o.txt") == "SHOUT\n"


def test_cmd_locations_of_a_filegroup(ws):
    ws.write({
        "p/one.txt": "1\n",
        "p/two.txt": "2\n",
        "p/BUILD": """
            filegroup(name = "nums", srcs = ["one.txt", "two.txt"])
            genrule(name = "g", srcs = [":nums"], outs = ["o.txt"],
                    cmd = "echo $(locations :nums) > $@; cat $(locations //p:nums) >> $@")
        """,
    })
    ws.ok("//p:g")
    assert ws.out("p/o.txt") == "p/one.txt p/two.txt\n1\n2\n"


def test_cmd_double_dollar_reaches_the_shell_as_one_dollar(ws):
    ws.write({"p/BUILD": """
        genrule(name = "g", outs = ["o.txt"], env = {"GREETING": "hi"},
                cmd = "echo '$$GREETING' > $@; echo $$GREETING >> $@; case $$HOME in /*) echo abs;; esac >> $@")
    """})  # noqa: E501
    ws.ok("//p:g")
    assert ws.out("p/o.txt") == "$GREETING\nhi\nabs\n"


def test_cmd_output_dir(ws):
    ws.write({
        "p/BUILD": 'genrule(name = "g", outs = ["a.txt", "b.txt"], '
                   'cmd = "echo $(@D) > $(@D)/a.txt; echo b > $(@D)/b.txt")',
        "BUILD": 'genrule(name = "r", outs = ["r.txt"], cmd = "echo $(@D) > $(@D)/r.txt")',
    })
    ws.ok("//...")
    assert ws.out("p/a.txt") == "posbuild-out/p\n"
    assert ws.out("p/b.txt") == "b\n"
    assert ws.out("r.txt") == "posbuild-out\n"
