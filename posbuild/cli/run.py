"""`posbuild run LABEL -- ARGS`: build an executable target, then become it.

The binary (sh_binary, py_binary, or a test) is built with what it needs (its srcs, data and
deps), then started in place of posbuild (exec): in the caller's folder, with the terminal's
stdin, stdout and stderr, and its exit code is the command's. Unlike an action it is not
sandboxed: it is the user's tool, run as the user. Bazel runs it in its runfiles folder; here its
paths (script, `$(location)`s in `args`) are absolute, and POSBUILD_WORKSPACE_DIRECTORY and
BUILD_WORKSPACE_DIRECTORY name the workspace root, BUILD_WORKING_DIRECTORY the caller's folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from posbuild.cli import complete_targets, define_option, fail, interrupted, workspace_and_package
from posbuild.errors import PosbuildError, UsageError


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("label", shell_complete=complete_targets)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and errors of the build.")
@define_option
def run(label: str, args: tuple[str, ...], quiet: bool, defines: tuple[str, ...]) -> None:
    """Build LABEL (an sh_binary, py_binary or test) and run it with ARGS after `--`.

    \b
    It runs in the current folder, with the terminal's input and output; posbuild exits with its
    exit code. POSBUILD_WORKSPACE_DIRECTORY (and Bazel's BUILD_WORKSPACE_DIRECTORY) name the
    workspace root.
    """
    from posbuild.engine.reporter import choose_reporter
    from posbuild.engine.plan import BuildOptions
    from posbuild.engine.session import BuildSession, summary_error

    try:
        root, package = workspace_and_package()
        interpreter, words, env = _runnable(root, label, package, defines)
        reporter = choose_reporter(quiet, sys.stdout, sys.stderr)
        summary = BuildSession(root, reporter, os.environ).build(
            BuildOptions(patterns=(label,), cwd_package=package, defines=defines))
        failure = summary_error(summary)
        if failure is not None:
            fail(failure)
    except PosbuildError as error:
        fail(error)
    except KeyboardInterrupt as interrupt:
        interrupted(interrupt)
    argv = [*([interpreter] if interpreter else []), *words, *args]
    if not interpreter and not os.access(words[0], os.X_OK):
        argv.insert(0, "sh")  # a script without its executable bit, as sh_test runs it
    environ = {**os.environ, **dict(env), "POSBUILD_WORKSPACE_DIRECTORY": str(root),
               "BUILD_WORKSPACE_DIRECTORY": str(root), "BUILD_WORKING_DIRECTORY": os.getcwd()}
    if interpreter:  # the workspace's modules import as they do in the sandbox
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, environ)
    except OSError as error:
        fail(UsageError(f"cannot run {argv[0]}: {error.strerror or error}"))


def _runnable(root: Path, text: str, package: str,
              defines: tuple[str, ...]) -> tuple[str, list[str], tuple]:
    """(interpreter or "", words with absolute paths, env) of the target `text` names; a target
    that is not executable is a usage error that says which rules are."""
    from posbuild.core.label import PatternKind, parse_pattern
    from posbuild.core.target import RUNNABLE_KINDS
    from posbuild.load.analysis import Analyzer, expand_patterns
    from posbuild.load.loader import Loader, discover_packages
    from posbuild.workspace.config import load_config, with_defines

    pattern = parse_pattern(text, package)
    if pattern.kind is not PatternKind.SINGLE:
        raise UsageError(f"posbuild run takes one target, not the pattern '{text}'")
    config = with_defines(load_config(root), defines)
    packages, _ = discover_packages(root, config.build_file_names)
    loader = Loader(config, packages)
    (label,) = expand_patterns([pattern], packages, loader)
    kind = next(t.kind for t in loader.package(label.package).targets if t.label == label)
    if kind not in RUNNABLE_KINDS:
        raise UsageError(f"{label} is a {kind}, not an executable target: posbuild run runs "
                         "sh_binary, py_binary, sh_test and py_test targets (build it with "
                         f"`posbuild build {label}`)")
    return Analyzer(loader).runnable(label)
