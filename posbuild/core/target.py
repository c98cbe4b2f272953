"""Layer 1: a Target is one rule call of a BUILD file, checked against its rule's schema.

Attribute checking lives here, not in the loader, so that each native rule's contract (names,
types, defaults) reads as one table and every bad attribute gets the same kind of message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from posbuild.errors import SourceLocation
from posbuild.core.label import Label
from posbuild.core.layout import NONDETERMINISTIC_OUTPUT_TAG

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Target:
    """A loaded rule call. Attribute values are tuples and sorted pairs, never lists or dicts."""

    label: Label
    kind: str
    srcs: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()  # every output, the folders of `out_dirs` last
    out_dirs: tuple[str, ...] = ()  # the outputs that are folders (Bazel's tree artifacts)
    cmd: str = ""
    tools: tuple[str, ...] = ()
    env: Pairs = ()
    version: Pairs = ()
    requires: tuple[tuple[str, Pairs], ...] = ()
    resources: tuple[tuple[str, int], ...] = ()
    secrets: tuple[str, ...] = ()
    allow_secret_in_output: bool = False
    timeout: int = 0
    tags: tuple[str, ...] = ()
    script: str = ""  # py_task: the script's label
    args: tuple[str, ...] = ()  # py_task: the script's command-line arguments
    deps: tuple[str, ...] = ()  # py_task: labels of extra code the code hash covers
    # py_task: the interpreter it runs (a name, a path or a py_env's label; "" is `[python]
    # interpreter`); py_env: the Python its environment is made from
    python: str = ""
    requirements: str = ""  # py_env: the label of its requirements (or lock) file
    # host programs the action runs that its command does not name (a script calls them)
    host_tools: tuple[str, ...] = ()
    # who may depend on it (core/visibility.py): canonical labels, the package's default
    # filled in by the loader
    visibility: tuple[str, ...] = ("//visibility:public",)
    # tests and binaries: files they read when they run, and how they run
    data: tuple[str, ...] = ()
    main: str = ""  # py_test, py_binary: the entry point, one of `srcs`
    size: str = ""  # tests: small, medium, large or enormous (the timeout follows)
    flaky: bool = False  # tests: retried up to three attempts
    message: str = field(default="", compare=False)
    location: SourceLocation | None = field(default=None, compare=False)


class AttributeError_(ValueError):
    """A bad attribute value; raised inside Starlark so the message carries file and line."""


def _str(kind: str, attr: str, value: Any) -> str:
    if not isinstance(value, str):
        raise AttributeError_(f"{kind}: attribute '{attr}' must be a string, got {_type(value)}")
    return _no_nul(kind, attr, value)


def _no_nul(kind: str, attr: str, text: str) -> str:
    """`text`, which must hold no NUL: no path, argument or environment variable can pass one."""
    if "\0" in text:
        raise AttributeError_(f"{kind}: attribute '{attr}' holds a NUL character ({text!r}), "
                              "which no path, command line or environment can pass")
    return text


def _no_nul_in(kind: str, attr: str, texts: Sequence[str]) -> None:
    """`_no_nul` for each of `texts`, with one search for the whole list in the usual case."""
    if "\0" in "".join(texts):
        for text in texts:
            _no_nul(kind, attr, text)


def _int(kind: str, attr: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AttributeError_(
            f"{kind}: attribute '{attr}' must be a non-negative int, got {value!r}")
    return value


def _str_list(kind: str, attr: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise AttributeError_(
            f"{kind}: attribute '{attr}' must be a list of non-empty strings, got {_type(value)}")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise AttributeError_(f"{kind}: attribute '{attr}' must be a list of non-empty strings, "
                              f"but it holds {bad[0]!r}")
    _no_nul_in(kind, attr, value)
    if len(set(value)) != len(value):
        duplicate = next(v for v in value if value.count(v) > 1)
        raise AttributeError_(f"{kind}: attribute '{attr}' lists '{duplicate}' twice")
    return tuple(value)


def _bool(kind: str, attr: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AttributeError_(f"{kind}: attribute '{attr}' must be True or False, got {value!r}")
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(kind: str, attr: str, name: str) -> None:
    """Refuse a name no process environment holds as written (secrets and `env` both name
    variables)."""
    if not _ENV_NAME.fullmatch(name):
        raise AttributeError_(
            f"{kind}: attribute '{attr}': {name!r} is not an environment variable name")


# signs the shared cache: an action holding it could forge entries
RESERVED_SECRETS = ("POSBUILD_CACHE_KEY",)


def _secret_names(kind: str, attr: str, value: Any) -> tuple[str, ...]:
    names = _str_list(kind, attr, value)
    for name in names:
        _env_name(kind, attr, name)
        if name in RESERVED_SECRETS:
            raise AttributeError_(f"{kind}: attribute '{attr}': {name} is posbuild's own secret "
                                  f"and is never given to an action")
    return tuple(sorted(names))


def _scalar_text(kind: str, attr: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AttributeError_(
            f"{kind}: attribute '{attr}' values must be strings or ints, got {value!r}")
    return _no_nul(kind, attr, str(value))


def _str_dict(kind: str, attr: str, value: Any) -> Pairs:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise AttributeError_(
            f"{kind}: attribute '{attr}' must be a dict with string keys, got {_type(value)}")
    return tuple(sorted((k, _scalar_text(kind, attr, v)) for k, v in value.items()))


def _requires(kind: str, attr: str, value: Any) -> tuple[tuple[str, Pairs], ...]:
    if not isinstance(value, dict):
        raise AttributeError_(
            f"{kind}: attribute '{attr}' must be a dict of label -> dict, got {_type(value)}")
    return tuple(sorted((_str(kind, attr, k), _str_dict(kind, attr, v)) for k, v in value.items()))


def _resources(kind: str, attr: str, value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise AttributeError_(f"{kind}: attribute '{attr}' must be a dict, got {_type(value)}")
    unknown = sorted(set(value) - {"cpu", "mem_mb", "io"})
    if unknown:
        raise AttributeError_(
            f"{kind}: attribute '{attr}' has unknown key '{unknown[0]}' (known: cpu, mem_mb, io)")
    return tuple(sorted((k, _int(kind, attr, v)) for k, v in value.items()))


def _args(kind: str, attr: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise AttributeError_(
            f"{kind}: attribute '{attr}' must be a list of strings, got {_type(value)}")
    _no_nul_in(kind, attr, value)
    return tuple(value)


PY_TASK_ENV = (("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONHASHSEED", "0"), ("PYTHONPATH", "."))


def _env(kind: str, attr: str, value: Any) -> Pairs:
    """An `env` dict, whose names a process environment can hold as written (no `=`)."""
    pairs = _str_dict(kind, attr, value)
    for name, _ in pairs:
        _env_name(kind, attr, name)
    return pairs


def _py_env(kind: str, attr: str, value: Any) -> Pairs:
    pairs = _env(kind, attr, value)
    fixed = dict(PY_TASK_ENV)
    taken = [k for k, _ in pairs if k in fixed]
    if taken:
        raise AttributeError_(
            f"{kind}: attribute '{attr}' may not set {taken[0]}: {kind} sets it to "
            f"{fixed[taken[0]]!r}")
    return pairs


def _host_tools(kind: str, attr: str, value: Any) -> tuple[str, ...]:
    names = _str_list(kind, attr, value)
    for name in names:
        if not name or "/" in name and not name.startswith("/") or name.endswith("/"):
            raise AttributeError_(
                f"{kind}: attribute '{attr}': {name!r} must be a program name looked up on the "
                "sandbox PATH (\"samtools\") or an absolute path (\"/opt/bin/samtools\")")
    return names


def _python(kind: str, attr: str, value: Any) -> str:
    path = _str(kind, attr, value)
    if is_label(path):
        if kind != "py_task":
            raise AttributeError_(f"{kind}: attribute '{attr}' names an interpreter, not a "
                                  f"target: {path!r}")
        return path
    if not path.startswith("/") and "/" in path:
        raise AttributeError_(
            f"{kind}: attribute '{attr}': {path!r} must be an interpreter name looked up on the "
            "sandbox PATH (\"python3\"), an absolute path, or a py_env's label (\":env\")")
    return path


def is_label(text: str) -> bool:
    """Whether a `python` attribute names a target (a py_env) rather than an interpreter."""
    return text.startswith((":", "//"))


# Bazel's test sizes and timeouts, in seconds; a size's timeout is its default
SIZE_TIMEOUTS = {"small": 60, "medium": 300, "large": 900, "enormous": 3600}
NAMED_TIMEOUTS = {"short": 60, "moderate": 300, "long": 900, "eternal": 3600}
TEST_KINDS = ("sh_test", "py_test")
RUNNABLE_KINDS = ("sh_binary", "py_binary", *TEST_KINDS)


def _size(kind: str, attr: str, value: Any) -> str:
    if value not in SIZE_TIMEOUTS:
        raise AttributeError_(f"{kind}: attribute '{attr}' must be one of "
                              f"{', '.join(SIZE_TIMEOUTS)}, got {value!r}")
    return value


def _test_timeout(kind: str, attr: str, value: Any) -> int:
    """Seconds, or Bazel's names for them (short, moderate, long, eternal)."""
    if isinstance(value, str) and value in NAMED_TIMEOUTS:
        return NAMED_TIMEOUTS[value]
    if isinstance(value, str):
        raise AttributeError_(f"{kind}: attribute '{attr}' must be seconds or one of "
                              f"{', '.join(NAMED_TIMEOUTS)}, got {value!r}")
    return _int(kind, attr, value)


