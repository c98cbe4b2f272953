"""Layer 1: the environment fingerprint (§14): what each action's key knows of the software it
runs, and h_E, the digest of what a build's actions use.

An action's key covers the environment that action runs in, not everything installed beside
posbuild. The fingerprint is a flat, sorted table of entries:

    os.system, os.release    uname: Linux, 6.1.0-18-amd64            } the platform: part of
    os.kernel                uname's version string (the kernel build) } every action's
    libc, cpu.arch           glibc 2.36, x86_64                        } environment
    tool.<word>              "<path> <blake3 hex>" of a host program an action runs
    python[<path>]           "cpython 3.11.7" of a Python interpreter an action runs
    python[<path>].dist.<n>  the version of each distribution that interpreter imports from
    posbuild.version, cpu.model, host.name    recorded, NOT hashed

An action's environment is the platform, the `tool.` entries of `[env] tools` (programs every
action may run, a compiler its scripts call, say), and the entries of the programs it runs: the
command words of its command (core/commandwords.py), its `host_tools`, and for a py_task the
interpreter it runs. A program that is a Python interpreter (by name, or a script whose `#!`
line names one) brings that interpreter's distributions along: a genrule's `python3 plot.py`
depends on the matplotlib of that python3, and a `bwa mem | samtools sort` on neither. Programs
are looked up on the sandbox PATH (`sandbox_path`), where the workspace's Python comes first.

h_E of a build is the digest of the table of everything its actions use; `posbuild env approve`
approves the table of every action of the workspace, and a build is refused (ORCH-07) when an
entry its actions use differs from the approved one.

Listing an interpreter's distributions means running it (tens of milliseconds), far more than a
no-op build may spend, so each program's entries are cached in `.posbuild/envfp` together with
cheap stamps of what they were derived from (the stat of each place on the PATH the program could
be, the program's file, an interpreter's `sys.path` folders). A build recomputes a program's
entries only when one of its stamps changed; `posbuild env` commands always recompute them.

`overrides` add, replace or, with None, remove entries after the table is computed or read from
the cache. Only tests use them, through the variable POSBUILD_TEST_FINGERPRINT (a JSON object) of
the environment the CLI passes down: a `tool.<word>` entry belongs to the actions that run that
word, a `python[<path>]...` entry to those that run that interpreter, any other to every action.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import msgpack

from posbuild import __version__
from posbuild.host.atomic import write_atomically
from posbuild.host.paths import within
from posbuild.workspace.config import BASE_PATH, Config
from posbuild.core.digest import Digest, hash_canonical, hash_file
from posbuild.errors import EnvironmentDrift, WorkspaceError
from posbuild.core.layout import CONFIG_NAME, LOCK_NAME

CACHE_NAME = "envfp"
CACHE_FORMAT = 3
# shown, approved, never hashed: hardware, identity, and the posbuild that computes the keys (its
# rules carry versions of their own in every definition hash)
RECORDED_ONLY = frozenset({"cpu.model", "host.name", "posbuild.version"})
TOOL = "tool."
PYTHON = "python["
_INTERPRETER_NAME = re.compile(r"^(python|pypy)[0-9.]*$")


def is_hashed(name: str) -> bool:
    """Whether an entry is part of h_E and of keys (all but the recorded-only entries)."""
    return name not in RECORDED_ONLY


def hash_of(entries: Mapping[str, str]) -> Digest:
    """h_E of a fingerprint table."""
    return hash_canonical({name: value for name, value in entries.items() if is_hashed(name)})


class _Value:
    """Base of the small immutable values below, compared field by field.

    (A frozen, slotted dataclass would do the same, but builds its methods with `exec` when the
    module is imported — about a millisecond per class, paid by every no-op build.)
    """

    __slots__: tuple[str, ...] = ()

    def __init__(self, *values: object) -> None:
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) \
            and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Fingerprint(_Value):
    """A fingerprint table (sorted by name) and its hash."""

    __slots__ = ("entries", "hash")
    entries: dict[str, str]
    hash: Digest

    @classmethod
    def of(cls, entries: Mapping[str, str]) -> "Fingerprint":
        table = dict(sorted(entries.items()))
        return cls(table, hash_of(table))


# -- the platform ----------------------------------------------------------------------------------


def platform_entries() -> dict[str, str]:
    """The entries of this machine that every action's environment holds (and the recorded-only
    ones)."""
    uname = os.uname()
    return {
        "posbuild.version": __version__,
        "os.system": uname.sysname,
        "os.release": uname.release,
        "os.kernel": uname.version,
        "libc": _libc(),
        "cpu.arch": uname.machine,
        "cpu.model": _cpu_model(),
        "host.name": uname.nodename,
    }


def _libc() -> str:
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36", without reading any file
    except (ValueError, OSError, AttributeError):
        value = None
    if value:
        return value
    import platform

    lib, version = platform.libc_ver()
    return f"{lib} {version}".strip() or "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return " ".join(value.split())
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _is_global(name: str) -> bool:
    """Whether an entry belongs to every action (the platform), not to one program."""
    return not name.startswith((TOOL, PYTHON))


def _owner(name: str) -> str:
    """The program entry an entry belongs to: `tool.<word>`, or `python[<path>]` for each entry of
    that interpreter."""
    return name[:name.index("]") + 1] if name.startswith(PYTHON) and "]" in name else name


# -- programs --------------------------------------------------------------------------------------


def sandbox_path(config: Config) -> str:
    """The PATH actions run with: the folder of the workspace's Python first, as an activated
    virtual environment has it (so `python3` in a command is the Python py_task runs, with its
    packages and console scripts), then BASE_PATH."""
    folder = os.path.dirname(config.interpreter)
    return BASE_PATH if folder in BASE_PATH.split(":") else f"{folder}:{BASE_PATH}"


def resolve_tools(tools: Sequence[str], search_path: str = BASE_PATH) -> list[tuple[str, str]]:
    """(name, path) of each `[env] tools` entry: a bare name is looked up on the sandbox PATH; an
    entry that is not there is an error."""
    resolved = []
    for tool in tools:
        path = _find(tool, search_path)
        if path is None:
            where = "is not an executable file" if tool.startswith("/") \
                else f"is not on the sandbox PATH {search_path}"
            raise WorkspaceError(f"{CONFIG_NAME}: [env] tools: {tool!r} {where}")
        resolved.append((tool, path))
    return resolved


def _candidates(word: str, search_path: str) -> list[str]:
    if word.startswith("/"):
        return [word]
    return [f"{folder}/{word}" for folder in search_path.split(":") if folder]


def _find(word: str, search_path: str) -> str | None:
    for path in _candidates(word, search_path):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def stat_stamp(path: str) -> list[int] | None:
    """What changes when a file is replaced or written (mtime, size, inode, ctime); None when it
    is not there. Cheap stamps of what a cached finding was derived from."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns]


