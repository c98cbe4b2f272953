"""Layer 0: `posbuild.lock` — pinned source digests and the approved environment, in one file.

The file is JSON (sorted keys, two-space indent, trailing newline) so that it diffs well in review
and needs no writer beyond the standard library:

    {
      "format": 1,
      "sources": {"data/raw.csv": "<64 hex digest>", ...},
      "environment": {"hash": "<64 hex h_E>", "fingerprint": {...}}
    }

`posbuild lock` fills "sources" and `posbuild env approve` fills "environment"; each leaves the
other section as it was. A missing file is an empty lock; a malformed one is a clear error naming
the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posbuild.host.atomic import write_atomically
from posbuild.errors import WorkspaceError
from posbuild.core.layout import LOCK_NAME

LOCK_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Lock:
    """The parsed lock file: pinned sources (path → hex digest) and the approved environment."""

    sources: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def approved_hash(self) -> str | None:
        return self.environment.get("hash")


def read_lock(root: Path) -> Lock:
    """The workspace's lock, or an empty one when there is no `posbuild.lock`."""
    path = root / LOCK_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Lock()
    except (OSError, ValueError) as error:
        raise WorkspaceError(f"{path}: not a valid lock file: {error}") from None
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT:
        raise WorkspaceError(
            f"{path}: unknown lock format "
            f"{data.get('format') if isinstance(data, dict) else data!r}")
    sources, environment = data.get("sources", {}), data.get("environment", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise WorkspaceError(f"{path}: \"sources\" must map paths to hex digests")
    if not isinstance(environment, dict):
        raise WorkspaceError(f"{path}: \"environment\" must be an object")
    return Lock(dict(sources), dict(environment))


def write_lock(root: Path, lock: Lock) -> Path:
    """Write the lock file atomically; returns its path."""
    path = root / LOCK_NAME
    payload = {"format": LOCK_FORMAT, "sources": dict(sorted(lock.sources.items())),
               "environment": lock.environment}
    write_atomically(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    return path
