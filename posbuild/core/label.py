"""Layer 0: labels (`//pkg:name`) and target patterns (`//pkg:all`, `//pkg/...`, `//...`).

Labels are the names users write in BUILD files and on the command line; parsing them in one
place means every error about a malformed one reads the same, wherever it was typed.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Container, Iterable

from posbuild.errors import BuildFileError


@dataclass(frozen=True, slots=True, order=True)
class Label:
    """A target or file: `package` is the workspace-relative folder ("" for the root)."""

    package: str
    name: str

    def __str__(self) -> str:
        return f"//{self.package}:{self.name}"


class _Malformed(Exception):
    """Why a label or pattern text is malformed; worded into a BuildFileError by the caller."""


def _check_package(package: str) -> None:
    parts = package.split("/") if package else []
    if package.startswith("/") or package.endswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _Malformed(f"bad package path '{package}'")


def _check_name(name: str) -> None:
    if not name:
        raise _Malformed("empty target name")
    parts = name.split("/")
    if ":" in name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _Malformed(f"bad target name '{name}'")


def _check_text(text: str) -> None:
    """A label is UTF-8 text: an argument or folder name of other bytes reaches posbuild with
    surrogate escapes, which no key, record or message could encode."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise _Malformed("not UTF-8 text") from None


def shown(text: str) -> str:
    """`text` as it can be printed: bytes that were not UTF-8 as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# A label in the shape almost every one has, valid as the checks below would find it: checked by
# one match instead of them. A part of a path is not empty, ".", "..", and holds no "/" or ":".
_PART = r"(?!\.\.?(?:[/:]|$))[^/:]+"
_PATH = re.compile(rf"{_PART}(?:/{_PART})*")
_ABSOLUTE = re.compile(rf"//((?:{_PATH.pattern})?):({_PATH.pattern})")


def _split(text: str, current_package: str) -> Label:
    if text.isascii() and current_package.isascii():  # the quick way, else the checks say why
        if text.startswith("//"):
            found = _ABSOLUTE.fullmatch(text)
            if found is not None:
                return Label(found.group(1), found.group(2))
        elif not text.startswith("@") and _PATH.fullmatch(text, 1 if text[:1] == ":" else 0) \
                and (not current_package or _PATH.fullmatch(current_package)):
            return Label(current_package, text[1:] if text[:1] == ":" else text)
    return _split_checked(text, current_package)


def _split_checked(text: str, current_package: str) -> Label:
    _check_text(current_package)
    _check_text(text)
    if text.startswith("//"):
        package, sep, name = text[2:].partition(":")
        if not sep:
            _check_package(package)
            if not package:
                raise _Malformed("the root package needs ':name'")
            name = package.rsplit("/", 1)[-1]
    elif text.startswith(":"):
        package, name = current_package, text[1:]
    elif text.startswith("@"):
        raise _Malformed("external repositories are only for load()")
    else:
        package, name = current_package, text
    _check_package(package)
    _check_name(name)
    return Label(package, name)


@functools.lru_cache(maxsize=1 << 16)
def package_of(label: str) -> str:
    """The package of canonical label text `//pkg:name`, without parsing it again."""
    return label[2:].partition(":")[0]


def parse_label(text: str, current_package: str) -> Label:
    """Parse `//pkg:name`, `//pkg`, `:name` or a bare `name` relative to `current_package`.

    Remembered (labels are immutable): loading and analysing a graph parse the same few
    thousand labels again and again, once per reference."""
    try:
        return _split(text, current_package)
    except _Malformed as error:
        raise BuildFileError(f"invalid label '{shown(text)}': {error}") from None


class PatternKind(enum.Enum):
    """What a target pattern selects inside its base package."""

    SINGLE = "single"  # exactly one label
    ALL = "all"  # every target of one package
    RECURSIVE = "recursive"  # every target of a package and the packages below it


@dataclass(frozen=True, slots=True)
class TargetPattern:
    """A parsed command-line pattern. `label` is the one label of a SINGLE pattern; an ALL
    pattern written `:all` holds `//pkg:all` there too, since, as in Bazel, a target of that
    name is what it means when the package has one (`named_target`)."""

    kind: PatternKind
    package: str
    label: Label | None = None

    def __str__(self) -> str:
        if self.kind is PatternKind.SINGLE:
            return str(self.label)
        if self.kind is PatternKind.ALL:
            return f"//{self.package}:all" if self.label else f"//{self.package}:*"
        return f"//{self.package}/..." if self.package else "//..."

    def matches(self, label: str) -> bool:
        """Whether this pattern names the target of canonical label text `label` (`//pkg:name`,
        as actions and records carry it): the label itself, or a target of a package in scope."""
        if self.kind is PatternKind.SINGLE:
            return label == str(self.label)
        return self.covers_package(package_of(label))

    def named_target(self, names: Container[str]) -> Label | None:
        """The target `//pkg:all` names when the package (its target `names`) has one called
        `all`; None for every other pattern, which selects what it always selects."""
        if self.kind is PatternKind.ALL and self.label is not None \
                and self.label.name in names:
            return self.label
        return None

    def covers_package(self, package: str) -> bool:
        """Whether a package lies inside this pattern's scope."""
        if self.kind is PatternKind.RECURSIVE:
            return not self.package or package == self.package \
                or package.startswith(self.package + "/")
        return package == self.package


def parse_pattern(text: str, current_package: str = "") -> TargetPattern:
    """Parse a command-line target pattern; relative forms resolve against `current_package`.

    As in Bazel, `//pkg/...:all` and `//pkg/...:*` mean `//pkg/...`.
    """
    try:
        return _pattern(text, current_package)
    except _Malformed as error:
        raise BuildFileError(f"invalid target pattern '{shown(text)}': {error}") from None


def _pattern(text: str, current_package: str) -> TargetPattern:
    _check_text(current_package)
    _check_text(text)
    if text.startswith("@"):
        raise _Malformed("external repositories are only for load()")
    if not text.startswith("//") and not text.startswith(":"):
        joined = f"{current_package}/{text}" if current_package else text
        text = "//" + joined if (text.endswith("...") or ":" in text) \
            else f"//{current_package}:{text}"
    for suffix in (":all", ":*"):
        if text.endswith("..." + suffix):
            text = text[:-len(suffix)]
    if "..." in text.partition(":")[0].split("/")[:-1] \
            or "..." in text.partition(":")[2].split("/"):
        raise _Malformed("'...' must end the pattern")
    if text == "//...":
        return TargetPattern(PatternKind.RECURSIVE, "")
    if text.endswith("/..."):
        package = text[2:-4]
        _check_package(package)
        return TargetPattern(PatternKind.RECURSIVE, package)
    label = _split(text, current_package)
    if label.name == "all":
        return TargetPattern(PatternKind.ALL, label.package, label)
    if label.name == "*":
        return TargetPattern(PatternKind.ALL, label.package)
    return TargetPattern(PatternKind.SINGLE, label.package, label)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` suffix naming the closest candidate, or an empty string."""
    import difflib  # only when reporting an error

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