class _Examined(_Value):
    """What one program word contributes, and what to stat to know it still holds."""

    __slots__ = ("entries", "watched", "stamps", "files", "prefixes")
    entries: dict[str, str]
    watched: list[str]  # paths whose stat decides whether `entries` still hold
    stamps: Digest  # of those stats
    files: list[str]  # the program's own file and a script's interpreter: shown to the sandbox
    prefixes: list[str]  # the folders a Python it runs lives in: shown too


_PROBE = """\
import importlib.metadata as m, json, re, sys
paths = [p for p in sys.path if p]
dists = {}
for d in m.distributions(path=paths):
    name = d.metadata["Name"]
    if name:
        dists.setdefault(re.sub(r"[-_.]+", "-", name).lower(), d.version or "")
v = sys.version_info
level = {"alpha": "a", "beta": "b", "candidate": "rc"}.get(v.releaselevel, "")
json.dump({"version": f"{sys.implementation.name} {v.major}.{v.minor}.{v.micro}"
           + (f"{level}{v.serial}" if level else ""), "paths": paths, "dists": dists,
           "prefixes": sorted({sys.prefix, sys.exec_prefix, sys.base_prefix,
                               sys.base_exec_prefix})}, sys.stdout)
"""


def _examine(word: str, search_path: str) -> _Examined:
    """The entries of one program word: its file's digest and, for a Python, its packages."""
    watched = _candidates(word, search_path)
    path = _find(word, search_path)
    entries: dict[str, str] = {}
    files: list[str] = []
    prefixes: list[str] = []
    if path is None:
        entries[TOOL + word] = "not found"
    else:
        real = os.path.realpath(path)
        watched.append(real)
        entries[TOOL + word] = f"{path} {hash_file(real).hex()}"
        files.append(real)
        interpreter = path if _is_interpreter(path, real) else _shebang(real, search_path)
        if interpreter is not None:
            _add_interpreter(interpreter, entries, watched, prefixes)
    stamps = hash_canonical([stat_stamp(p) for p in watched])
    return _Examined(entries, watched, stamps, files, prefixes)


def _is_interpreter(path: str, real: str) -> bool:
    return bool(_INTERPRETER_NAME.match(os.path.basename(path))
                or _INTERPRETER_NAME.match(os.path.basename(real)))


