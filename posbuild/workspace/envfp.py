"""Layer 1: the environment fingerprint (§14) and its hash h_E, which every action key includes.

The fingerprint is a flat, sorted table of the facts about this machine that can change what an
action produces:

    posbuild.version         the posbuild that computes keys
    python.implementation    cpython, pypy, ...
    python.version           3.11.7
    dist.<name>              the version of every installed distribution (importlib.metadata)
    os.system, os.release    uname: Linux, 6.1.0-18-amd64
    os.kernel                uname's version string (the kernel build)
    libc                     glibc 2.36
    cpu.arch                 x86_64, aarch64
    tool.<name>              "<path> <blake3 hex>" of each executable in `[env] tools`
    cpu.model, host.name     recorded, NOT hashed

h_E is the digest of the canonical encoding of the table without the recorded-only entries, so two
machines with the same software environment get the same h_E and can share a cache, whatever
their hardware model or host name.

Listing distributions costs tens of milliseconds, far more than a no-op build may spend, so the
table is cached in `.posbuild/envfp` together with cheap stamps of everything it was derived
from (the interpreter's stat, the mtimes of the `sys.path` folders, uname, libc, posbuild's
version, and each tool's resolved path and stat). A build recomputes it only when a stamp
changed; `posbuild env` commands always recompute it.

`overrides` add, replace or, with None, remove entries after the table is computed or read from
the cache. Only tests use them, through the variable POSBUILD_TEST_FINGERPRINT (a JSON object) of
the environment the CLI passes down.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import msgpack

from posbuild import __version__
from posbuild.host.atomic import write_atomically
from posbuild.workspace.config import BASE_PATH, Config
from posbuild.core.digest import Digest, hash_canonical, hash_file
from posbuild.errors import EnvironmentDrift, WorkspaceError
from posbuild.core.layout import CONFIG_NAME, LOCK_NAME

CACHE_NAME = "envfp"
CACHE_FORMAT = 1
# hardware and identity: shown, approved, never hashed
RECORDED_ONLY = frozenset({"cpu.model", "host.name"})


def is_hashed(name: str) -> bool:
    """Whether an entry is part of h_E (everything but the hardware model and host name)."""
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


# -- computing the table ---------------------------------------------------------------------------


def fingerprint(tools: Sequence[str] = ()) -> dict[str, str]:
    """Compute the full fingerprint table now (no cache); `tools` as in `[env] tools`."""
    return _compute(resolve_tools(tools))


def _compute(resolved: Sequence[tuple[str, str]]) -> dict[str, str]:
    uname = os.uname()
    entries = {
        "posbuild.version": __version__,
        "python.implementation": sys.implementation.name,
        "python.version": _python_version(),
        "os.system": uname.sysname,
        "os.release": uname.release,
        "os.kernel": uname.version,
        "libc": _libc(),
        "cpu.arch": uname.machine,
        "cpu.model": _cpu_model(),
        "host.name": uname.nodename,
    }
    entries.update(_distributions())
    for name, path in resolved:
        entries[f"tool.{name}"] = f"{path} {hash_file(path).hex()}"
    return dict(sorted(entries.items()))


def _python_version() -> str:
    major, minor, micro, level, serial = sys.version_info
    suffix = {"alpha": "a", "beta": "b", "candidate": "rc"}.get(level, "")
    return f"{major}.{minor}.{micro}" + (f"{suffix}{serial}" if suffix else "")


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


def _distribution_folders() -> list[str]:
    """The `sys.path` entries distributions are installed in: all but the script's folder or cwd."""
    return list(sys.path if sys.flags.safe_path else sys.path[1:])


def _distributions() -> dict[str, str]:
    """`dist.<normalized name>` → version of every installed distribution; the first on the path
    wins."""
    import importlib.metadata
    import re

    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=_distribution_folders()):
        name = dist.metadata["Name"]
        if not name:
            continue
        key = "dist." + re.sub(r"[-_.]+", "-", name).lower()
        found.setdefault(key, dist.version or "")
    return found


def resolve_tools(tools: Sequence[str]) -> list[tuple[str, str]]:
    """(name, path) of each `[env] tools` entry: a bare name is looked up on the sandbox PATH."""
    resolved = []
    for tool in tools:
        if tool.startswith("/"):
            candidates = [tool]
        else:
            candidates = [f"{folder}/{tool}" for folder in BASE_PATH.split(":") if folder]
        for path in candidates:
            if os.path.isfile(path) and os.access(path, os.X_OK):
                resolved.append((tool, path))
                break
        else:
            where = "is not an executable file" if tool.startswith("/") \
                else f"is not on the sandbox PATH {BASE_PATH}"
            raise WorkspaceError(f"{CONFIG_NAME}: [env] tools: {tool!r} {where}")
    return resolved


# -- the cache -------------------------------------------------------------------------------------


def _stamps(resolved: Sequence[tuple[str, str]]) -> Digest:
    """A digest of cheap facts that change whenever the computed table could."""

    def sig(path: str) -> list[int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns]

    return hash_canonical([
        CACHE_FORMAT, __version__, sys.version, sys.implementation.name, sig(sys.executable),
        [[folder, sig(folder or ".")] for folder in _distribution_folders()],
        list(os.uname()), _libc(),
        [[name, path, sig(path)] for name, path in resolved],
    ])


