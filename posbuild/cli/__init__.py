"""Layer 0: the command line — the one place that prints, reads the environment and exits.

Subcommands live in their own modules and are imported only when invoked (start-up time is
part of every no-op build). `posbuild //pkg:target` is shorthand for `posbuild build //pkg:target`.
Every PosbuildError becomes one line `posbuild: <message>` on stderr and its documented exit
code; no user error ever shows a traceback.

May import: posbuild.errors, core, host, workspace, load, store, exec, engine.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from posbuild import __version__
from posbuild.errors import PosbuildError

if TYPE_CHECKING:
    from posbuild.engine.session import Vouch

# Set by the build server (server.py) around a build it runs: what it knows of the workspace.
server_vouch: Vouch | None = None

COMMANDS = {
    "build": ("posbuild.cli.build", "Build targets (the default command)."),
    "cache": ("posbuild.cli.cache",
              "Export the cache to one archive file, or import one (for CI)."),
    "clean": ("posbuild.cli.admin", "Remove outputs; with --all, the store too."),
    "env": ("posbuild.cli.env",
            "Show, approve or check the environment fingerprint h_E (ORCH-07)."),
    "log": ("posbuild.cli.log",
            "Show a build's execution records (table, JSON lines, Chrome trace)."),
    "explain": ("posbuild.cli.explain", "Say why an action last executed or was a cache hit."),
    "run": ("posbuild.cli.run", "Build an sh_binary or py_binary and run it: run LABEL -- ARGS."),
    "rollback": ("posbuild.cli.admin", "Restore posbuild-out/ to the last fully successful build."),
    "shutdown": ("posbuild.cli.admin",
                 "Stop the workspace's build server (the next build starts a new one)."),
    "fsck": ("posbuild.cli.fsck",
             "Check the store and posbuild-out/ for corruption and partial state."),
    "gc": ("posbuild.cli.gc", "Evict least recently used cache entries no kept generation needs."),
    "init": ("posbuild.cli.init",
             "Make this folder a workspace: posbuild.toml, a sample BUILD, .gitignore lines."),
    "lock": ("posbuild.cli.lock", "Pin the digests of the sources of PATTERNs in posbuild.lock."),
    "query": ("posbuild.cli.query",
              "Query the target graph: deps, rdeps, somepath, kind, filter, tests, ..."),
    "test": ("posbuild.cli.test", "Build and run the tests (sh_test, py_test) of PATTERNs."),
    "verify": ("posbuild.cli.verify",
               "Run actions twice in perturbed sandboxes and byte-compare (ORCH-04)."),
    "watch": ("posbuild.cli.watch",
              "Build, then rebuild whenever a file the targets depend on changes."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return getattr(module, name.replace("-", "_"))

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        """A pattern first means `build` (main() says so before parsing; a completion parses the
        words as typed)."""
        if args and args[0] not in COMMANDS and _completion().is_pattern(args[0]):
            return "build", self.get_command(ctx, "build"), args
        return super().resolve_command(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        return _completion().group_words(self, ctx, incomplete, COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="posbuild")
def cli() -> None:
    """posbuild: a content-addressed, hermetic build and pipeline orchestrator.

    \b
    Examples:
      posbuild build //...          build every target of the workspace
      posbuild //pkg:target         shorthand for `posbuild build //pkg:target`
      posbuild clean --all          remove outputs and the store
    """


# Options that mean the same in every command that builds (build, watch, verify).
jobs_option = click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                           help="Run at most N actions at once (default: [build] jobs, or the "
                           "number of CPUs).")
keep_going_option = click.option("-k", "--keep-going", is_flag=True,
                                 help="After a failure, still build every independent branch.")
allow_env_drift_option = click.option(
    "--allow-env-drift", is_flag=True,
    help="Build even if the environment hash differs from the one approved in posbuild.lock "
    "(warns).")


def _defines(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
             ) -> tuple[str, ...]:
    """Refuse a malformed `--define` as click refuses any bad option value (exit 2)."""
    from posbuild.workspace.config import parse_define

    for text in value:
        try:
            parse_define(text)
        except PosbuildError as error:
            raise click.BadParameter(error.detail.removeprefix("--define ")) from None
    return value


# Every command that loads BUILD files takes it, so all of them see the same graph.
define_option = click.option(
    "--define", "defines", metavar="KEY=VALUE", multiple=True, callback=_defines,
    help="Set what config(\"KEY\") returns in BUILD files, over [vars] of posbuild.toml "
    "(repeatable).")

def complete_targets(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Completes target labels (complete.py, imported only when the shell asks)."""
    return _completion().complete_targets(ctx, param, incomplete)


