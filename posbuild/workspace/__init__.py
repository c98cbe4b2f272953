"""workspace: what a workspace declares and approves — posbuild.toml, posbuild.lock, the
environment fingerprint, secrets and roles.

May import: posbuild.errors, core, host.
"""
