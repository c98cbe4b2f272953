"""load: BUILD files to targets to actions, and every cache of that (the graph cache, query).

May import: posbuild.errors, core, host, workspace.
"""
