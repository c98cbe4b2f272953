"""store: the persistent memory — the LMDB store (blobs, action cache, stat memo, build log,
generations), its write-ahead log and repair, the up-to-date state, the output tree, the remote
cache and cache archives.

May import: posbuild.errors, core, host, workspace, load.
"""