def test_timeout(target: Target) -> int:
    """The seconds a test may run: its `timeout`, else its size's (Bazel's default size is
    medium)."""
    return target.timeout or SIZE_TIMEOUTS[target.size or "medium"]


def _type(value: Any) -> str:
    return type(value).__name__


Checker = Callable[[str, str, Any], Any]

_COMMON: dict[str, Checker] = {"tags": _str_list, "visibility": _str_list}
_ACTION: dict[str, Checker] = {  # what every rule that runs a command declares the same way
    **_COMMON,
    "srcs": _str_list,
    "outs": _str_list,
    "out_dirs": _str_list,
    "version": _str_dict,
    "requires": _requires,
    "resources": _resources,
    "secrets": _secret_names,
    "allow_secret_in_output": _bool,
    "timeout": _int,
    "message": _str,
    "host_tools": _host_tools,
}
SCHEMAS: dict[str, dict[str, Checker]] = {
    "genrule": {**_ACTION, "cmd": _str, "tools": _str_list, "env": _env},
    "filegroup": {**_COMMON, "srcs": _str_list},
    "py_task": {**_ACTION, "script": _str, "args": _args, "deps": _str_list, "env": _py_env,
                "python": _python},
    "py_env": {**_COMMON, "requirements": _str, "srcs": _str_list, "python": _python},
}
_RUNNABLE: dict[str, Checker] = {**_COMMON, "srcs": _str_list, "data": _str_list,
                                 "deps": _str_list, "args": _args}
