"""Layer 0: Landlock rules for one action — a prototype of a cheaper namespace sandbox.

One bwrap per action costs ~6 ms; Landlock rules applied between fork and exec cost a fraction
of a millisecond from a small launcher (docs/sandboxes.md, "Cost of the namespace sandbox").
Here are the pieces, usable from Python: the ABI probe, a ruleset made in the parent (folders
and files readable, folders writable, TCP denied, signals and abstract Unix sockets scoped to
the action) and the function a child runs before exec to drop every capability and restrict
itself.

Not wired in: `[sandbox] mode` never chooses it. From a `preexec_fn` it costs 2-3 ms (Python
in the forked child); the launcher that meets the target would plug into
sandbox.LocalSpawner._launch in place of the bwrap argv `_namespaced` builds. Against bwrap it
denies opening, listing, writing and running outside its rules, but `stat` still sees that a
hidden path exists, and it has no rule for UDP (a shared network namespace covers that).
System call numbers are x86_64's.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Callable, Sequence

_CREATE, _ADD_RULE, _RESTRICT, _CAPSET = 444, 445, 446, 126
_VERSION_FLAG = 1
_PATH_BENEATH = 1
_PR_SET_SECUREBITS, _PR_SET_NO_NEW_PRIVS = 28, 38
_SECURE_NOROOT_LOCKED = 0b101111  # root's exec gives no capability back, and that is locked
READ = 1 | 4 | 8  # EXECUTE, READ_FILE, READ_DIR
_FILE_RIGHTS = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # the rights a rule on a file may hold
ALL = (1 << 16) - 1  # every file-system right up to ABI 5
_NET_TCP = 1 | 2  # BIND_TCP, CONNECT_TCP (ABI 4)
_SCOPES = 1 | 2  # ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6)
MIN_ABI = 6
SYSTEM = ("/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin", "/opt", "/dev", "/proc")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]


@dataclass(frozen=True, slots=True)
class Rules:
    """What one action may touch: `read` (read, list, run) and `write` (everything)."""

    read: tuple[str, ...]
    write: tuple[str, ...]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _checked(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


def abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or it is disabled)."""
    return max(int(_libc().syscall(_CREATE, None, 0, _VERSION_FLAG)), 0)


def ruleset(rules: Rules) -> int:
    """A ruleset file descriptor for `rules`; the caller closes it once the child started.
    Paths that do not exist are skipped (a system folder this machine lacks)."""
    libc = _libc()
    attr = _RulesetAttr(ALL, _NET_TCP, _SCOPES)
    fd = _checked(libc.syscall(_CREATE, ctypes.byref(attr), ctypes.sizeof(attr), 0),
                  "landlock_create_ruleset")
    try:
        for paths, rights in ((rules.read, READ), (rules.write, ALL)):
            for path in paths:
                try:
                    parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    allowed = rights if os.path.isdir(path) else rights & _FILE_RIGHTS
                    rule = _PathBeneath(allowed, parent)
                    _checked(libc.syscall(_ADD_RULE, fd, _PATH_BENEATH, ctypes.byref(rule), 0),
                             f"landlock_add_rule {path}")
                finally:
                    os.close(parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def restricter(ruleset_fd: int) -> Callable[[], None]:
    """The function a child runs before exec: no capabilities (even as root), no new
    privileges, then the ruleset. Irreversible for the child and all it runs."""
    libc = _libc()

    def restrict() -> None:
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        libc.prctl(_PR_SET_SECUREBITS, _SECURE_NOROOT_LOCKED, 0, 0, 0)
        _checked(libc.syscall(_CAPSET, header, (ctypes.c_uint32 * 6)()), "capset")
        _checked(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _checked(libc.syscall(_RESTRICT, ruleset_fd, 0), "landlock_restrict_self")
    return restrict


def system_folders(candidates: Sequence[str] = SYSTEM) -> tuple[str, ...]:
    """The system folders every action may read: those of `candidates` that exist here."""
    return tuple(p for p in candidates if os.path.lexists(p))
