"""Layer 0: whether one path lies in a folder, by its components, not by its characters.

`/ws-old` is not inside `/ws`, though it starts with it. The sandboxes (what they hide and show),
the configuration (where the store may go), the environment fingerprint (which programs a
sandbox may show) and the "not found" hint all ask this of plain, already resolved paths.
"""

from __future__ import annotations


def within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it (both absolute, neither needing resolution)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")
