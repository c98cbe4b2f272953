"""loader.starlark_error: starlark-pyo3's reports become one line at the user's file and line."""

from __future__ import annotations

import pytest

from posbuild.load.loader import starlark_error

LIBRARY_FAIL = (
    "Traceback (most recent call last):\n  * p/BUILD:3, in <module>\n      copy_file(name=\"c\", "
    "out=3)\n  * @posbuild//rules:copy_file.bzl:28, in copy_file\n      fail(\"...\")\n"
    "error: fail: copy_file 'c': 'out' must be a file name\n  --> "
    "@posbuild//rules:copy_file.bzl:28:9\n   |\n28 |         fail(\"...\")\n   |\n"
)
NESTED_LOAD = (
    "error: StarlarkError: Traceback (most recent call last):\n  * tools/a.bzl:1, in <module>\n   "
    "   genrule(name=\"x\")\nerror: ValueError: rules can only be declared while a BUILD file is "
    "evaluated\n --> tools/a.bzl:1:1\n  |\n1 | genrule(name=\"x\")\n  |\n\n --> p/BUILD:1:1\n  "
    "|\n1 | load(\"//tools:a.bzl\", \"f\")\n"
)
AT_THE_END = (
    "error: Parse error: unexpected new line here, expected one of \")\" or \",\"\n--> "
    "p/BUILD:1:1\n |\n |\n")
MISSING_ARGUMENT = ("error: Missing parameter `srcs` for call to "
                    "`@posbuild//rules:concat.bzl.concat`\n"
                    " --> p/BUILD:2:1\n  |\n2 | concat(name = \"c\")\n  |\n")


@pytest.mark.parametrize("text, sources, rendered", [
    (LIBRARY_FAIL, {}, "p/BUILD:3: copy_file 'c': 'out' must be a file name"),
    (NESTED_LOAD, {},
     "tools/a.bzl:1:1: rules can only be declared while a BUILD file is evaluated"),
    (AT_THE_END, {"p/BUILD": "x = 1\n\ngenrule(name = 'a',\n  outs = ['x']\n\n"},
     "p/BUILD:3:8: Parse error: '(' is never closed"),
    (AT_THE_END, {"p/BUILD": "x = 1\ndef f():\n"},
     "p/BUILD:2: Parse error: unexpected end of file"),
    (MISSING_ARGUMENT, {}, "p/BUILD:2:1: Missing parameter `srcs` for call to `concat`"),
])
def test_starlark_reports_become_one_located_line(text, sources, rendered):
    assert starlark_error(Exception(text), sources).render() == rendered
