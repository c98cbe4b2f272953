"""exec: running one action's command hermetically — the folder and namespace sandboxes, the
shell, and the Dask executor.

May import: posbuild.errors, core, host, workspace, load, store.
"""
