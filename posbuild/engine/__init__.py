"""engine: one build — the up-to-date check, the scheduler, the rebuilder, the build itself,
verify, watch, fsck, and the reporter that tells the user.

May import: posbuild.errors, core, host, workspace, load, store, exec.
"""
