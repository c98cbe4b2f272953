"""`posbuild build`: parse options, pick a reporter, run the build, map the result to an exit
code."""

from __future__ import annotations

import gc
import os
import sys

import click

from posbuild.cli import (allow_env_drift_option, complete_targets, define_option, fail,
                          interrupted, jobs_option, keep_going_option, workspace_and_package)
from posbuild.errors import PosbuildError


def _executor(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """`--executor`: `local`, or a Dask scheduler as dask://HOST:PORT (tcp:// and tls:// also
    work)."""
    if value is None or value == "local":
        return value or ""
    from posbuild.exec.dask_cluster import scheduler_address
    from posbuild.errors import UsageError

    if not value.startswith(("dask://", "tcp://", "tls://")):
        raise click.BadParameter(f"expected 'local' or dask://HOST:PORT, got {value!r}")
    try:
        scheduler_address(value)
    except UsageError as error:
        raise click.BadParameter(error.detail) from None
    return value


@click.command()
@click.argument("patterns", nargs=-1, shell_complete=complete_targets)
@jobs_option
@keep_going_option
@click.option("-n", "--dry-run", is_flag=True,
              help="List the actions that would execute; run and write nothing.")
@click.option("--verify", is_flag=True,
              help="Re-execute actions that have a cached result and fail with ORCH-04 if the "
              "bytes differ.")
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and errors.")
@click.option("--rerun", "rerun", metavar="PATTERN", multiple=True,
              help="Execute the actions PATTERN names even if their result is cached (repeatable); "
                   "dependents re-run only if the outputs change.")
@click.option("--explain", is_flag=True,
              help="Say in one line why each executed action ran (with -n: would run).")
@allow_env_drift_option
@define_option
@click.option("--remote-upload", is_flag=True,
              help="Upload executed results to [cache] remote, signed with the secret "
              "POSBUILD_CACHE_KEY "
                   "(the role must allow uploads).")
@click.option("--executor", metavar="local|dask://HOST:PORT", default=None, callback=_executor,
              help="Where actions that miss the cache run: here (local, the default) or on the "
              "Dask cluster "
                   "whose scheduler listens at HOST:PORT (default: [executor] in posbuild.toml).")
@click.option("--keep-sandbox", is_flag=True,
              help="Keep the sandbox of a failed action and print how to run its command "
              "again there.")
@click.option("--no-server", is_flag=True,
              help="Build in this process, not through the workspace's build server (also: "
              "POSBUILD_NO_SERVER=1, or [build] server = false).")
def build(patterns: tuple[str, ...], jobs: int | None, keep_going: bool, dry_run: bool,
          verify: bool, quiet: bool, rerun: tuple[str, ...], explain: bool,
          allow_env_drift: bool, remote_upload: bool, executor: str, keep_sandbox: bool,
          no_server: bool, defines: tuple[str, ...]) -> None:
    """Build the targets matched by PATTERNS (default: //...).

    \b
    Patterns: //pkg:name, :name (in the current package), //pkg:all, //pkg/..., //...
    Exit codes: 0 ok, 1 an action failed, 2 usage, 3 bad BUILD file or label, 11-17 ORCH-01..07
    (17: the environment hash is not the one approved by `posbuild env approve`).
    """
    from posbuild import cli
    from posbuild.engine.plan import BuildOptions
    from posbuild.engine.reporter import choose_reporter
    from posbuild.engine.session import BuildSession, summary_error

    # A build of 10,000 actions allocates hundreds of thousands of objects that live until the
    # process exits, and the cyclic collector would walk them again and again (~15% of a
    # one-leaf rebuild) to free next to nothing: a build makes almost no reference cycles.
    gc.disable()
    try:
        root, package = workspace_and_package()
        options = BuildOptions(patterns=patterns or ("//...",), jobs=jobs or 0,
                               keep_going=keep_going,
                               dry_run=dry_run, verify=verify, explain=explain, cwd_package=package,
                               allow_env_drift=allow_env_drift, remote_upload=remote_upload,
                                 executor=executor, rerun=rerun, keep_sandbox=keep_sandbox,
                                 defines=defines)
        summary = BuildSession(root, choose_reporter(quiet, sys.stdout, sys.stderr), os.environ,
                               vouch=cli.server_vouch).build(options)
    except PosbuildError as error:
        fail(error)
    except KeyboardInterrupt as interrupt:
        interrupted(interrupt)
    failure = summary_error(summary)
    if failure is not None:
        fail(failure)