_TEST: dict[str, Checker] = {"size": _size, "timeout": _test_timeout, "flaky": _bool,
                             "resources": _resources, "host_tools": _host_tools}
SCHEMAS.update({
    "sh_binary": {**_RUNNABLE, "env": _env},
    "sh_test": {**_RUNNABLE, **_TEST, "env": _env},
    "py_binary": {**_RUNNABLE, "main": _str, "python": _python, "env": _py_env},
    "py_test": {**_RUNNABLE, **_TEST, "main": _str, "python": _python, "env": _py_env},
})
REQUIRED = {"genrule": ("outs", "cmd"), "filegroup": (), "py_task": ("script", "outs"),
            "py_env": ("requirements",), "sh_binary": ("srcs",), "sh_test": ("srcs",),
            "py_binary": ("srcs",), "py_test": ("srcs",)}


def _with_folders(kind: str, label: Label, outs: tuple[str, ...],
                  folders: tuple[str, ...]) -> tuple[str, ...]:
    """`outs` followed by the `out_dirs`, refused when one names the other or lies inside it."""
    for folder in folders:
        if folder.endswith("/") or any(p in ("", ".", "..") for p in folder.split("/")):
            raise AttributeError_(f"{kind} '{label.name}': out_dirs entry '{folder}' is not a "
                                  f"folder name inside the package")
        if folder in outs:
            raise AttributeError_(f"{kind} '{label.name}': '{folder}' is both in outs and in "
                                  f"out_dirs")
        nested = next((o for o in (*outs, *folders) if o.startswith(folder + "/")), None)
        if nested is not None:
            raise AttributeError_(f"{kind} '{label.name}': '{nested}' lies inside out_dirs entry "
                                  f"'{folder}': a folder output is one output, whole")
    return (*outs, *folders)


