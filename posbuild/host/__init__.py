"""host: small, safe primitives over the operating system.

Atomic writes, opening files without following links, whether a path lies in a folder, the
mark on folders posbuild made, process liveness told by a flock, and the signal handling every
command shares.

May import: posbuild.errors, core.
"""
