"""Shell completion of target labels, and bash's handling of the `:` inside them.

Click runs the protocol (`_POSBUILD_COMPLETE=bash_source posbuild` prints the script) and
completes options; the commands come from the table in cli/__init__.py, so no command's module
is imported to list them. Labels come from here, cheaply: from the query's target graph cache
when it is current (a few `stat()` calls), else from the package folders and the `name = "..."`
literals of their BUILD files, read as text. BUILD files are never evaluated, and any failure
yields no candidates rather than an error: a completion must be quick and never print a
traceback.

Completion goes level by level, as Bazel's does: `//da` gives `//data:` and `//data/`
(a folder holding deeper packages), `//data:c` the rules of `//data` starting with `c`, and
`//data:all`. A pattern relative to the current package (`:clean`, `sub:x`) works the same way.

Bash splits the word being completed at `:` (it is in COMP_WORDBREAKS), so `//data:cl` reaches
posbuild as three words; BashLabels joins them again and answers with what follows the last `:`,
which is all bash replaces. Zsh keeps the word whole (click escapes its colons).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click
from click.shell_completion import BashComplete, CompletionItem, add_completion_class

_NAME = re.compile(r"""\bname\s*=\s*["']([\w.+=,@~/-]+)["']""")


def complete_targets(ctx: click.Context, param: click.Parameter | None,
                     incomplete: str) -> list[CompletionItem]:
    """The shell_complete callback of an argument that takes target patterns or labels."""
    try:
        return [CompletionItem(word) for word in target_words(Path.cwd(), incomplete)]
    except Exception:  # noqa: BLE001 - a completion never fails loudly
        return []


def target_words(cwd: Path, incomplete: str) -> list[str]:
    """Completions of `incomplete`, a target pattern being typed in the folder `cwd`."""
    from posbuild.workspace.config import find_workspace

    root = find_workspace(cwd)
    here = cwd.relative_to(root).as_posix()
    absolute = incomplete.startswith("//")
    base = "" if absolute or here == "." else here  # the package the text is relative to
    lead = "//" if absolute else ""
    folder, colon, name = (incomplete[2:] if absolute else incomplete).partition(":")
    names = _targets(root)
    if colon:
        package = "/".join(part for part in (base, folder) if part)
        return [f"{lead}{folder}:{n}" for n in sorted({*names.get(package, ()), "all"})
                if n.startswith(name)] if package in names else []
    words = {"//..."} if absolute and "//...".startswith(incomplete) else set()
    for package in names:
        if not base:
            rel = package
        elif package == base or package.startswith(base + "/"):
            rel = package[len(base) + 1:]
        else:
            continue
        if rel.startswith(folder):
            deeper = rel.find("/", len(folder))
            words.add(f"{lead}{rel}:" if deeper < 0 else f"{lead}{rel[:deeper + 1]}")
    return sorted(words)


def _targets(root: Path) -> dict[str, list[str]]:
    """The rule names of every package: from the query's graph cache when it is current, else
    read from the BUILD files' text."""
    try:
        from posbuild.load.query import TargetCache
        from posbuild.workspace.config import load_config

        config = load_config(root)
        graph = TargetCache(config).load()
    except Exception:  # noqa: BLE001 - a bad posbuild.toml: the BUILD files still name targets
        config, graph = None, None
    if graph is not None:
        labels = graph.labels
        return {package: [labels[n].partition(":")[2] for n in nodes]
                for package, nodes in zip(graph.packages, graph.rules)}
    from posbuild.load.loader import discover_packages

    build_names = config.build_file_names if config is not None else ("BUILD",)
    packages, _ = discover_packages(root, build_names)
    return {package: _names_in(root / package, build_names) for package in packages}


def _names_in(folder: Path, build_names: tuple[str, ...]) -> list[str]:
    for build_name in build_names:
        try:
            return _NAME.findall((folder / build_name).read_text(errors="replace"))
        except OSError:
            continue
    return []


class BashLabels(BashComplete):
    """Bash completion that sees `//pkg:name` as one word although bash splits it at `:`.

    Its script passes the line itself (COMP_LINE up to COMP_POINT), which is split here as a
    shell would; the answers are cut to what follows the last `:`, the part bash replaces.
    """

    source_template = BashComplete.source_template.replace(
        "COMP_CWORD=$COMP_CWORD", 'COMP_CWORD=$COMP_CWORD COMP_LINE="$COMP_LINE" '
        "COMP_POINT=$COMP_POINT").replace(  # no space after `//pkg:` or `//pkg/`: go on typing
        "COMPREPLY+=($value)", "COMPREPLY+=($value)\n"
        "            [[ $value == *[:/] ]] && compopt -o nospace")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._cut = 0  # characters of the word before the part bash replaces

    def get_completion_args(self) -> tuple[list[str], str]:
        from click.shell_completion import split_arg_string

        line, point = os.environ.get("COMP_LINE"), os.environ.get("COMP_POINT", "")
        if line is None or not point.isdigit():  # a script sourced from an older posbuild
            return super().get_completion_args()
        typed = line[:int(point)]
        try:
            words = split_arg_string(typed)
        except ValueError:
            return super().get_completion_args()
        incomplete = "" if not words or typed[-1:].isspace() else words.pop()
        self._cut = incomplete.rfind(":") + 1
        return words[1:], incomplete

    def format_completion(self, item: CompletionItem) -> str:
        if self._cut and item.type == "plain":
            item = CompletionItem(item.value[self._cut:], type=item.type, help=item.help)
        return super().format_completion(item)


def register() -> None:
    """Use BashLabels for bash (called only when the shell asks for completions)."""
    add_completion_class(BashLabels, "bash")


def is_pattern(word: str) -> bool:
    """Whether a first word is a target pattern, which `posbuild` builds (`posbuild //pkg:x`)."""
    return word.startswith(("//", ":")) or "/" in word


def group_words(group: click.Group, ctx: click.Context, incomplete: str,
                table: dict[str, tuple[str, str]]) -> list[CompletionItem]:
    """The top level's completions: the commands (their help from `table`: no command module is
    imported), the options, and labels when the word is a pattern."""
    if is_pattern(incomplete):
        return complete_targets(ctx, None, incomplete)
    found = [CompletionItem(name, help=help_text) for name, (_, help_text) in sorted(table.items())
             if name.startswith(incomplete)]
    return found + click.Command.shell_complete(group, ctx, incomplete)