def make_target(kind: str, label: Label, attrs: dict[str, Any],
                location: SourceLocation | None) -> Target:
    """Check a rule call's attributes against its schema and freeze them into a Target."""
    schema = SCHEMAS[kind]
    for attr in attrs:
        if attr not in schema:
            known = ", ".join(sorted(schema))
            raise AttributeError_(
                f"{kind} '{label.name}': unknown attribute '{attr}' (known: {known})")
    for attr in REQUIRED[kind]:
        if attr == "outs" and attrs.get("out_dirs"):
            continue  # folders alone are outputs enough
        if not attrs.get(attr):
            raise AttributeError_(f"{kind} '{label.name}': missing required attribute '{attr}'")
    values = {attr: schema[attr](kind, attr, value) for attr, value in attrs.items()
              if value is not None}
    if "out_dirs" in values:
        values["outs"] = _with_folders(kind, label, values.get("outs", ()), values["out_dirs"])
    clash = sorted(set(values.get("secrets", ())) & {k for k, _ in values.get("env", ())})
    if clash:
        raise AttributeError_(f"{kind} '{label.name}': '{clash[0]}' is both in env and in secrets")
    for tag in values.get("tags", ()):
        exempt = tag[len(NONDETERMINISTIC_OUTPUT_TAG):]
        if tag.startswith(NONDETERMINISTIC_OUTPUT_TAG) and exempt not in values.get("outs", ()):
            raise AttributeError_(f"{kind} '{label.name}': tag '{tag}' names no output of its "
                                  f"outs ({', '.join(values.get('outs', ())) or 'none'})")
    if kind in RUNNABLE_KINDS:
        _check_entry_point(kind, label, values)
    return Target(label=label, kind=kind, location=location, **values)


def _check_entry_point(kind: str, label: Label, values: dict[str, Any]) -> None:
    """As in Bazel: a shell rule's `srcs` is its one script; a Python rule runs `main`, by
    default `<name>.py`, which must be one of its `srcs`."""
    srcs = values["srcs"]
    if kind.startswith("sh_"):
        if len(srcs) != 1:
            raise AttributeError_(f"{kind} '{label.name}': srcs must name exactly one script, "
                                  f"got {len(srcs)} (put other files in data)")
        return
    main = values.setdefault("main", f"{label.name}.py")
    if not any(src == main or src.lstrip(":") == main.lstrip(":") for src in srcs):
        raise AttributeError_(f"{kind} '{label.name}': main '{main}' is not in srcs; list it "
                              "there, or set main to the entry point")
