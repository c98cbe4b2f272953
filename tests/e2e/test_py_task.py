"""py_task: a Python script run in the sandbox, with a code hash over the workspace modules it
imports."""

from __future__ import annotations

import json

from conftest import Workspace, counts

BUILD = """
py_task(
    name = "report",
    script = "report.py",
    srcs = ["data.txt"],
    outs = ["report.json"],
    args = ["$(location data.txt)", "$@", "two words", "it's $$HOME"],
)
"""

SCRIPT = """
import json
import os
import sys

import helper
from lib import fmt

source, target = sys.argv[1], sys.argv[2]
with open(source) as handle:
    text = handle.read().strip()
with open(target, "w") as handle:
    json.dump({
        "value": helper.shout(text),
        "argv": sys.argv[3:],
        "seed": os.environ.get("PYTHONHASHSEED"),
        "no_bytecode": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "fmt": fmt.NAME,
    }, handle)
"""


def _workspace(ws: Workspace) -> None:
    ws.write({
        "app/BUILD": BUILD,
        "app/data.txt": "hello\n",
        "app/report.py": SCRIPT,
        "app/helper.py": "from lib import fmt\n\ndef shout(text):\n    return "
                         "fmt.wrap(text.upper())\n",
        "app/lib/__init__.py": "",
        "app/lib/fmt.py": "from . import style\n\nNAME = 'fmt'\n\ndef wrap(text):\n    return "
                          "style.LEFT + text + style.RIGHT\n",
        "app/lib/style.py": "LEFT = '['\nRIGHT = ']'\n",
        "app/unrelated.py": "VALUE = 1\n",
    })


def _report(ws: Workspace) -> dict:
    return json.loads(ws.out("app/report.json"))


def test_script_with_transitive_workspace_imports_runs(ws: Workspace) -> None:
    _workspace(ws)
    ws.ok("//app:report")
    report = _report(ws)
    assert report["value"] == "[HELLO]"  # report.py -> helper.py -> lib/fmt.py -> lib/style.py
    assert report["fmt"] == "fmt"


def test_python_variables_are_fixed(ws: Workspace) -> None:
    _workspace(ws)
    ws.ok("//app:report")
    report = _report(ws)
    assert report["seed"] == "0"
    assert report["no_bytecode"] == "1"


def test_args_are_quoted_and_expanded(ws: Workspace) -> None:
    _workspace(ws)
    ws.ok("//app:report")
    # one argument each, no shell expansion
    assert _report(ws)["argv"] == ["two words", "it's $HOME"]


def test_a_lone_multi_file_substitution_gives_one_argument_per_file(ws: Workspace) -> None:
    ws.write({
        "p/BUILD": """
            py_task(name = "t", script = "t.py", srcs = ["a.txt", "b.txt"], outs = ["out.json"],
                    args = ["$@", "$(SRCS)", "all: $(SRCS)"])
        """,
        "p/a.txt": "a",
        "p/b.txt": "b",
        "p/t.py": "import json, sys\njson.dump(sys.argv[2:], open(sys.argv[1], 'w'))\n",
    })
    ws.ok("//p:t")
    assert json.loads(ws.out("p/out.json")) == ["p/a.txt", "p/b.txt", "all: p/a.txt p/b.txt"]


def test_editing_an_imported_helper_re_executes(ws: Workspace) -> None:
    _workspace(ws)
    ws.ok("//app:report")
    assert counts(ws.ok("//app:report"))["executed"] == 0
    ws.write({"app/lib/style.py": "LEFT = '<'\nRIGHT = '>'\n"})  # imported two levels down
    assert counts(ws.ok("//app:report"))["executed"] == 1
    assert _report(ws)["value"] == "<HELLO>"


def test_editing_an_unrelated_module_does_not_re_execute(ws: Workspace) -> None:
    _workspace(ws)
    ws.ok("//app:report")
    ws.write({"app/unrelated.py": "VALUE = 2\n"})
    assert counts(ws.ok("//app:report")) == {"executed": 0, "cached": 1, "failed": 0}


def test_a_new_import_makes_its_module_an_input(ws: Workspace) -> None:
    _workspace(ws)
    ws.ok("//app:report")
    ws.write({
        "app/extra.py": "SUFFIX = '!'\n",
        "app/report.py": SCRIPT.replace("import helper\n", "import helper\nimport extra\n")
                               .replace("helper.shout(text)", "helper.shout(text) + extra.SUFFIX"),
    })
    assert counts(ws.ok("//app:report"))["executed"] == 1
    assert _report(ws)["value"] == "[HELLO]!"
    ws.write({"app/extra.py": "SUFFIX = '?'\n"})  # now part of the code hash
    assert counts(ws.ok("//app:report"))["executed"] == 1
    assert _report(ws)["value"] == "[HELLO]?"


