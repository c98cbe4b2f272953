"""The doc test: every shell example of README.md and docs/*.md runs, so that none goes stale.

Each page runs top to bottom in a temp folder of its own, like a reader following it in one
shell: the folder a block ends in is where the next one starts. What runs:

* a ```sh block: each command in it must exit 0;
* a block whose first line starts with `$ ` (a console transcript): each `$ command` runs, and
  what the page shows under it is compared with what it printed: the exit status (non-zero
  exactly when the page shows a `FAILED`, `ORCH-NN` or `posbuild: ...` error line) and the first
  two words of every shown line, digits and digests masked (`OK: 1 action` is `OK: #`);
  `$ cat FILE` (FILE not under `posbuild-out/`) writes FILE with the lines shown first, which is
  how a page shows a BUILD file and then builds it.

HTML comments before a block, invisible on the rendered page, say what else a block needs:

* `<!-- doc-test: file PATH -->`: the block is the content of PATH; write it, run nothing;
* `<!-- doc-test: setup ... -->`: the shell lines between `setup` and `-->` run first (must exit 0);
* `<!-- doc-test: skip REASON -->`: the block cannot run here (a cluster, a benchmark); it is
  reported as a skip with that reason;
* `<!-- doc-test: loose REASON -->`: compare only exit statuses and the error lines (the rest of
  the output depends on the machine, e.g. the CPU model).

A page of docs/ starts in a workspace (an empty `posbuild.toml`); the README makes its own.
`posbuild` on the PATH is the posbuild under test (`sys.executable -m posbuild`), `$REPO` is the
checkout, `HOME` is a temp folder, and the namespace sandbox leaves the page's temp folder
visible (`POSBUILD_SANDBOX_WRITABLE`), as the rest of the suite does.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*doc-test:\s*(\w[\w-]*)\s*(.*?)\s*-->", re.S)
FENCE = re.compile(r"^(\s*)(```+)\s*(\w*)\s*$")
ERROR_LINE = re.compile(r"^(FAILED |ORCH-\d\d |posbuild: (?!warning|note|remote cache))")
SENTINEL = "@@doc-test-exit"


@dataclass
class Command:
    """One command of a block and what the page shows it printing (None: nothing compared)."""

    text: str
    shown: list[str] | None


@dataclass
class Block:
    """One fenced block that the doc test acts on."""

    page: str
    line: int
    kind: str  # "sh", "console" or "file"
    body: str
    commands: list[Command] = field(default_factory=list)
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def commands_of_sh(body: str) -> list[Command]:
    """The commands of a ```sh block: one per line, `\\` continuations joined, comments dropped."""
    out: list[Command] = []
    pending = ""
    for line in body.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append(Command(pending, None))
            pending = ""
    return out


def commands_of_console(body: str) -> list[Command]:
    """The `$ command` lines of a transcript, each with the lines shown under it."""
    out: list[Command] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            out.append(Command(line[2:], []))
        elif out and out[-1].shown is not None:
            out[-1].shown.append(line)
    return out


def parse(page: Path) -> list[Block]:
    """The blocks of a page that the doc test runs or writes, with their markers."""
    lines = page.read_text().splitlines()
    name = str(page.relative_to(REPO))
    blocks: list[Block] = []
    markers: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("<!--") and "doc-test:" in line:
            end = i
            while "-->" not in lines[end]:
                end += 1
            for kind, arg in MARKER.findall("\n".join(lines[i:end + 1])):
                markers[kind] = arg
            i = end + 1
            continue
        fence = FENCE.match(line)
        if not fence:
            if line.strip() and markers:
                raise ValueError(f"{name}:{i + 1}: a doc-test marker must come right before "
                                 "a block")
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        end = i + 1
        while not lines[end].startswith(indent + ticks) or lines[end].strip() != ticks:
            end += 1
        body = textwrap.dedent("\n".join(lines[i + 1:end])) + "\n"
        kind = ""
        if "file" in markers:
            kind = "file"
        elif lang == "sh":
            kind = "sh"
        elif lang in ("", "console") and body.lstrip().startswith("$ "):
            kind = "console"
        if kind:
            block = Block(name, i + 1, kind, body, markers=markers)
            if kind == "sh":
                block.commands = commands_of_sh(body)
            elif kind == "console":
                block.commands = commands_of_console(body)
            blocks.append(block)
        markers = {}
        i = end + 1
    return blocks


def key(line: str) -> str:
    """The stable part of an output line: its first two words, digests and digits masked (a
    line that is only a number, such as an exit status, is kept as it is)."""
    words = line.split()[:2]
    if len(line.split()) == 1 and line.strip().isdigit():
        return line.strip()
    masked = re.sub(r"[0-9a-f]{6,}", "H", " ".join(words))
    return re.sub(r"\d+", "#", masked)


def script_of(block: Block, state: Path) -> str:
    """A bash script running the block's commands, printing each one's exit status after it."""
    parts = [f'cd "$(cat {shlex.quote(str(state / "cwd"))})"', "exec 2>&1"]
    if "setup" in block.markers:
        parts += [block.markers["setup"], f"__rc=$?; printf '\\n{SENTINEL} %d\\n' \"$__rc\""]
    for command in block.commands:
        parts += [command.text, f"__rc=$?; printf '\\n{SENTINEL} %d\\n' \"$__rc\"; (exit $__rc)"]
    parts.append(f'pwd > {shlex.quote(str(state / "cwd"))}')
    return "\n".join(parts) + "\n"


def split_output(output: str) -> list[list[str]]:
    """Each command's output lines and, last in each part, its exit status."""
    parts: list[list[str]] = [[]]
    for line in output.splitlines():
        if line.startswith(SENTINEL):
            parts[-1].append(line.split()[1])
            parts.append([])
        else:
            parts[-1].append(line)
    return parts[:-1]


def check_command(block: Block, command: Command, lines: list[str], status: int) -> list[str]:
    """What the command did differently from what the page shows."""
    problems = []
    shown = [line for line in command.shown or [] if line.strip() not in ("", "…", "...")]
    expect_failure = any(ERROR_LINE.match(line.strip()) for line in shown)
    if command.shown is None or not expect_failure:
        if status != 0:
            problems.append(f"exited {status}, the page shows it succeeding")
    elif status == 0:
        problems.append("exited 0, the page shows it failing")
    got = {key(line) for line in lines if line.strip()}
    for line in shown:
        if "loose" not in block.markers or ERROR_LINE.match(line.strip()):
            if key(line) not in got:
                problems.append(f"prints no line like {line.strip()!r}")
    if problems:
        printed = "\n    ".join(lines) or "(nothing)"
        return [f"{block.where}: `{command.text}`: " + "; ".join(problems)
                + f"\n  it printed:\n    {printed}"]
    return []


def shim(folder: Path) -> Path:
    """A `posbuild` on the PATH that is the posbuild under test."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "posbuild"
    tool.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m posbuild \"$@\"\n")
    tool.chmod(0o755)
    return bin_dir


def run_page(page: Path, tmp: Path) -> tuple[list[str], list[str], int]:
    """Run a page's blocks in order: (problems, skip reasons, commands run)."""
    home, work, state = tmp / "home", tmp / "work", tmp / "state"
    for folder in (home, work, state):
        folder.mkdir()
    (state / "cwd").write_text(str(work))
    if page.parent.name == "docs":
        (work / "posbuild.toml").write_text("")
    env = {key_: value for key_, value in os.environ.items()
           if not key_.startswith(("POSBUILD_CACHE_KEY", "POSBUILD_ROLE", "POSBUILD_SECRETS"))}
    env.update(HOME=str(home), PATH=f"{shim(tmp)}:{env.get('PATH', '/usr/bin:/bin')}",
               REPO=str(REPO), POSBUILD_SANDBOX_WRITABLE=str(tmp), PYTHONPATH=os.pathsep.join(
                   [str(REPO), *filter(None, [env.get("PYTHONPATH")])]))
    problems: list[str] = []
    skips: list[str] = []
    ran = 0
    for block in parse(page):
        if "skip" in block.markers:
            skips.append(f"{block.where}: {block.markers['skip']}")
            continue
        cwd = Path((state / "cwd").read_text().strip())
        if block.kind == "file":
            target = cwd / block.markers["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.body)
            continue
        for command in block.commands:
            words = command.text.split()
            if (block.kind == "console" and words[:1] == ["cat"] and len(words) == 2
                    and not words[1].startswith("posbuild-out/") and command.shown):
                (cwd / words[1]).parent.mkdir(parents=True, exist_ok=True)
                (cwd / words[1]).write_text("\n".join(command.shown) + "\n")
        proc = subprocess.run(["bash", "-c", script_of(block, state)], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=120)
        parts = split_output(proc.stdout)
        if "setup" in block.markers:
            setup = parts.pop(0) if parts else ["?"]
            if setup[-1] != "0":
                problems.append(f"{block.where}: its setup failed:\n  " + "\n  ".join(setup))
                continue
        if len(parts) != len(block.commands):
            problems.append(f"{block.where}: the block stopped early:\n{proc.stdout}")
            continue
        for command, part in zip(block.commands, parts):
            ran += 1
            problems += check_command(block, command, part[:-1], int(part[-1]))
    return problems, skips, ran


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    """Every example of the page runs and prints what the page shows."""
    problems, skips, _ran = run_page(page, tmp_path)
    assert not problems, "\n".join(problems)
    for reason in skips:
        print(f"skipped {reason}")


def test_every_shell_example_is_found() -> None:
    """The extractor sees the examples (a parser that found none would pass every page)."""
    blocks = [block for page in PAGES for block in parse(page)]
    commands = [c for b in blocks if b.kind != "file" and "skip" not in b.markers
                for c in b.commands]
    skipped = [b for b in blocks if "skip" in b.markers]
    assert len(commands) >= 40, len(commands)
    assert all(b.markers["skip"] for b in skipped), "a skip marker must give its reason"
    assert len(skipped) <= 10, [b.where for b in skipped]


def test_unmarked_examples_are_not_missed() -> None:
    """Every fence that looks like shell on a page is a block the doc test acts on."""
    for page in PAGES:
        seen = {block.line for block in parse(page)}
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            fence = FENCE.match(line)
            if fence and fence.group(3) == "sh":
                assert number in seen, f"{page.name}:{number}: a sh block the doc test missed"
