"""Layer 0: the shell that runs a command (bash, strict), and the commands it would only have
exec'd.

A genrule's `cmd` runs as Bazel's genrule and Snakemake run theirs: under `/bin/bash` with
`set -euo pipefail` (`shell_argv`). So a pipeline fails when any of its stages fails
(`samtools view missing.bam | gzip > $@` is not an empty success), a failing command ends the
script, and a variable that was never set is an error instead of an empty word. bash, not
`/bin/sh`: Debian's `/bin/sh` (dash 0.5.12) has no `pipefail`. The path is fixed, as Bazel's
is, so an action cannot pick up another shell from its PATH.

Most commands are a program, some plain words and perhaps `> $@`: `cat a b > out`. For those
the shell is pure overhead: it is exec'd, reads its dynamic libraries and locale, parses the
line, opens the redirect, and forks and execs the program anyway. That costs as much again as a
cheap program itself. GNU make skips the shell for commands without shell syntax; posbuild does
the same, and also performs a single trailing `> word` itself. `set -euo pipefail` changes
nothing for such a command: it has no variable, no pipe and no second command.

A command qualifies only when bash's behaviour is certain: blank-separated words of plain
characters (letters, digits and `_-./,+:@%=`; no quotes, `$`, globs, `~`, `#`, `;`, `&`, `|`, `<`,
newlines ...), a first word that is neither an assignment, a reserved word nor a builtin of bash
or of dash (bash's `echo -e` interprets escapes, `/usr/bin/echo` may not), and at most one `>`
redirection, at the end, after a blank, to a path inside the sandbox (relative, no `..`: the
sandbox holds only what staging made, so opening it cannot block). Anything else runs under the
shell. So does a command whose program is not found or cannot be exec'd, whose redirect target
cannot be opened, or whose environment changes how bash starts (`shell_variables`): the shell
then reports it in its own words and with its own exit code.

What the program sees is what bash would have given it: the same argv (argv[0] as written),
working folder, stdin, stdout (the redirect target, created with mode 0666 less the umask, or the
capture), stderr, and environment, including the two variables bash adds (`SHLVL`, and `_`, the
program's path as bash found it). Two things differ and are documented: the environment reaches
the program in posbuild's order (bash passes its variables on in an order of its own), and with
a redirect no bash process sits between posbuild and the program. How it
ends is reported as bash reports it (`shell_status`): bash execs a lone command, so its status is
the program's own; with a redirect bash forks, and a signal N becomes 128+N and bash's line.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from dataclasses import dataclass
from typing import Mapping

SHELL = "/bin/bash"
_STRICT = ("-euo", "pipefail")
_PLAIN = r"[A-Za-z0-9_\-./,+:@%=]+"
_SIMPLE = re.compile(rf"[ \t]*({_PLAIN}(?:[ \t]+{_PLAIN})*)(?:[ \t]+>[ \t]*({_PLAIN}))?[ \t]*")
_SHELL_WORDS = frozenset("""
    ! { } case do done elif else esac fi for if in then until while function select time coproc
    . : alias bg bind break builtin caller cd chdir command compgen complete compopt continue
    declare dirs disown echo enable eval exec exit export false fc fg getopts hash help history
    jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly return set
    shift shopt source suspend test times trap true type typeset ulimit umask unalias unset wait
""".split())
# Variables that change what bash does before it runs the command: a file it sources, options it
# sets, functions it defines (`BASH_FUNC_name%%`), the SHLVL it counts from.
_BASH_STARTUP = frozenset(("BASH_ENV", "SHELLOPTS", "BASHOPTS", "SHLVL"))


def shell_argv(command: str) -> list[str]:
    """The argv that runs `command` under bash in strict mode (`set -euo pipefail`).

    The options are bash's own arguments rather than a `set` line before the command, so the
    command text is run as written: its line numbers and `$0` are bash's, and a command that
    must tolerate a failing stage turns an option off itself (`set +o pipefail; ...`).
    """
    return [SHELL, *_STRICT, "-c", command]


@dataclass(frozen=True, slots=True)
class Direct:
    """A command posbuild may run without the shell: its words, and the file its stdout goes to
    (relative to the working folder), or None to leave stdout where it is."""

    argv: tuple[str, ...]
    stdout: str | None


def parse(command: str) -> Direct | None:
    """The command as words and redirect target when the shell would do nothing but exec it, else
    None."""
    match = _SIMPLE.fullmatch(command)
    if match is None:
        return None
    words, target = tuple(match.group(1).split()), match.group(2)
    if "=" in words[0] or words[0] in _SHELL_WORDS:
        return None
    if target is not None and (target.startswith("/") or ".." in target.split("/")):
        return None  # maybe outside the sandbox, maybe a FIFO, whose open would block posbuild
    return Direct(words, target)


def find_program(name: str, path: str, cwd: str) -> str | None:
    """The path by which bash would find and exec `name` on `path`, or None when it would not.

    The path is as bash names it (and puts in `_`): a name with a slash as it is, else the PATH
    entry it was found in joined to it (an empty entry is `.`). Relative paths are from `cwd`,
    where the program is started. Only an executable regular file counts; when none is found
    the caller lets the shell say so.
    """
    if "/" in name:
        candidates = [name]
    else:
        candidates = [f"{folder or '.'}/{name}" for folder in path.split(":")]
    for candidate in candidates:
        where = candidate if candidate.startswith("/") else f"{cwd}/{candidate}"
        try:
            if stat.S_ISREG(os.stat(where).st_mode) and os.access(where, os.X_OK):
                return candidate
        except OSError:
            continue
    return None


def shell_variables(env: Mapping[str, str], direct: Direct, program: str) -> dict[str, str] | None:
    """The variables bash adds to the environment of the program it runs, or None when `env`
    holds one that changes how bash itself starts (then only bash can run the command).

    `SHLVL` is 1 in a shell started with none; bash execs a lone command, counting itself out
    (0), and forks one with a redirect (1). `_` is the program's path as bash found it.
    """
    for name in env:
        if name in _BASH_STARTUP or name.startswith("BASH_FUNC_"):
            return None
    return {"SHLVL": "0" if direct.stdout is None else "1", "_": program}


def shell_status(status: int, direct: Direct, pid: int) -> tuple[int, bytes]:
    """(exit code, what bash adds to stderr) for the wait status of the program `direct` ran as
    process `pid`, as `bash -c` reports it.

    Without a redirect bash execs the program, so its status is bash's own: a signal stays a
    signal. With one, bash forks and waits: a signal N becomes 128+N and a line naming it, except
    SIGINT and SIGPIPE, which bash passes over in silence, and SIGTERM, which it names alone.
    """
    if direct.stdout is None or not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status), b""
    number = os.WTERMSIG(status)
    if number in (signal.SIGINT, signal.SIGPIPE):
        return 128 + number, b""
    name = signal.strsignal(number) or f"Signal {number}"
    if os.WCOREDUMP(status):
        name += " (core dumped)"
    if number == signal.SIGTERM:
        return 128 + number, f"{name}\n".encode()
    shown = f"{' '.join(direct.argv)} > {direct.stdout}"
    return 128 + number, f"{SHELL}: line 1: {pid:5d} {name:<24}{shown}\n".encode()
