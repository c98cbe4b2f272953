"""`python -m posbuild` runs the same CLI as the `posbuild` script."""

from posbuild.cli import main

main()