def _shebang(path: str, search_path: str) -> str | None:
    """The Python a script's `#!` line runs (`#!/usr/bin/env python3` included), if any."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
        found = _find(words[0], search_path) if words else None
    else:
        found = words[0] if words else None
    if found is None or not os.path.isfile(found):
        return None
    return found if _is_interpreter(found, os.path.realpath(found)) else None


def _add_interpreter(path: str, entries: dict[str, str], watched: list[str],
                     prefixes: list[str]) -> None:
    """Run the interpreter once to list what it imports from: `python[<path>]` entries."""
    import json
    import subprocess

    # one interpreter whichever of its names (python, python3, python3.11) ran it
    head = f"{PYTHON}{os.path.dirname(path)}/{os.path.basename(os.path.realpath(path))}]"
    watched.append(os.path.join(os.path.dirname(os.path.dirname(path)), "pyvenv.cfg"))
    try:
        run = subprocess.run([path, "-I", "-c", _PROBE], capture_output=True, timeout=120,
                             env={"PATH": BASE_PATH, "LC_ALL": "C.UTF-8"}, stdin=subprocess.DEVNULL)
        found = json.loads(run.stdout) if run.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        found = None
    if not isinstance(found, dict):
        entries[head] = "unusable: it did not report its version and packages"
        return
    entries[head] = str(found["version"])
    for name, version in found["dists"].items():
        entries[f"{head}.dist.{name}"] = str(version)
    watched.extend(str(p) for p in found["paths"])
    # a py_env's prefix is a link to its content-addressed folder, which its scripts name
    found_prefixes = [str(p) for p in found["prefixes"]]
    prefixes.extend(dict.fromkeys([*found_prefixes, *map(os.path.realpath, found_prefixes)]))


# -- one build's environments ----------------------------------------------------------------------


class Environments:
    """The environment of each action of a workspace: the platform, `[env] tools`, and the entries
    of the programs the action runs.

    Each program is examined once per process and, across processes, only when the stamps saved in
    `.posbuild/envfp` changed; `fresh` examines everything again. Call `save` once the build has
    asked what it needs.
    """

    def __init__(self, search_path: str, tools: Sequence[str] = (), cache: Path | None = None,
                 overrides: Mapping[str, str | None] | None = None, fresh: bool = False) -> None:
        """`search_path`: the sandbox PATH; `tools`: `[env] tools` (each must be found there);
        `cache`: where examined programs are kept between processes (None: nowhere)."""
        self.search_path = search_path
        self._tools = tuple(tools)
        resolve_tools(self._tools, search_path)
        self._overrides = dict(overrides or {})
        self._fresh = fresh
        self._cache = cache
        self._saved: dict[str, list] | None = None
        self._changed = False
        self._platform: dict[str, str] | None = None
        self._programs: dict[str, _Examined] = {}
        self._digests: dict[tuple[str, ...], Digest] = {}

    @classmethod
    def of_workspace(cls, config: Config, overrides: Mapping[str, str | None] | None = None,
                     fresh: bool = False) -> "Environments":
        """The environments of the actions of the workspace `config` describes."""
        return cls(sandbox_path(config), config.env_tools, config.state_dir / CACHE_NAME,
                   overrides, fresh)

    def table(self, programs: Iterable[str] = ()) -> Fingerprint:
        """The entries of actions that run `programs` (besides `[env] tools`), and their hash."""
        entries = dict(self._platform_entries())
        for word in dict.fromkeys((*self._tools, *programs)):
            entries.update(self._examined(word).entries)
        heads = {_owner(name) for name in entries}
        for name, value in self._overrides.items():
            if _is_global(name) or _owner(name) in heads:
                if value is None:
                    entries.pop(name, None)
                else:
                    entries[name] = value
        return Fingerprint.of(entries)

    def digest(self, programs: tuple[str, ...]) -> Digest:
        """The environment hash of an action that runs `programs`: what its key holds."""
        digest = self._digests.get(programs)
        if digest is None:
            digest = self._digests[programs] = self.table(programs).hash
        return digest

    def pythons(self, programs: Iterable[str]) -> list[str]:
        """The Python interpreters an action that runs `programs` runs, by path."""
        return [name[len(PYTHON):-1] for name in self.table(programs).entries
                if name.startswith(PYTHON) and name.endswith("]")]

    def visible(self, programs: Iterable[str], hidden: Sequence[str] = ()) -> list[str]:
        """What the namespace sandbox must show for these programs to run: each program's file
        and the folders of the Pythons they run. A program file under one of the `hidden`
        folders (the workspace) is left hidden: a workspace file is an input, declared in
        `tools`; a Python's folders are shown wherever they are (a virtual environment in the
        workspace, a py_env)."""
        found: dict[str, None] = {}
        for word in dict.fromkeys((*self._tools, *programs)):
            examined = self._examined(word)
            found.update((path, None) for path in examined.files
                         if not any(within(path, folder) for folder in hidden))
            found.update(dict.fromkeys(examined.prefixes))
        return list(found)

    def fresh(self) -> None:
        """Examine every program again from here on, whatever the cache says."""
        self._fresh, self._saved, self._platform = True, None, None
        self._programs.clear()
        self._digests.clear()

    def save(self) -> None:
        """Keep what was examined for the next build (a read-only workspace only recomputes)."""
        if not self._changed or self._cache is None:
            return
        saved = self._load()
        try:
            write_atomically(self._cache, msgpack.packb([CACHE_FORMAT, saved], use_bin_type=True))
        except OSError:
            pass
        self._changed = False

    def _load(self) -> dict[str, list]:
        if self._saved is None:
            saved: object = None
            if not self._fresh and self._cache is not None:
                try:
                    fmt, saved = msgpack.unpackb(self._cache.read_bytes(), strict_map_key=False)
                    if fmt != CACHE_FORMAT:
                        saved = None
                except (OSError, ValueError, TypeError, msgpack.UnpackException):
                    saved = None
            self._saved = saved if isinstance(saved, dict) else {}
        return self._saved

    def _platform_entries(self) -> dict[str, str]:
        if self._platform is None:
            stamps = hash_canonical([__version__, list(os.uname()), _libc()])
            row = self._load().get("")
            if isinstance(row, (list, tuple)) and len(row) == 2 and row[0] == stamps \
                    and isinstance(row[1], dict):
                self._platform = dict(row[1])
            else:
                self._platform = platform_entries()
                self._load()[""] = [stamps, self._platform]
                self._changed = True
        return self._platform

    def _examined(self, word: str) -> _Examined:
        examined = self._programs.get(word)
        if examined is not None:
            return examined
        key = f"{word}\0{self.search_path}"
        row = self._load().get(key)
        try:
            watched, stamps, entries, files, prefixes = row  # type: ignore[misc]
            if hash_canonical([stat_stamp(p) for p in watched]) == stamps:
                examined = _Examined(dict(entries), list(watched), stamps, list(files),
                                     list(prefixes))
        except (TypeError, ValueError):  # none, or a damaged row: examined again
            pass
        if examined is None:
            examined = _examine(word, self.search_path)
            self._load()[key] = [examined.watched, examined.stamps, examined.entries,
                                 examined.files, examined.prefixes]
            self._changed = True
        self._programs[word] = examined
        return examined


def parse_overrides(raw: str | None) -> dict[str, str | None]:
    """Parse the JSON object of fingerprint entries that tests inject (string values, or null to
    remove)."""
    if not raw:
        return {}
    import json

    try:
        value = json.loads(raw)
    except ValueError as error:
        raise WorkspaceError(f"POSBUILD_TEST_FINGERPRINT is not valid JSON: {error}") from None
    if not isinstance(value, dict) \
            or not all(v is None or isinstance(v, str) for v in value.values()):
        raise WorkspaceError(
            "POSBUILD_TEST_FINGERPRINT must be a JSON object of strings (or null to remove)")
    return value


TEST_VARIABLE = "POSBUILD_TEST_FINGERPRINT"


# -- comparing with the approved environment -------------------------------------------------------


class Change(_Value):
    """One entry that differs between the approved fingerprint and this one."""

    __slots__ = ("kind", "name", "old", "new")
    kind: str  # "added", "removed" or "changed"
    name: str
    old: str | None
    new: str | None

    @property
    def hashed(self) -> bool:
        return is_hashed(self.name)

    def __str__(self) -> str:
        if self.kind == "added":
            return f"added {self.name} {self.new}"
        if self.kind == "removed":
            return f"removed {self.name} {self.old}"
        return f"changed {self.name} {self.old} -> {self.new}"


def differences(approved: Mapping[str, str], now: Mapping[str, str]) -> list[Change]:
    """Entries added, removed or changed from `approved` to `now`, sorted by name."""
    changes = []
    for name in sorted(set(approved) | set(now)):
        old, new = approved.get(name), now.get(name)
        if old == new:
            continue
        kind = "added" if old is None else "removed" if new is None else "changed"
        changes.append(Change(kind, name, old, new))
    return changes


class Approval(_Value):
    """How an environment compares with the one approved in `posbuild.lock`."""

    __slots__ = ("approved_hash", "current", "changes", "partial")
    approved_hash: str | None  # None: nothing approved
    current: Fingerprint
    changes: tuple[Change, ...]  # every differing entry, hashed or recorded-only
    partial: bool  # `current` is what some actions use, compared with that part of the approval

    @property
    def drifted(self) -> bool:
        if self.approved_hash is None:
            return False
        if self.partial:
            return bool(self.drift)
        return self.approved_hash != self.current.hash.hex()

    @property
    def drift(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.hashed)

    @property
    def notes(self) -> tuple[Change, ...]:
        """Differences in recorded-only entries (hardware): reported, never drift."""
        return tuple(c for c in self.changes if not c.hashed)

    def error(self) -> EnvironmentDrift:
        """ORCH-07, with one indented line per differing entry."""
        assert self.approved_hash is not None  # asked only of a drift, which has an approval
        lines = [str(c) for c in self.drift] \
            or ["(the approved fingerprint does not say which entries differ)"]
        count = (f"{len(self.drift)} "
                 f"entr{'y differs' if len(self.drift) == 1 else 'ies differ'}; run `posbuild env "
                 "approve` to accept this environment, or pass --allow-env-drift")
        if self.partial:
            what = ("the environment these actions run in is not the one approved in "
                    f"posbuild.lock ({count})")
        else:
            what = (f"h_E {self.current.hash.hex()[:12]} is not the approved "
                    f"{self.approved_hash[:12]} in posbuild.lock ({count})")
        return EnvironmentDrift(what + "".join(f"\n  {line}" for line in lines))


def compare_with_approved(root: Path, now: Fingerprint, partial: bool = False) -> Approval:
    """Compare with the environment approved in `root/posbuild.lock` (only read when it exists).

    `partial`: `now` is the table of some actions (a build's), compared only with the approved
    entries of the platform and of the programs those actions run; entries of other programs are
    someone else's business.
    """
    if not (root / LOCK_NAME).is_file():
        return Approval(None, now, (), partial)
    from posbuild.workspace.lockfile import read_lock  # only now: it costs the json import
    lock = read_lock(root)
    approved = lock.approved_hash
    if approved is None:
        return Approval(None, now, (), partial)
    if not isinstance(approved, str):
        raise WorkspaceError(f"{root / LOCK_NAME}: \"environment\".\"hash\" must be a hex string")
    recorded = lock.environment.get("fingerprint")
    # a hash alone approves no entry in particular
    table = {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
    if partial:
        heads = {_owner(name) for name in now.entries}
        table = {name: value for name, value in table.items()
                 if _is_global(name) or _owner(name) in heads}
    return Approval(approved, now, tuple(differences(table, now.entries)), partial)


def approval_record(now: Fingerprint) -> dict[str, object]:
    """The "environment" section `posbuild env approve` writes into posbuild.lock."""
    return {"hash": now.hash.hex(), "fingerprint": dict(now.entries)}


# -- what the build uses ---------------------------------------------------------------------------


def passed_environment(names: Sequence[str],
                       environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The caller's variables that `[env] pass` lets through to actions, in the configured order."""
    return tuple((name, environ[name]) for name in names if name in environ)


def environment_key(passed: Sequence[tuple[str, str]], env_hash: Digest) -> Digest:
    """What a saved up-to-date state is valid for: this environment (h_E of the request's actions)
    and these passed variables."""
    return hash_canonical([env_hash, list(passed)])


def environments_for(config: Config, environ: Mapping[str, str]) -> Environments:
    """The environments of the workspace's actions, with the test overrides `environ` holds."""
    return Environments.of_workspace(config, parse_overrides(environ.get(TEST_VARIABLE)))


def checked_environment(config: Config, environ: Mapping[str, str], programs: Sequence[str],
                        allow_drift: bool, warn: Callable[[str], None]
                        ) -> tuple[Environments, Digest]:
    """The environments of a build whose actions run `programs`, and its h_E, after comparing
    what they use with the approved environment in posbuild.lock (if any).

    Drift is ORCH-07, raised before anything runs; with `allow_drift` it is a warning instead.
    """
    environments = environments_for(config, environ)
    now = environments.table(programs)
    environments.save()
    approval = compare_with_approved(config.root, now, partial=True)
    if approval.drifted:
        if not allow_drift:
            raise approval.error()
        warn("posbuild: warning: --allow-env-drift: building in an environment that is not the "
             "approved one:" + "".join(f"\n  {change}" for change in approval.drift))
    return environments, now.hash