def test_modules_at_the_workspace_root_are_found(ws: Workspace) -> None:
    ws.write({
        "tools/BUILD": 'py_task(name = "t", script = "t.py", outs = ["o.txt"], args = ["$@"])\n',
        "tools/t.py": "import sys\nfrom shared import common\nopen(sys.argv[1], "
                      "'w').write(common.WORD)\n",
        "shared/common.py": "WORD = 'root'\n",  # a namespace package at the workspace root
    })
    ws.ok("//tools:t")
    assert ws.out("tools/o.txt") == "root"
    ws.write({"shared/common.py": "WORD = 'edited'\n"})
    assert counts(ws.ok("//tools:t"))["executed"] == 1
    assert ws.out("tools/o.txt") == "edited"


def test_deps_are_staged_and_part_of_the_code_hash(ws: Workspace) -> None:
    ws.write({
        "p/BUILD": """
            py_task(name = "t", script = "t.py", outs = ["o.txt"], deps = ["plugin.py", "table.cfg"],
                    args = ["$@", "$(location table.cfg)"])
        """,  # noqa: E501
        "p/t.py": (
            "import importlib, sys\n"
            "plugin = importlib.import_module('plugin')\n"  # dynamic: invisible to the import scan
            "open(sys.argv[1], 'w').write(plugin.NAME + open(sys.argv[2]).read())\n"
        ),
        "p/plugin.py": "NAME = 'plugin:'\n",
        "p/table.cfg": "v1",
    })
    ws.ok("//p:t")
    assert ws.out("p/o.txt") == "plugin:v1"
    ws.write({"p/table.cfg": "v2"})
    assert counts(ws.ok("//p:t"))["executed"] == 1
    ws.write({"p/plugin.py": "NAME = 'changed:'\n"})
    assert counts(ws.ok("//p:t"))["executed"] == 1
    assert ws.out("p/o.txt") == "changed:v2"


def test_a_syntax_error_in_the_script_is_a_build_error_with_file_and_line(ws: Workspace) -> None:
    ws.write({
        "p/BUILD": 'py_task(name = "t", script = "t.py", outs = ["o.txt"], args = ["$@"])\n',
        "p/t.py": "import sys\n\nif True\n    pass\n",
    })
    result = ws.build("//p:t")
    assert result.returncode == 3
    assert "p/t.py:3: //p:t: syntax error" in result.stderr


def test_a_syntax_error_in_an_imported_module_names_that_module(ws: Workspace) -> None:
    ws.write({
        "p/BUILD": 'py_task(name = "t", script = "t.py", outs = ["o.txt"], args = ["$@"])\n',
        "p/t.py": "import helper\n",
        "p/helper.py": "x = (\n",
    })
    result = ws.build("//p:t")
    assert result.returncode == 3
    assert "p/helper.py:1: //p:t: syntax error" in result.stderr
    assert "p/t.py imports" in result.stderr


def test_the_fixed_python_variables_cannot_be_overridden(ws: Workspace) -> None:
    ws.write({
        "p/BUILD": 'py_task(name = "t", script = "t.py", outs = ["o.txt"], env = '
                   '{"PYTHONHASHSEED": "1"})\n',
        "p/t.py": "",
    })
    result = ws.build("//p:t")
    assert result.returncode == 3
    assert "may not set PYTHONHASHSEED" in result.stderr


def test_a_failing_script_fails_its_action(ws: Workspace) -> None:
    ws.write({
        "p/BUILD": 'py_task(name = "t", script = "t.py", outs = ["o.txt"])\n',
        "p/t.py": "raise SystemExit('no luck')\n",
    })
    result = ws.build("//p:t")
    assert result.returncode == 1
    assert "no luck" in result.stdout + result.stderr


def test_query_sees_the_script_and_deps(ws: Workspace) -> None:
    ws.write({
        "p/BUILD": 'py_task(name = "t", script = "t.py", outs = ["o.txt"], deps = ["extra.cfg"])\n',
        "p/t.py": "",
        "p/extra.cfg": "",
    })
    result = ws.run("query", "deps(//p:t)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["//p:extra.cfg", "//p:t", "//p:t.py"]
