"""Layer 4: the environment hash h_E that every action key includes (§14).

Two machines with the same software environment get the same h_E and can share a cache; a
change of interpreter, operating system or architecture changes every key. The hardware model is
deliberately not part of it.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

from posbuild import __version__
from posbuild.digest import Digest, hash_canonical


def fingerprint() -> dict[str, str]:
    """The facts about this machine that can change what an action produces."""
    uname = os.uname()
    return {
        "posbuild": __version__,
        "python": f"{sys.implementation.name} {'.'.join(map(str, sys.version_info[:3]))}",
        "os": uname.sysname,
        "machine": uname.machine,
    }


def environment_hash() -> Digest:
    return hash_canonical(fingerprint())


def passed_environment(names: Sequence[str], environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The caller's variables that `[env] pass` lets through to actions, in the configured order."""
    return tuple((name, environ[name]) for name in names if name in environ)


def environment_key(passed: Sequence[tuple[str, str]]) -> Digest:
    """What a saved up-to-date state is valid for: this environment and these passed variables."""
    return hash_canonical([environment_hash(), list(passed)])
