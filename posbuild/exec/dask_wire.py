"""Layer 1: the values a Dask task carries between posbuild and the worker that runs an action.

The client side (dask_executor.py, whose docstring says what travels and why) builds them, the
worker side (dask_worker.py) reads them; they are pickled by Dask, by the names of their module
and class, so both sides must run the same posbuild.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Sequence

from posbuild.core.action import Action
from posbuild.core.digest import Digest
from posbuild.core.records import RemoteRun, ResourceUsage
from posbuild.exec.spawner import Perturbation
from posbuild.host.nofollow import write_all


@dataclass(frozen=True, slots=True)
class WorkerTerms:
    """What every action of a build asks of the worker that runs it, beside the action itself."""

    tools: tuple[str, ...]  # `[env] tools`, part of every action's environment
    search_path: str  # the sandbox PATH: where commands find their programs (envfp.sandbox_path)
    # `[sandbox] mode`: each worker chooses its own isolation, as a local build does
    sandbox_mode: str
    # the client's interpreter folders and absolute tools (py_task commands name them)
    visible: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InputFile:
    """One declared input, by digest: where it goes, what it must hash to, and where its bytes
    are."""

    path: str
    digest: Digest  # BLAKE3, as the action key has it
    size: int
    executable: bool
    # its SHA-256: the worker reads `/cas/<name>` from the remote; b"": the bytes travel with the
    # task
    name: bytes = b""


@dataclass(frozen=True, slots=True)
class RemoteAction:
    """Everything a worker needs to run one action, but the input bytes and secret values."""

    action: Action
    env: tuple[tuple[str, str], ...]  # extra variables (the passed env), secrets excluded
    inputs: tuple[InputFile, ...]  # in action.inputs order
    perturbation: Perturbation | None
    terms: WorkerTerms
    desk: str = ""  # where to fetch the secret values ("" if the action declares none)
    token: str = ""
    # the remote cache's URL, where inputs with a `name` are read (no key: blobs need none)
    cas: str = ""
    cas_timeout: float = 0.0
    # the action's environment hash on the client (without test overrides): a worker whose own
    # differs reports its entries instead of running it
    env_hash: Digest = b""


@dataclass(frozen=True, slots=True)
class RemoteReply:
    """How the action ended on the worker; outputs only if the command exited 0."""

    exit_code: int
    timed_out: bool
    missing: tuple[str, ...]
    stdout: bytes = field(repr=False)
    stderr: bytes = field(repr=False)
    elapsed: float
    usage: ResourceUsage | None
    # (path, data, digest, executable)
    outputs: tuple[tuple[str, bytes, Digest, bool], ...] = field(repr=False)
    run: RemoteRun
    env_hash: Digest = b""
    # the worker's fingerprint, only when its h_E differs
    env_entries: tuple[tuple[str, str], ...] = ()
    env_error: str = ""
    # why the worker could not read the inputs from the remote cache (nothing ran)
    unfetched: str = ""
    irregular: tuple[str, ...] = ()  # outputs that exist as something else than a regular file
    why: str = ""  # what is wrong with irregular[0]


def visible_paths(tools: Sequence[str]) -> tuple[str, ...]:
    """The running interpreter's folders (py_task commands run it) and the absolute `[env]
    tools`."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
             os.path.realpath(sys.executable)]
    return tuple(dict.fromkeys([*paths, *(tool for tool in tools if tool.startswith("/"))]))


def write_files(root: str, files: Sequence[tuple[str, bytes, bool]]) -> None:
    """Write (path, bytes, executable) files below `root`, creating their folders."""
    made: set[str] = set()
    for path, data, executable in files:
        target = f"{root}/{path}"
        parent = os.path.dirname(target)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if executable else 0o644)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