def _cached(cache: Path, stamps: Digest) -> dict[str, str] | None:
    try:
        fmt, saved_stamps, entries = msgpack.unpackb(cache.read_bytes())
    except (OSError, ValueError, TypeError, msgpack.UnpackException):
        return None
    if fmt != CACHE_FORMAT or saved_stamps != stamps or not isinstance(entries, dict):
        return None
    return entries


def current(config: Config, overrides: Mapping[str, str | None] | None = None,
            fresh: bool = False) -> Fingerprint:
    """This machine's fingerprint for the workspace's `[env] tools`, with `overrides` applied.

    From `.posbuild/envfp` while its stamps hold (a few stats), else computed and saved there;
    `fresh` always computes (and refreshes the cache).
    """
    resolved = resolve_tools(config.env_tools)
    stamps = _stamps(resolved)
    cache = config.state_dir / CACHE_NAME
    entries = None if fresh else _cached(cache, stamps)
    if entries is None:
        entries = _compute(resolved)
        try:
            write_atomically(cache,
                             msgpack.packb([CACHE_FORMAT, stamps, entries], use_bin_type=True))
        except OSError:
            pass  # a read-only workspace still builds; it only recomputes next time
    return Fingerprint.of(apply_overrides(entries, overrides or {}))


def apply_overrides(entries: Mapping[str, str],
                    overrides: Mapping[str, str | None]) -> dict[str, str]:
    """`entries` with each override set (or, when None, removed)."""
    result = dict(entries)
    for name, value in overrides.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


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
    """How this environment compares with the one approved in `posbuild.lock`."""

    __slots__ = ("approved_hash", "current", "changes")
    approved_hash: str | None  # None: nothing approved
    current: Fingerprint
    changes: tuple[Change, ...]  # every differing entry, hashed or recorded-only

    @property
    def drifted(self) -> bool:
        return self.approved_hash is not None and self.approved_hash != self.current.hash.hex()

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
        return EnvironmentDrift(
            f"h_E {self.current.hash.hex()[:12]} is not the approved {self.approved_hash[:12]} in "
            f"posbuild.lock ({len(self.drift)} "
            f"entr{'y differs' if len(self.drift) == 1 else 'ies differ'}; run `posbuild env "
            "approve` to accept this environment, or pass --allow-env-drift)"
            + "".join(f"\n  {line}" for line in lines)
        )


def compare_with_approved(root: Path, now: Fingerprint, full: bool = True) -> Approval:
    """Compare with the environment approved in `root/posbuild.lock` (only read when it exists).

    With `full=False` the entries are compared only when the hashes differ (the build's fast path).
    """
    if not (root / LOCK_NAME).is_file():
        return Approval(None, now, ())
    from posbuild.workspace.lockfile import read_lock  # only now: it costs the json import
    lock = read_lock(root)
    approved = lock.approved_hash
    if approved is None:
        return Approval(None, now, ())
    if not isinstance(approved, str):
        raise WorkspaceError(f"{root / LOCK_NAME}: \"environment\".\"hash\" must be a hex string")
    if not full and approved == now.hash.hex():
        return Approval(approved, now, ())
    recorded = lock.environment.get("fingerprint")
    recorded = {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
    return Approval(approved, now, tuple(differences(recorded, now.entries)))


def approval_record(now: Fingerprint) -> dict[str, object]:
    """The "environment" section `posbuild env approve` writes into posbuild.lock."""
    return {"hash": now.hash.hex(), "fingerprint": dict(now.entries)}


# -- what the build uses ---------------------------------------------------------------------------


def environment_hash(config: Config | None = None,
                     environ: Mapping[str, str] | None = None) -> Digest:
    """h_E: of the workspace's fingerprint when `config` is given (cached), else of a fresh one
    without tools."""
    overrides = parse_overrides((environ or {}).get(TEST_VARIABLE))
    if config is None:
        return hash_of(apply_overrides(fingerprint(), overrides))
    return current(config, overrides).hash


def passed_environment(names: Sequence[str],
                       environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The caller's variables that `[env] pass` lets through to actions, in the configured order."""
    return tuple((name, environ[name]) for name in names if name in environ)


def environment_key(passed: Sequence[tuple[str, str]], env_hash: Digest | None = None) -> Digest:
    """What a saved up-to-date state is valid for: this environment (h_E) and these passed
    variables."""
    return hash_canonical([env_hash if env_hash is not None else environment_hash(), list(passed)])


def checked_environment_hash(config: Config, environ: Mapping[str, str], allow_drift: bool,
                             warn: Callable[[str], None]) -> Digest:
    """h_E for a build, after comparing it with the approved one in posbuild.lock (if any).

    Drift is ORCH-07, raised before anything runs; with `allow_drift` it is a warning instead.
    """
    now = current(config, parse_overrides(environ.get(TEST_VARIABLE)))
    approval = compare_with_approved(config.root, now, full=False)
    if approval.drifted:
        if not allow_drift:
            raise approval.error()
        warn("posbuild: warning: --allow-env-drift: building in an environment that is not the "
             "approved one "
             f"(h_E {now.hash.hex()[:12]}, approved {approval.approved_hash[:12]}):"  # type: ignore[index]
             + "".join(f"\n  {change}" for change in approval.drift))
    return now.hash
