"""Layer 0: the host programs a shell command runs, read from its text.

An action's key covers the software it actually runs (envfp.py): `bwa mem ... | samtools sort`
depends on bwa and samtools, not on the Python packages installed beside posbuild. The programs
are the command words of the command: the first word of each simple command, after variable
assignments and redirections, and after wrappers that run the next word (`env`, `xargs`,
`timeout`, ...). Shell builtins and keywords are not programs. A word with a `/` that is not
absolute names a workspace file, which the action's inputs already cover; a word holding an
expansion (`$x`, a glob) cannot be known before the command runs and is skipped: a target names
such programs in `host_tools`.

The reading is a shell tokenizer (shlex), not a shell: it may find a word that is not a program
(a heredoc's text, say). That costs nothing but a `tool.<word>` entry in the action's environment.
"""

from __future__ import annotations

import re

# bash builtins and keywords: never a program on the PATH, whatever /usr/bin holds
BUILTINS = frozenset("""
    ! [[ ]] { } alias bg bind break builtin caller case cd command compgen complete compopt
    continue coproc declare dirs disown do done echo elif else enable esac eval exec exit export
    false fc fg fi for function getopts hash help history if in jobs kill let local logout mapfile
    popd printf pushd pwd read readarray readonly return select set shift shopt source suspend
    test then time times trap true type typeset ulimit umask unalias unset until wait while [ :
    .""".split())
# wrappers whose first non-option word is the program they run
WRAPPERS = frozenset({"command", "env", "exec", "nice", "nohup", "stdbuf", "time", "timeout",
                      "xargs", "ionice", "chrt", "taskset", "setsid", "flock"})
# wrappers that take one positional argument before the program (`timeout 10 cmd`)
_WRAPPER_ARGUMENTS = {"timeout": 1, "flock": 1, "taskset": 1, "chrt": 1}
_SEPARATORS = frozenset({"|", "||", "&", "&&", ";", ";;", "(", ")", "|&", "{", "}", "!",
                         "do", "then", "else", "elif", "if", "while", "until", "`"})
_REDIRECT = re.compile(r"^[0-9]*(<|>|<<|>>|<>|>&|<&|&>|&>>|<<<|>\|)$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")
_UNKNOWABLE = re.compile(r"[$*?\[\]{}~`\\]")


def programs_of(command: str) -> tuple[str, ...]:
    """The host programs `command` names, each once, in the order they appear."""
    found: dict[str, None] = {}
    for line in command.replace("\\\n", " ").splitlines():
        for word in _command_words(line):
            found.setdefault(word, None)
    return tuple(found)


# a line without quotes, escapes or comments splits on operators and blanks alone (most do);
# shlex, which reads a character at a time, is for the others
_PLAIN_TOKEN = re.compile(r"&>>|\|\||&&|;;|\|&|>>|<<|>&|<&|&>|>\||[|&;()<>]|[^\s|&;()<>]+")
_NEEDS_SHLEX = re.compile(r"[\"'\\#]")


def _tokens(line: str) -> list[str]:
    line = line.replace("$(", " ( ").replace("`", " ` ")
    if not _NEEDS_SHLEX.search(line):
        return _PLAIN_TOKEN.findall(line)
    import shlex

    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    return list(lexer)


def _command_words(line: str) -> list[str]:
    """The words in command position on one line of shell."""
    words: list[str] = []
    expecting = True  # the next word is in command position
    skip = 0  # positional arguments of a wrapper still to pass over
    after_redirect = False
    try:
        for token in _tokens(line):
            if token in _SEPARATORS and (expecting or not token.isalpha()):
                expecting, skip, after_redirect = True, 0, False
            elif not expecting:
                continue
            elif after_redirect:
                after_redirect = False
            elif _REDIRECT.match(token):
                after_redirect = True
            elif _ASSIGNMENT.match(token) or token.startswith("-"):
                continue
            elif skip:
                skip -= 1
            elif token.rpartition("/")[2] in WRAPPERS:  # the wrapped program follows
                if token not in BUILTINS:
                    words.append(token)
                skip = _WRAPPER_ARGUMENTS.get(token, 0)
            else:
                expecting = False
                if token in BUILTINS or _UNKNOWABLE.search(token):
                    continue
                if "/" in token and not token.startswith("/"):
                    continue  # a workspace file: one of the action's inputs
                words.append(token)
    except ValueError:  # an unbalanced quote: the command fails when it runs anyway
        pass
    return words
