"""host: small, safe primitives over the operating system.

Atomic writes, opening files without following links, the mark on folders posbuild made,
process liveness told by a flock, and the signal handling every command shares.

May import: posbuild.errors, core.
"""