def _completion() -> Any:
    """cli/complete.py, imported like a command's module: only when the shell asks."""
    return importlib.import_module("posbuild.cli.complete")


def fail(error: PosbuildError) -> NoReturn:
    """Print a user error as one line and exit with its code."""
    click.echo(f"posbuild: {error.render()}", err=True)
    sys.exit(error.exit_code)


def interrupted(error: KeyboardInterrupt) -> NoReturn:
    """Stop on SIGINT, SIGTERM or SIGHUP (interrupt.py): one line, exit 128+N."""
    from posbuild.host.interrupt import Interrupted, exiting

    if not isinstance(error, Interrupted):  # a KeyboardInterrupt raised without a signal handler
        error = Interrupted()
    click.echo(error.line(), err=True)
    exiting()
    sys.exit(error.exit_code)


def workspace_and_package() -> tuple[Path, str]:
    """The workspace root above the current folder, and the package path of the current folder."""
    from posbuild.workspace.config import find_workspace

    cwd = Path.cwd()
    root = find_workspace(cwd)
    rel = cwd.relative_to(root).as_posix()
    return root, "" if rel == "." else rel


def _with_default_command(args: list[str]) -> list[str]:
    """Insert `build` when the first word is a pattern, not a command or a group option."""
    if not args or args[0] in COMMANDS or args[0] in ("-h", "--help", "--version"):
        return args
    if args[0].startswith("-") or args[0].startswith("//") or args[0].startswith(":") \
            or "/" in args[0]:
        return ["build", *args]
    return args


def main(args: list[str] | None = None) -> Any:
    """Entry point of the `posbuild` script."""
    argv = _with_default_command(list(sys.argv[1:] if args is None else args))
    if "_POSBUILD_COMPLETE" in os.environ:  # the shell asks for completions (complete.py)
        _completion().register()
    from posbuild.host.interrupt import handle_signals

    handle_signals()
    try:
        code = cli.main(argv, prog_name="posbuild", standalone_mode=False)
    except PosbuildError as error:
        fail(error)
    except click.UsageError as error:
        if not argv and error.ctx is not None:  # bare `posbuild`: the help, as click shows it
            click.echo(error.ctx.get_help(), err=True)
            sys.exit(2)
        command = error.ctx.command_path if error.ctx else "posbuild"
        click.echo(f"posbuild: {error.format_message()} (see `{command} --help`)", err=True)
        sys.exit(2)
    except click.Abort as error:  # click's form of a KeyboardInterrupt it caught
        cause = error.__cause__ or error.__context__
        interrupted(cause if isinstance(cause, KeyboardInterrupt) else KeyboardInterrupt())
    except (OSError, MemoryError, RecursionError) as error:
        fail(environment_failure(error))
    except Exception as error:
        if type(error).__module__ != "lmdb":
            raise
        from posbuild.store.lmdbstore import store_failure

        fail(store_failure(None, error))
    sys.exit(code or 0)


def environment_failure(error: BaseException) -> PosbuildError:
    """The one line for a failure of the machine rather than of the input: a full disk, a
    read-only folder, a file where a folder belongs, no memory left. The store's transactions and
    posbuild's temp + rename writes leave the state as it was before the command."""
    import errno

    if isinstance(error, MemoryError):
        return PosbuildError("out of memory (a `ulimit -v` limit?)")
    if isinstance(error, RecursionError):
        return PosbuildError("input nested too deeply to process")
    assert isinstance(error, OSError)
    name = f" {error.filename}" if error.filename is not None else ""
    if error.errno in (errno.EEXIST, errno.ENOTDIR) and name:
        return PosbuildError(
            f"cannot create{name}: a file is in the way where posbuild needs a folder")
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return PosbuildError(f"no space left on the device{' for' + name if name else ''} "
                             f"({error.strerror}); nothing half-written was kept")
    return PosbuildError(f"cannot use{name or ' a file'}: {error.strerror or error}")
