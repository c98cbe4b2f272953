"""Layer 1: Bazel's target visibility — who may depend on a target.

A target names who may use it in `visibility` (or its package says it once, in
`package(default_visibility = ...)`): `//visibility:public`, `//visibility:private`,
`//pkg:__pkg__` (that package), `//pkg:__subpackages__` (it and every package below), or the
label of a `package_group`. A target is always visible inside its own package. The words mean
what they mean in Bazel, so a BUILD file written for Bazel is checked the same way here.

Only the package that nothing says anything about differs: posbuild has always let any package
use any rule, so that is its default unless `posbuild.toml` asks for Bazel's private default
(`[build] default_visibility = "private"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from posbuild.core.label import Label, parse_label
from posbuild.errors import BuildFileError

PUBLIC = "//visibility:public"
PRIVATE = "//visibility:private"
_PACKAGE_WORDS = ("__pkg__", "__subpackages__")


@dataclass(frozen=True, slots=True)
class PackageGroup:
    """A named set of packages (Bazel's `package_group`) that visibility lists may name.

    `packages` holds `//pkg` (that package), `//pkg/...` (it and those below), `public`,
    `private`, each maybe prefixed by `-` to exclude; `includes` the labels of other groups."""

    label: Label
    packages: tuple[str, ...]
    includes: tuple[str, ...]


def canonical_visibility(entries: Any, package: str, what: str) -> tuple[str, ...]:
    """A `visibility` list as canonical label texts, refused (ValueError, raised inside
    Starlark so it carries the line) when an entry is not one Bazel accepts."""
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) for e in entries):
        raise ValueError(f"{what}: 'visibility' must be a list of labels, such as "
                         f"[\"{PUBLIC}\"] or [\"//pkg:__pkg__\"]")
    found: dict[str, None] = {}
    for entry in entries:
        try:
            label = parse_label(entry, package)
        except BuildFileError as error:
            raise ValueError(f"{what}: visibility entry '{entry}': {error.detail}") from None
        if label.package == "visibility" and str(label) not in (PUBLIC, PRIVATE):
            raise ValueError(f"{what}: visibility entry '{entry}' is unknown: write "
                             f"'{PUBLIC}', '{PRIVATE}', '//pkg:__pkg__', "
                             "'//pkg:__subpackages__' or a package_group's label")
        found.setdefault(str(label), None)
    return tuple(found)


def package_specs(entries: Any, what: str) -> tuple[str, ...]:
    """A package_group's `packages`, checked: `//pkg`, `//pkg/...`, `public`, `private`, each
    maybe prefixed by `-`."""
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) for e in entries):
        raise ValueError(f"{what}: 'packages' must be a list of package specifications")
    for entry in entries:
        spec = entry.removeprefix("-")
        if spec in ("public", "private"):
            continue
        package = spec[2:].removesuffix("...").removesuffix("/")
        try:
            if not spec.startswith("//") or ":" in spec or spec == "//":
                raise BuildFileError("")
            if package:
                parse_label(f"//{package}:x", "")
        except BuildFileError:
            raise ValueError(f"{what}: package specification '{entry}' is not '//pkg', "
                             "'//pkg/...', 'public' or 'private'") from None
    return tuple(entries)


GroupLookup = Callable[[Label], PackageGroup]


def is_visible(visibility: Sequence[str], owner: str, consumer: str,
               group: GroupLookup) -> bool:
    """Whether a target of package `owner` with `visibility` may be used by package
    `consumer`. `group` finds a package_group by label (raising BuildFileError if there is
    none)."""
    if owner == consumer:
        return True
    for entry in visibility:
        if entry == PUBLIC:
            return True
        if entry == PRIVATE:
            continue
        label = parse_label(entry, "")
        if label.name in _PACKAGE_WORDS:
            if _covers(label.package, label.name == "__subpackages__", consumer):
                return True
        elif _in_group(group(label), consumer, group, set()):
            return True
    return False


def _covers(package: str, below: bool, consumer: str) -> bool:
    return consumer == package or below and (not package or consumer.startswith(package + "/"))


def _in_group(found: PackageGroup, consumer: str, group: GroupLookup, seen: set[Label]) -> bool:
    if found.label in seen:
        return False
    seen.add(found.label)
    included = excluded = False
    for entry in found.packages:
        negated, spec = entry.startswith("-"), entry.removeprefix("-")
        if spec == "public":
            hit = True
        elif spec == "private":
            hit = False
        elif spec.endswith("..."):
            hit = _covers(spec[2:-3].rstrip("/"), True, consumer)
        else:
            hit = consumer == spec[2:]
        if hit:
            excluded, included = excluded or negated, included or not negated
    if excluded:
        return False
    if included:
        return True
    return any(_in_group(group(parse_label(text, found.label.package)), consumer, group, seen)
               for text in found.includes)
