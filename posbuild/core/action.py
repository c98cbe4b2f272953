"""Layer 2: the action — one command with its exact inputs, outputs and declarations — as a value.

Analysis (analysis.py) makes actions; the graph cache stores them; the key, the sandbox, the
up-to-date check, the build log and the executors read them. It is a value of its own, below all
of them, so that none of those needs the analyser to know what an action is.

Paths inside an action are workspace-relative, exactly as in the sandbox: a source file is
`pkg/file`, a generated file `posbuild-out/pkg/file`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Sequence

from posbuild.core.digest import Digest
from posbuild.core.label import package_of
from posbuild.core.layout import NONDETERMINISTIC_OUTPUT_TAG, OUT_DIR

if TYPE_CHECKING:
    from posbuild.core.target import Pairs

# bump when the meaning of an Action's fields changes (2: commands run under strict bash)
ACTION_SCHEMA = 2


class Action(NamedTuple):
    """One unit of execution: a command, its exact input and output files, and its declarations.

    A NamedTuple rather than a frozen dataclass: a build of 10,000 actions rebuilds 10,000 of
    these from the graph cache, and a tuple is built three times faster. It is just as immutable.
    `sources` is the subset of `inputs` that are source files, precomputed for the up-to-date check.
    """

    label: str
    kind: str
    command: str
    inputs: tuple[str, ...]
    tools: tuple[str, ...]
    outputs: tuple[str, ...]
    env: Pairs
    versions: Pairs
    timeout: int
    tags: tuple[str, ...]
    def_hash: Digest
    deps: tuple[int, ...]
    sources: tuple[str, ...]
    resources: tuple[int, int, int] = (1, 0, 0)  # declared (cpu, mem_mb, io), DESIGN §10
    message: str = ""
    secrets: tuple[str, ...] = ()  # names of secrets (§16) given to the command; never their values
    allow_secret_in_output: bool = False
    # the host programs it runs (command words, `host_tools`, a py_task's interpreter): their
    # fingerprint is its environment (envfp.py), part of its key
    programs: tuple[str, ...] = ()
    out_dirs: tuple[str, ...] = ()  # the outputs that are folders (`out_dirs`), not files


class PyEnvSpec(NamedTuple):
    """A py_env the request needs: a virtual environment made from a requirements file, which
    py_tasks run (engine/pyenvs.py makes it before the actions run)."""

    label: str
    requirements: str  # workspace-relative source file
    python: str  # the interpreter it is made from: an absolute path or a name on the sandbox PATH
    folder: str  # absolute: where the environment is (a link to its content-addressed folder)
    srcs: tuple[str, ...] = ()  # source files the requirements name (wheels, constraints)

    @property
    def interpreter(self) -> str:
        return f"{self.folder}/bin/python"


@dataclass(frozen=True, slots=True)
class ActionGraph:
    """The actions a request needs, dependencies first, and the files each requested target
    names."""

    actions: tuple[Action, ...]
    requested: tuple[str, ...]
    py_envs: tuple[PyEnvSpec, ...] = ()  # the environments its py_tasks run, by label
    # the graph cache entry it was read from
    raw: bytes = field(default=b"", repr=False, compare=False)


PIN_TAG = "pin:"  # a tag `pin:<path>=<digest>` pins one of the action's source inputs (pins.py)


class GraphFacts(NamedTuple):
    """What the checks before a build need to know of a graph's actions, without the actions.

    Kept beside the actions in the graph cache, so that a build which turns out to be a no-op can
    run those checks without decoding ten thousand actions (session.py).
    """

    # shadows tuple.count; the field names are part of the graph cache's format (graphcache.py)
    count: int  # type: ignore[assignment]
    resources: tuple[tuple[int, int, int], ...]  # every distinct (cpu, mem_mb, io) request, sorted
    pinned: bool  # some action carries a `pin:` tag
    secrets: bool  # some action is given secrets
    programs: tuple[str, ...] = ()  # every host program some action runs, sorted
    # the py_envs its actions run, as PyEnvSpec fields (the cache stores plain tuples)
    py_envs: tuple[tuple[object, ...], ...] = ()

    def environments(self) -> tuple[PyEnvSpec, ...]:
        return tuple(PyEnvSpec(*fields) for fields in self.py_envs)  # type: ignore[arg-type]


def facts_of(actions: Sequence[Action], py_envs: Sequence[PyEnvSpec] = ()) -> GraphFacts:
    return GraphFacts(
        count=len(actions),
        resources=tuple(sorted({a.resources for a in actions})),
        pinned=any(tag.startswith(PIN_TAG) for a in actions for tag in a.tags),
        secrets=any(a.secrets for a in actions),
        programs=tuple(sorted({p for a in actions for p in a.programs})),
        py_envs=tuple(tuple(spec) for spec in py_envs),
    )


def is_generated(path: str) -> bool:
    """Whether a workspace-relative input path is another action's output."""
    return path.startswith(OUT_DIR + "/")


def may_differ(action: Action) -> frozenset[str]:
    """The outputs that `tags = ["nondeterministic-output:NAME"]` exempts from verify's byte
    comparison (a log file with timings, say), as workspace-relative paths."""
    package = package_of(action.label)
    return frozenset(out_path(package, tag[len(NONDETERMINISTIC_OUTPUT_TAG):])
                     for tag in action.tags if tag.startswith(NONDETERMINISTIC_OUTPUT_TAG))


def out_path(package: str, name: str) -> str:
    return f"{OUT_DIR}/{package}/{name}" if package else f"{OUT_DIR}/{name}"


def src_path(package: str, name: str) -> str:
    return f"{package}/{name}" if package else name
