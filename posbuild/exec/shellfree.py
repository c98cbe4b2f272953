"""Layer 0: the shell that runs a command (bash, strict), and the commands it would only have
exec'd.

A genrule's `cmd` runs as Bazel's genrule and Snakemake run theirs: under `/bin/bash` with
`set -euo pipefail` (`shell_argv`). So a pipeline fails when any of its stages fails
(`samtools view missing.bam | gzip > $@` is not an empty success), a failing command ends the
script, and a variable that was never set is an error instead of an empty word. bash, not
`/bin/sh`: Debian's `/bin/sh` (dash 0.5.12) has no `pipefail`. The path is fixed, as Bazel's
is, so an action cannot pick up another shell from its PATH.

Most commands are a program, some plain words and perhaps `> $@`, or a few of those joined by
`&&` and `;`: `cat a b > out`, `sleep 1 && cat $< > $@`. For those the shell is pure overhead: it
is exec'd, reads its dynamic libraries and locale, parses the line, opens the redirects, and
forks and execs the programs anyway. That costs as much again as a cheap program itself. GNU
make skips the shell for commands without shell syntax; posbuild does the same, and also
performs the redirects and the `&&` and `;` lists itself (`Script`). `set -euo pipefail`
changes nothing for such a command but `-e`, which `Script.after` follows: it has no variable
and no pipe.

A command qualifies only when bash's behaviour is certain: simple commands joined by `&&` or `;`
(a `;` may also end the line), each blank-separated words of plain characters (letters, digits
and `_-./,+:@%=`; no quotes, `$`, globs, `~`, `#`, `|`, `<`, a lone `&`, newlines ...), with a
first word that is neither an assignment, a reserved word nor a builtin of bash or of dash
(bash's `echo -e` interprets escapes, `/usr/bin/echo` may not), and at most one `>` or `>>` and
one `2>` or `2>>` redirection, at its end, after a blank, to a path inside the sandbox
(relative, no `..`: the sandbox holds only what staging made, so opening it cannot block) or to
`/dev/null`. Anything else runs under the shell. So does a command whose programs are not all
found and exec'able as they are when it starts, whose first command's redirect targets cannot be
opened, or whose environment changes how bash starts (`shell_free`): the shell then reports it
in its own words and with its own exit code. A redirect of a later command that cannot be opened
is reported as bash reports it.

What each program sees is what bash would have given it: the same argv (argv[0] as written),
working folder, stdin, stdout and stderr (the redirect targets, opened in the order written,
created with mode 0666 less the umask, appended to with `>>`; or the captures), and environment,
including the two variables bash adds (`SHLVL`, and `_`, the program's path as bash found it).
Two things differ and are documented: the environment reaches the program in posbuild's order
(bash passes its variables on in an order of its own), and no bash process sits between posbuild
and a program bash would have forked. How each ends is reported as bash reports it
(`shell_status`): bash 5 execs the last command of the line, when it has no redirect and is not
part of an `&&` list that follows a `;` (`Script.execs`), so its status is the program's own;
every other one bash forks, and a signal N becomes 128+N and bash's line.
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
# a redirect after a blank: `>`, `>>`, `2>` or `2>>`, and its target, glued to it or not
_REDIRECT = re.compile(rf"[ \t]+(2?)(>>?)[ \t]*({_PLAIN})")
_SIMPLE = re.compile(rf"[ \t]*({_PLAIN}(?:[ \t]+{_PLAIN})*)((?:{_REDIRECT.pattern}){{0,2}})[ \t]*")
# the one absolute redirect target: it is no file of the sandbox's, and opening it never blocks
_NULL = "/dev/null"
_JOINED = re.compile(r"(&&|;)")  # what joins simple commands; `&`, `|` alone are not plain
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
    """A simple command posbuild may run without the shell: its words, and the files its stdout
    and stderr go to (relative to the working folder, or /dev/null; appended to when `append`,
    `stderr_append`), or None to leave them where they are. `stderr_first`: `2>` was written
    before `>` (bash opens them in the order written)."""

    argv: tuple[str, ...]
    stdout: str | None
    append: bool = False
    stderr: str | None = None
    stderr_append: bool = False
    stderr_first: bool = False

    @property
    def redirected(self) -> bool:
        return self.stdout is not None or self.stderr is not None

    @property
    def redirects(self) -> tuple[tuple[int, str, bool], ...]:
        """(descriptor, target, append) of each redirect, in the order bash opens them."""
        out = ((1, self.stdout, self.append),) if self.stdout is not None else ()
        err = ((2, self.stderr, self.stderr_append),) if self.stderr is not None else ()
        return err + out if self.stderr_first else out + err

    @property
    def shown(self) -> str:
        """The command as bash names it in the line it prints when a signal killed it."""
        redirects = [f"{'2' if fd == 2 else ''}{'>>' if append else '>'} {target}"
                     for fd, target, append in self.redirects]
        return " ".join((*self.argv, *redirects))


Step = tuple[int, int]  # (which `&&` list of a Script, which command in it)


@dataclass(frozen=True, slots=True)
class Script:
    """A line of simple commands as bash runs it: `;` separates `&&` lists, run one after the
    other; `-e` ends the line at the first failure, except of a command followed by `&&`, which
    only skips the rest of its list (bash's rule)."""

    lists: tuple[tuple[Direct, ...], ...]

    @property
    def single(self) -> bool:
        return len(self.lists) == 1 and len(self.lists[0]) == 1

    def command(self, step: Step) -> Direct:
        return self.lists[step[0]][step[1]]

    def execs(self, step: Step) -> bool:
        """Whether bash execs this command instead of forking it. bash 5 does so for the last
        command of the line, without a redirect, when it is the right-hand side of the line's
        last `;` or `&&` (or the whole line): `a && b`, `a; b`, `a && b; c`, not the `c` of
        `a; b && c` (`&&` binds more tightly than `;`)."""
        last = len(self.lists) - 1
        final = self.lists[last]
        if step != (last, len(final) - 1) or final[-1].redirected:
            return False
        return last == 0 or len(final) == 1

    def after(self, step: Step, status: int) -> Step | None:
        """The command bash runs after `step` ended with `status`, or None: the line is over, and
        its status is `status`."""
        joined, at = step
        if status != 0 and at == len(self.lists[joined]) - 1:
            return None  # -e: a failure that no `&&` follows ends the line
        if status == 0 and at + 1 < len(self.lists[joined]):
            return joined, at + 1
        return (joined + 1, 0) if joined + 1 < len(self.lists) else None


def parse(command: str) -> Script | None:
    """The command as a Script of simple commands when the shell would only run them one after
    another, else None."""
    parts = _JOINED.split(command)
    if len(parts) > 1 and parts[-2] == ";" and not parts[-1].strip():
        parts = parts[:-2]  # `a; b;`: a final `;` ends the line and changes nothing
    lists: list[list[Direct]] = [[]]
    for index, part in enumerate(parts):
        if index % 2:  # a separator
            if part == ";":
                lists.append([])
            continue
        direct = _simple(part)
        if direct is None:
            return None
        lists[-1].append(direct)
    return Script(tuple(tuple(joined) for joined in lists))


def _simple(command: str) -> Direct | None:
    """One simple command as words and redirect target, or None when bash could do more than
    run it."""
    match = _SIMPLE.fullmatch(command)
    if match is None:
        return None
    words = tuple(match.group(1).split())
    if "=" in words[0] or words[0] in _SHELL_WORDS:
        return None
    found: dict[int, tuple[str, bool]] = {}  # descriptor → (target, append), in written order
    for fd_digit, operator, target in _REDIRECT.findall(match.group(2)):
        fd = 2 if fd_digit else 1
        if fd in found:
            return None  # bash opens both and keeps the last: left to it
        if target != _NULL and (target.startswith("/") or ".." in target.split("/")):
            return None  # maybe outside the sandbox, maybe a FIFO, whose open would block posbuild
        found[fd] = (target, operator == ">>")
    stdout, append = found.get(1, (None, False))
    stderr, stderr_append = found.get(2, (None, False))
    return Direct(words, stdout, append, stderr, stderr_append, next(iter(found), 1) == 2)


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


def shell_free(env: Mapping[str, str]) -> bool:
    """Whether bash would start as it always does with `env`: not when it holds a variable that
    changes how bash itself starts (then only bash can run the command)."""
    return not any(name in _BASH_STARTUP or name.startswith("BASH_FUNC_") for name in env)


def shell_variables(program: str, forked: bool) -> dict[str, str]:
    """The variables bash adds to the environment of a program it runs.

    `SHLVL` is 1 in a shell started with none; a program bash execs counts it out (0), one it
    forks sees 1. `_` is the program's path as bash found it.
    """
    return {"SHLVL": "1" if forked else "0", "_": program}


def shell_status(status: int, direct: Direct, pid: int, forked: bool) -> tuple[int, bytes]:
    """(exit code, what bash adds to stderr) for the wait status of the program `direct` ran as
    process `pid`, as `bash -c` reports it.

    A program bash execs has bash's own status: a signal stays a signal. One it forks and waits
    for: a signal N becomes 128+N and a line naming it, except SIGINT and SIGPIPE, which bash
    passes over in silence, and SIGTERM, which it names alone.
    """
    if not forked or not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status), b""
    number = os.WTERMSIG(status)
    if number in (signal.SIGINT, signal.SIGPIPE):
        return 128 + number, b""
    name = signal.strsignal(number) or f"Signal {number}"
    if os.WCOREDUMP(status):
        name += " (core dumped)"
    if number == signal.SIGTERM:
        return 128 + number, f"{name}\n".encode()
    return 128 + number, f"{SHELL}: line 1: {pid:5d} {name:<24}{direct.shown}\n".encode()


def redirect_failure(target: str, error: OSError) -> bytes:
    """bash's line when it cannot open a command's redirect `target` (the command then fails
    with status 1 and never starts)."""
    return f"{SHELL}: line 1: {target}: {error.strerror}\n".encode()


def not_run(direct: Direct, error: OSError) -> tuple[int, bytes]:
    """bash's exit code and line for a program it could not exec (found and exec'able when the
    line started, gone or changed since)."""
    name = direct.argv[0]
    if isinstance(error, FileNotFoundError):
        why = "command not found" if "/" not in name else "No such file or directory"
        return 127, f"{SHELL}: line 1: {name}: {why}\n".encode()
    return 126, f"{SHELL}: line 1: {name}: {error.strerror}\n".encode()


def execable(path: str) -> bool:
    """Whether the kernel can exec the file at `path` as it is (an ELF program or a `#!`
    script); bash runs any other executable file as a script of its own."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head == b"\x7fELF" or head[:2] == b"#!"
