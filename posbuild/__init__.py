"""posbuild: a content-addressed, hermetic build and pipeline orchestrator.

Only the version lives here, so that `import posbuild` stays free for the CLI's start-up.
"""

__version__ = "0.1.0"
