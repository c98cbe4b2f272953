"""Layer 0: bound how deeply a BUILD or .bzl file nests, before the Starlark evaluator sees it.

The evaluator (starlark-pyo3, native code) recurses once per level of the syntax tree and has no
guard: 3,000 nested brackets, a chain of 1,100 `lambda`s or 3,000 `elif`s overflow its stack and
the process dies with SIGSEGV, which nothing can catch. A cheap scan of the text finds the depth
first, outside strings and comments, and refuses a file deeper than `MAX_DEPTH` with its file and
line, as Python's own parser refuses 200 nested parentheses.

What counts as a level, because each nests the tree one deeper: an open bracket; an operator,
keyword operator (`not`, `and`, `if`, `lambda`...) or `.` within one element of a bracket (a comma
starts the next element, a new statement starts afresh); an indented block; an `elif` of a chain.
The count errs on the high side; real files stay far below the limit.
"""

from __future__ import annotations

import re

MAX_DEPTH = 200  # the evaluator's stack overflowed at ~1,100 levels of its costliest kind

# Comments, line continuations and strings (an unterminated one runs to the end of its line, or of
# the file when triple-quoted). Possessive quantifiers: an unclosed quote before a long run of text
# must not make the regex engine backtrack through every way of splitting that text.
_SKIP = "|".join((
    r"#[^\n]*+", r"\\\n",
    r"'''[^'\\]*+(?:(?:\\.|'(?!''))[^'\\]*+)*+(?:'''|\Z)",
    r'"""[^"\\]*+(?:(?:\\.|"(?!""))[^"\\]*+)*+(?:"""|\Z)',
    r"'[^'\\\n]*+(?:\\.[^'\\\n]*+)*+'",
    r'"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"',
))
_STRINGS = re.compile(_SKIP, re.DOTALL)
_KEYWORDS = re.compile(r"\b(?:not|and|or|if|elif|else|lambda|in|for)\b")
_NOT_OPERATOR = str.maketrans("", "", "([{-+*/%&|^~<>.!=")  # deletes what can add a level
# a line at column 0 that ends no bracket
_STATEMENT = re.compile(r"\n(?=[^\s#)\]}]|$)(?!elif\b|else\b)")
_TOKEN = re.compile(
    "(?P<skip>" + _SKIP + r")|(?P<newline>\n(?P<indent>[ \t]*)(?P<elif>elif\b)?)"
    r"|(?P<open>[(\[{])|(?P<close>[)\]}])|(?P<comma>[,;])"
    r"|(?P<op>\b(?:not|and|or|if|else|lambda|in|for)\b|\*\*|//|<<|>>|[-+*/%&|^~<>.!]=?|==)",
    re.DOTALL)


def nesting_problem(source: str, max_depth: int = MAX_DEPTH) -> tuple[int, str] | None:
    """(line, message) where `source` first nests deeper than `max_depth`, or None.

    Cheap first: without strings and comments, the file is cut into top-level statements, and a
    statement with fewer level-adding tokens and lines than the limit cannot be too deep (a count
    at C speed). Only the others are scanned token by token, and only a file found too deep is
    scanned again whole, with its strings, for the line to name.
    """
    stripped = _STRINGS.sub(" ", source)
    keywords = _KEYWORDS.search(stripped) is not None
    pending: list[str] = []
    balance = 0
    for chunk in _STATEMENT.split(stripped):
        pending.append(chunk)
        balance += sum(chunk.count(c) for c in "([{") - sum(chunk.count(c) for c in ")]}")
        if balance > 0:
            continue  # a bracket spans the next top-level line: one statement still
        statement = "\n".join(pending)
        pending, balance = [], 0
        levels = len(statement) - len(statement.translate(_NOT_OPERATOR)) + statement.count(
            "\n") + 1
        if keywords and levels <= max_depth:
            levels += len(_KEYWORDS.findall(statement))
        if levels > max_depth and _scan(statement, max_depth) is not None:
            return _scan(source, max_depth)
    statement = "\n".join(pending)
    if pending and _scan(statement, max_depth) is not None:
        return _scan(source, max_depth)
    return None


def _scan(source: str, max_depth: int) -> tuple[int, str] | None:
    # per open bracket (and the statement outside them): levels of its current element
    counters = [0]
    inner = 0  # sum(counters)
    indents = [0]  # widths of the enclosing indented blocks
    elifs: dict[int, int] = {}  # indent width -> length of the elif chain running at it
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup
        if kind == "skip" or kind == "close" and len(counters) == 1:
            continue
        if kind == "close":
            inner -= counters.pop()
            continue
        if kind == "comma":
            inner -= counters[-1]
            counters[-1] = 0
            continue
        if kind in ("newline", "indent", "elif"):
            end = match.end("indent")
            if len(counters) > 1 or end >= len(source) or source[end] in "\n#\r":
                continue  # a line break inside brackets, a blank or a comment-only line
            width = len(match.group("indent").expandtabs(8))
            while indents[-1] > width:
                elifs.pop(indents.pop(), None)
            if width > indents[-1]:
                indents.append(width)
            elifs[width] = elifs.get(width, 0) + 1 if match.group("elif") else 0
            counters[0] = inner = 0
        else:  # an open bracket or an operator
            counters[-1] += 1
            inner += 1
            if kind == "open":
                counters.append(0)
        if len(indents) + sum(elifs.values()) + inner > max_depth:
            line = source.count("\n", 0, match.start()) + 1 + (kind != "open" and kind != "op")
            return line, (f"nested more than {max_depth} levels deep (brackets, operators, blocks "
                          f"and elif chains count); posbuild refuses it before evaluation")
    return None
