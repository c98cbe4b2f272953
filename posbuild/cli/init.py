"""`posbuild init`: make the current folder a workspace that a first `posbuild //...` builds.

It writes a `posbuild.toml` that lists every setting commented out with its default (uncomment a
line to change it), a sample package, and the `.gitignore` lines for posbuild's own folders. It
never overwrites: when a file it would write exists, it names it and writes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from posbuild.cli import fail
from posbuild.core.layout import CONFIG_NAME, OUT_DIR, STATE_DIR
from posbuild.errors import UsageError

# Every setting of docs/configuration.md, with its default.
CONFIG = """\
# posbuild.toml: marks the workspace root. Every setting is optional: each commented line shows
# a setting with its default; uncomment the table and the line to change it.
# Every key is described in docs/configuration.md.

# [build]
# jobs = 0                          # actions run at once (-j); 0: one per CPU
# build_file_names = ["BUILD"]      # names of package files
# default_visibility = "public"     # of targets whose package sets none: public | private
# sandbox_base = ""                 # where sandboxes go; "": /dev/shm, else .posbuild/sandbox
# server = true                     # builds go through the workspace's build server
# server_idle = 10800               # seconds an idle build server waits before it stops

# [cache]
# dir = ""                          # the store's folder; "": .posbuild/store
# max_size = ""                     # the size `posbuild gc` shrinks the store to, e.g. "20G"
# remote = ""                       # a shared HTTP cache, e.g. "http://cache:8080/posbuild"
# upload = false                    # upload executed results to the remote cache
# timeout = 5                       # seconds a remote request may take (+1 s per MiB)

# [env]
# pass = []                         # variables passed from the caller to actions (in the key)
# tools = []                        # programs every action may run (in every key)

# [python]
# interpreter = ""                  # the Python py_tasks run; "": the one running posbuild

# [resources]                       # the budget the running actions' `resources` come from
# cpu = {cpu:<28}# default: the CPUs this process may use (here {cpu})
# mem_mb = {mem_mb:<25}# default: the physical memory in MB (here {mem_mb})
# io = 2                            # IO slots

# [sandbox]
# mode = "auto"                     # auto | landlock | namespace | folder

# [secrets]
# file = ""                         # NAME=value lines, mode 0600, outside the workspace;
#                                   # "": $POSBUILD_SECRETS_FILE, else ~/.config/posbuild/secrets

# [roles.release]                   # one table per role, named as you like
# build = ["//..."]                 # patterns the role may build; a leading "-" excludes
# upload = false                    # may write to the remote cache

# [vars]                            # what config("KEY") returns in BUILD files (--define wins)
# MODE = "fast"                     # a value is a string; $(MODE) in a genrule's cmd too

# [executor]
# kind = "local"                    # local | dask
# address = ""                      # the Dask scheduler, e.g. "tcp://127.0.0.1:8786"
"""

SAMPLE_BUILD = """\
# A sample package: `posbuild //...` builds it into posbuild-out/hello/greeting.txt.
# Replace it with your own packages: a package is a folder holding a BUILD file.
genrule(
    name = "greeting",
    srcs = ["name.txt"],
    outs = ["greeting.txt"],
    cmd = "sed 's/^/Hello, /' $< > $@",
)
"""

SAMPLE = {"hello/BUILD": SAMPLE_BUILD, "hello/name.txt": "world\n"}
IGNORED = (f"{OUT_DIR}/", f"{STATE_DIR}/")


@click.command()
def init() -> None:
    """Make the current folder a workspace: posbuild.toml, a sample package, .gitignore lines.

    \b
    Writes posbuild.toml (every setting commented out, with its default), hello/BUILD and
    hello/name.txt (a genrule that `posbuild //...` builds), and adds posbuild-out/ and
    .posbuild/ to .gitignore (appended, each line once). Overwrites nothing: when one of the
    files exists, it says which and writes nothing (exit 2).
    """
    try:
        written, ignored = make_workspace(Path.cwd())
    except UsageError as error:
        fail(error)
    click.echo(f"wrote {', '.join(written)}")
    if ignored:
        click.echo(f"added {' and '.join(ignored)} to .gitignore")
    click.echo("next: posbuild //...   (builds //hello:greeting into "
               f"{OUT_DIR}/hello/greeting.txt)")


def make_workspace(root: Path) -> tuple[list[str], list[str]]:
    """Write the files and the .gitignore lines: (files written, lines added to .gitignore).

    Every file is checked before any is written, so a refusal leaves the folder as it was.
    """
    from posbuild.workspace.config import default_budget

    budget = default_budget()
    files = {CONFIG_NAME: CONFIG.format(cpu=budget.cpu, mem_mb=budget.mem_mb), **SAMPLE}
    present = [rel for rel in files if os.path.lexists(root / rel)]
    present += sorted({folder for rel in files for folder in _folders(rel)
                       if os.path.lexists(root / folder) and not (root / folder).is_dir()})
    if present:
        verb = "exists" if len(present) == 1 else "exist"
        raise UsageError(f"init: {', '.join(present)} already {verb} in {root}; nothing was "
                         "written (posbuild init never overwrites a file)")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
    return list(files), _ignore(root / ".gitignore")


def _folders(rel: str) -> list[str]:
    """The folders above the workspace-relative path `rel`: `a/b/c` -> `a`, `a/b`."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]


def _ignore(path: Path) -> list[str]:
    """Append posbuild's folders to the .gitignore at `path`, each unless a line already names
    it (`posbuild-out`, `/posbuild-out/` ...)."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        text = ""
    lines = {line.strip().strip("/") for line in text.splitlines()}
    missing = [entry for entry in IGNORED if entry.strip("/") not in lines]
    if missing:
        separator = "\n" if text and not text.endswith("\n") else ""
        with open(path, "a", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(separator + "".join(f"{entry}\n" for entry in missing))
    return missing
