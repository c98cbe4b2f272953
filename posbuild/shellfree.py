"""Layer 1: recognise commands that `/bin/sh -c` would only have exec'd, and run them as the shell would.

Most genrule commands are a program, some plain words and perhaps `> $@`: `cat a b > out`. For
those the shell is pure overhead: it is exec'd, reads its dynamic libraries and locale, parses the
line, opens the redirect, and forks and execs the program anyway. That costs as much again as a
cheap program itself. GNU make skips the shell for commands without shell syntax; posbuild does
the same, and also performs a single trailing `> word` itself.

A command qualifies only when the shell's behaviour is certain: blank-separated words of plain
characters (letters, digits and `_-./,+:@%=`; no quotes, `$`, globs, `~`, `#`, `;`, `&`, `|`, `<`,
newlines ...), a first word that is neither an assignment, a reserved word nor a builtin of any
common `/bin/sh` (dash's `echo` differs from `/usr/bin/echo`), and at most one `>` redirection, at
the end, after a blank, to a path inside the sandbox (relative, no `..`: the sandbox holds only
what staging made, so opening it cannot block). Anything else runs under the shell. So does a
command whose program is not found or cannot be exec'd, or whose redirect target cannot be opened:
the shell then reports it in its own words and with its own exit code.

What the program sees is what the shell would have given it: the same argv (argv[0] as written),
working folder, stdin, stdout (the redirect target, created with mode 0666 less the umask, or the
capture) and stderr. Two things differ and are documented: the environment reaches the program in
posbuild's order (dash passes its variables on in hash order), and no shell process sits between
posbuild and the program. A program killed by a signal is reported as the shell reports it: exit
status 128+N and the signal's name on stderr (`shell_status`).
"""

from __future__ import annotations

import os
import re
import signal
import stat
from dataclasses import dataclass

_PLAIN = r"[A-Za-z0-9_\-./,+:@%=]+"
_SIMPLE = re.compile(rf"[ \t]*({_PLAIN}(?:[ \t]+{_PLAIN})*)(?:[ \t]+>[ \t]*({_PLAIN}))?[ \t]*")
_SHELL_WORDS = frozenset("""
    ! { } case do done elif else esac fi for if in then until while function select time coproc
    . : alias bg bind break builtin caller cd chdir command compgen complete continue declare dirs
    disown echo enable eval exec exit export false fc fg getopts hash help history jobs kill let
    local logout mapfile popd printf pushd pwd read readarray readonly return set shift shopt
    source suspend test times trap true type typeset ulimit umask unalias unset wait
""".split())


@dataclass(frozen=True, slots=True)
class Direct:
    """A command posbuild may run without the shell: its words, and the file its stdout goes to
    (relative to the working folder), or None to leave stdout where it is."""

    argv: tuple[str, ...]
    stdout: str | None


def parse(command: str) -> Direct | None:
    """The command as words and redirect target when the shell would do nothing but exec it, else None."""
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
    """Where the shell would find `name` on `path` (relative entries from `cwd`), or None.

    A name with a slash is taken as it is, relative to `cwd`. Only an executable regular file
    counts; when none is found the caller lets the shell say so.
    """
    if "/" in name:
        candidates = [name if name.startswith("/") else f"{cwd}/{name}"]
    else:  # an empty entry is the working folder, as in the shell
        candidates = [f"{folder if folder.startswith('/') else f'{cwd}/{folder}'}/{name}" for folder in path.split(":")]
    for candidate in candidates:
        try:
            if stat.S_ISREG(os.stat(candidate).st_mode) and os.access(candidate, os.X_OK):
                return candidate
        except OSError:
            continue
    return None


def shell_status(status: int) -> tuple[int, bytes]:
    """(exit code, what the shell adds to stderr) for a program's wait status, as `/bin/sh`
    reports a foreground command: a signal N becomes 128+N and its name, except for SIGINT and
    SIGPIPE, which the shell passes over in silence."""
    if not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status), b""
    number = os.WTERMSIG(status)
    if number in (signal.SIGINT, signal.SIGPIPE):
        return 128 + number, b""
    name = signal.strsignal(number) or f"Signal {number}"
    if os.WCOREDUMP(status):
        name += " (core dumped)"
    return 128 + number, name.encode() + b"\n"
