"""`python -m posbuild` runs the same command as the `posbuild` script (the client, which builds
through the workspace's build server or in this process)."""

from posbuild.client import main

main()
