"""Layer 2: turn loaded Targets into Actions — resolved inputs, expanded commands, a definition
hash.

Analysis answers "what exactly will run": every label in `srcs`/`tools` resolved to files (a
source file, another rule's outputs, a filegroup's files), every `$(...)` of a genrule's `cmd`
replaced by sandbox-relative paths, and the static part of the action key hashed once (`def_hash`),
so that a rebuild only has to mix in input digests. The result is cached by graphcache.py.

Version requirements (`requires`) are checked here, before anything runs: a target may require
versions only of targets it depends on (through `srcs`/`tools`, directly or transitively), and
each required key must be declared with the required value in that target's `version`, else
ORCH-02. Because a checked graph is what the graph cache keeps, and any BUILD change invalidates
it, a cached graph has always passed this check.

Paths inside an action are workspace-relative, exactly as in the sandbox: a source file is
`pkg/file`, a generated file `posbuild-out/pkg/file`.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from posbuild.core.action import (ACTION_SCHEMA, Action, ActionGraph, PyEnvSpec, is_generated,
                                  out_path, src_path)
from posbuild.core.commandwords import programs_of
from posbuild.core.digest import hash_canonical
from posbuild.errors import BuildFileError, CycleError, SourceLocation, VersionMismatch
from posbuild.load.graph import toposort
from posbuild.load.loader import package_hint
from posbuild.core.label import Label, PatternKind, TargetPattern, did_you_mean, parse_label
from posbuild.core.layout import NONDETERMINISTIC_OUTPUT_TAG, OUT_DIR, PY_ENVS, STATE_DIR
from posbuild.core.words import quantity

if TYPE_CHECKING:  # loading BUILD files is only needed when the graph cache misses
    from posbuild.load.loader import Loader
    from posbuild.load.pyimports import ImportScanner, Scan
    from posbuild.core.target import Pairs, Target
    from posbuild.core.visibility import PackageGroup

# bump when loading or analysis changes what graphs it makes or accepts: cached graphs are made
# again
CHECKS = 7
# (3: a relative load() in a .bzl file is relative to that file; ownership stamps hidden folders;
# 4: allow_secret_in_output is part of def_hash; 5: the programs an action runs; 6: visibility,
# tags = ["manual"], a target named `all`, source files as patterns, Bazel's $(@D); 7: tests and
# binaries)
KIND_VERSIONS = {"genrule": 1, "py_task": 1, "sh_test": 1, "py_test": 1}


MANUAL = "manual"


def expand_patterns(patterns: Sequence[TargetPattern], packages: Sequence[str],
                    loader: Loader) -> list[Label]:
    """The rule targets selected by the patterns, in sorted order; an empty match is an error.

    As in Bazel, the wildcards (`//...`, `:all`) skip targets tagged `manual`, which build only
    when named or needed; `:all` names the target `all` when the package has one; and a label
    naming a source file selects nothing once the file is found to exist.
    """
    selected: set[Label] = set()
    for pattern in patterns:
        if pattern.kind is PatternKind.SINGLE:
            assert pattern.label is not None
            if not pattern.label.package and "" not in packages:
                raise BuildFileError(f"no such target '{pattern.label}': the workspace root has no "
                                     "BUILD file"
                                     + _package_hint(pattern.label, packages))
            selected.update(_resolve_single(pattern.label, loader, packages))
            continue
        if pattern.package and pattern.package not in packages and pattern.kind is PatternKind.ALL:
            raise BuildFileError(
                f"no such package '//{pattern.package}'" + package_hint(pattern.package, packages))
        if pattern.kind is PatternKind.ALL:
            named = pattern.named_target(loader.package(pattern.package).by_name)
            if named is not None:
                selected.add(named)
                continue
        every = [t for p in packages if pattern.covers_package(p)
                 for t in loader.package(p).targets]
        found = [t.label for t in every if MANUAL not in t.tags]
        if not found:
            tagged = f"{quantity(len(every), 'target')} {'is' if len(every) == 1 else 'are'}"
            manual = f": its {tagged} tagged manual; name one to build it ({every[0].label})" \
                if every else ""
            raise BuildFileError(f"pattern '{pattern}' matches no targets{manual}")
        selected.update(found)
    return sorted(selected)


def _resolve_single(label: Label, loader: Loader, packages: Sequence[str]) -> tuple[Label, ...]:
    """The rule a label names (itself, or the rule making that output); none for an existing
    source file of the package, which, as in Bazel, is built by being there."""
    package = loader.package(label.package)
    names = {t.label.name for t in package.targets}
    if label.name in names:
        return (label,)
    producer = package.by_output.get(label.name)
    if producer is not None:
        return (producer.label,)
    path = src_path(label.package, label.name)
    if loader.root.joinpath(path).is_file() \
            and not (not label.package and path.split("/", 1)[0] in (OUT_DIR, STATE_DIR)):
        inner = _subpackage_of(label, packages)
        if inner:
            raise BuildFileError(f"no such target '{label}': {path} belongs to the package "
                                 f"//{inner}; name it //{inner}:{path[len(inner) + 1:]}")
        return ()
    raise BuildFileError(f"no such target '{label}'" + (_package_hint(label, packages)
                                                         or did_you_mean(label.name, names)))


def _subpackage_of(label: Label, packages: Sequence[str]) -> str:
    """The package below the label's own that its file lies in (`//a:b/c.txt` while `a/b` has
    a BUILD file), else ""."""
    folder = src_path(label.package, label.name).rpartition("/")[0]
    while folder != label.package and folder:
        if folder in packages:
            return folder
        folder = folder.rpartition("/")[0]
    return ""


def _package_hint(label: Label, packages: Sequence[str]) -> str:
    """`posbuild build p/q` reads as the target `p/q` of the current package; if `p/q` is a
    package, say how to name its targets."""
    folder = src_path(label.package, label.name)
    return f" (did you mean '//{folder}:all'?)" if folder in packages else ""


class Analyzer:
    """Resolves references between targets and produces the ActionGraph for a set of roots."""

    def __init__(self, loader: Loader, testing: bool = False) -> None:
        self._loader = loader
        # `posbuild test`: the tests among the roots run (are actions); else a test, like a
        # binary, is only the files it needs, built
        self._testing = testing
        self._files: dict[str, tuple[str, ...]] = {}
        self._targets: dict[str, Target] = {}
        self._refs: dict[str, list[_Ref]] = {}
        self._scanner: ImportScanner | None = None
        self._py_envs: dict[str, PyEnvSpec] = {}  # the py_envs the actions run, by label
        # folder (workspace-relative) -> the names of the files in it, listed when first asked
        self._listed: dict[str, frozenset[str]] = {}
        # Python files scanned for imports: the graph cache stamps them
        self.files_read: set[str] = set()

    def analyze(self, roots: Sequence[Label]) -> ActionGraph:
        from posbuild.core.target import RUNNABLE_KINDS, TEST_KINDS

        try:
            order = toposort([str(r) for r in roots], self._edges)
        except CycleError as error:
            raise self._located(error) from None
        for name in order:
            if self._targets[name].requires:
                self._check_requires(self._targets[name])
        files: dict[str, tuple[str, ...]] = self._files
        producer: dict[str, int] = {}
        actions: list[Action] = []
        # `posbuild test`: the tests among the roots run; other runnable targets are built
        tests = {str(r) for r in roots if self._testing
                 and self._targets[str(r)].kind in TEST_KINDS}
        for name in order:
            target = self._targets[name]
            if target.kind == "filegroup":
                files[name] = self._files_of(name, files, "srcs")
                continue
            if target.kind in RUNNABLE_KINDS and name not in tests:
                files[name] = tuple(dict.fromkeys(
                    (*self._files_of(name, files, "srcs"), *self._files_of(name, files, "tools"))))
                continue
            if target.kind == "py_env":  # made before the actions run, by engine/pyenvs.py
                files[name] = ()
                self._py_env_spec(target)
                continue
            if target.kind == "py_task":
                action = self._py_task(target, files, producer)
            elif target.kind in TEST_KINDS:
                action = self._test(target, files, producer)
            else:
                action = self._genrule(target, files, producer)
            files[name] = action.outputs
            for out in action.outputs:
                producer[out] = len(actions)
            actions.append(action)
        requested = tuple(sorted({f for r in roots for f in files[str(r)]}))
        return ActionGraph(tuple(actions), requested,
                           tuple(spec for _, spec in sorted(self._py_envs.items())))

    def _located(self, error: CycleError) -> CycleError:
        """The cycle with the BUILD line of each target on it."""
        def where(name: str) -> str:
            location = self._targets[name].location
            return f"{name} ({location})" if location else name

        cycle = error.cycle
        return CycleError(" -> ".join([*map(where, cycle[:-1]), cycle[-1]]), cycle)

    def _target(self, label: Label) -> Target:
        key = str(label)
        if key not in self._targets:
            package = self._loader.package(label.package)
            for target in package.targets:
                self._targets.setdefault(str(target.label), target)
        return self._targets[key]

    def _edges(self, name: str) -> list[str]:
        """Rule targets that `name` depends on; also records how each attribute entry resolved."""
        if name not in self._refs:
            from posbuild.core.target import RUNNABLE_KINDS

            target = self._target(_parse(name))
            self._refs[name] = [
                self._resolve(target, attr, text) for attr in ("srcs", "tools")
                for text in getattr(target, attr)
            ]
            if target.kind == "py_env":  # its srcs were resolved above
                self._refs[name].append(
                    self._resolve(target, "requirements", target.requirements))
            if target.kind == "py_task":
                self._refs[name].extend(self._py_code_refs(target))
            if target.kind in RUNNABLE_KINDS:  # data are read like srcs, deps run like tools
                self._refs[name].extend(self._resolve(target, "srcs", text)
                                        for text in target.data)
                if target.kind.startswith("py_"):
                    self._refs[name].extend(self._py_code_refs(replace(target,
                                                                       script=target.main)))
                else:
                    self._refs[name].extend(self._resolve(target, "tools", text)
                                            for text in target.deps)
        return [str(ref.target) for ref in self._refs[name] if ref.target is not None]

    def _resolve(self, target: Target, attr: str, text: str) -> _Ref:
        """What one srcs/tools entry names: a rule, one output of a rule, or a source file."""
        where = f"{target.label}: {attr} entry '{text}'"
        try:
            label = parse_label(text, target.label.package)
        except BuildFileError as error:
            raise BuildFileError(f"{where}: {error.detail}", target.location) from None
        try:
            package = self._loader.package(label.package)
        except BuildFileError as error:
            raise BuildFileError(f"{where}: {error.detail}", target.location) from None
        key = str(label)
        rule = package.by_name.get(label.name)
        if rule is not None:
            self._check_visible(target, where, rule.label, rule.visibility, rule.location)
            return _Ref(attr, key, rule.label, None)
        producer = package.by_output.get(label.name)
        if producer is not None:  # an output is as visible as the rule that makes it
            self._check_visible(target, where, label, producer.visibility, producer.location)
            return _Ref(attr, key, producer.label, out_path(label.package, label.name))
        path = src_path(label.package, label.name)
        if not label.package and label.name.split("/", 1)[0] in (OUT_DIR, STATE_DIR):
            raise BuildFileError(f"{where}: {_not_a_source(label.name)}", target.location)
        if not self._is_file(path):
            names = [t.label.name for t in package.targets]
            raise BuildFileError(
                f"{where}: no such target or source file '{label}'" + did_you_mean(
                    label.name, names),
                target.location,
            )
        if label.package != target.label.package and label.name not in package.exports:
            raise BuildFileError(
                f"{where}: '{label}' is a source file of another package; "
                f"add exports_files([\"{label.name}\"]) to {package.build_file}",
                target.location,
            )
        if label.name in package.export_visibility:
            self._check_visible(target, where, label, package.export_visibility[label.name],
                                SourceLocation(package.build_file, 0))
        return _Ref(attr, key, None, path)

    def _is_file(self, path: str) -> bool:
        """Whether workspace-relative `path` is a file (or a link to one), as `Path.is_file`
        says, from one listing of its folder: a package's sources are looked up by the
        thousand, and a listing costs less than a `stat()` of each."""
        folder, _, name = path.rpartition("/")
        names = self._listed.get(folder)
        if names is None:
            try:
                with os.scandir(f"{self._loader.root}/{folder}") as listing:
                    names = frozenset(entry.name for entry in listing if _lists_a_file(entry))
            except OSError:
                names = frozenset()
            self._listed[folder] = names
        return name in names

    def _check_visible(self, consumer: Target, where: str, used: Label,
                       visibility: Sequence[str], declared: SourceLocation | None) -> None:
        """Bazel's visibility check: `consumer` may use `used` only if `used` is visible to the
        consumer's package (core/visibility.py), else a BUILD error naming both, as Bazel
        words it."""
        if used.package == consumer.label.package:  # most edges: decided before any import
            return
        from posbuild.core.visibility import is_visible

        if is_visible(visibility, used.package, consumer.label.package,
                      lambda group: self._package_group(group, used, declared)):
            return
        at = "" if declared is None else f" ({declared.file})" if not declared.line \
            else f" ({declared})"
        raise BuildFileError(
            f"{where}: target '{used}' is not visible from target '{consumer.label}'. Check the "
            f"visibility declaration of the former target{at} if you think the dependency is "
            f"legitimate (e.g. visibility = [\"//{consumer.label.package}:__pkg__\"])",
            consumer.location)

    def _package_group(self, group: Label, used: Label,
                       declared: SourceLocation | None) -> PackageGroup:
        """The package_group a visibility list names; a label that names none is an error of
        the list, reported where it was written."""
        try:
            found = self._loader.package(group.package).groups.get(group.name)
        except BuildFileError as error:
            raise BuildFileError(f"visibility of '{used}': '{group}': {error.detail}",
                                 declared) from None
        if found is None:
            raise BuildFileError(f"visibility of '{used}': '{group}' is not a package_group",
                                 declared)
        return found

    def _check_requires(self, target: Target) -> None:
        """Each `requires` entry names a rule this target depends on, declaring the required
        versions."""
        depends_on: set[str] | None = None
        for text, wanted in target.requires:
            where = f"{target.label}: requires entry '{text}'"
            try:
                label = parse_label(text, target.label.package)
                package = self._loader.package(label.package)
            except BuildFileError as error:
                raise BuildFileError(f"{where}: {error.detail}", target.location) from None
            required = next((t for t in package.targets if t.label.name == label.name), None)
            if required is None:
                producer = next((t for t in package.targets if label.name in t.outs), None)
                hint = (f"; name the rule that produces it, '{producer.label}'"
                        if producer is not None
                        else did_you_mean(label.name, [t.label.name for t in package.targets]))
                raise BuildFileError(f"{where}: '{label}' is not a rule target" + hint,
                                     target.location)
            if depends_on is None:
                depends_on = self._dependencies(str(target.label))
            if str(required.label) not in depends_on:
                raise BuildFileError(
                    f"{where}: {required.label} is not a dependency of {target.label}; a target "
                    "may require versions only of targets it depends on through srcs or tools "
                    "(directly or transitively)",
                    target.location,
                )
            declared = dict(required.version)
            unmet = [(key, value) for key, value in wanted if declared.get(key) != value]
            if unmet:
                asked = " and ".join(f"{key}={value}" for key, value in unmet)
                found = " and ".join(
                    f"{key}={declared[key]}" if key in declared else f"no {key}" for key, _ in unmet
                )
                raise VersionMismatch(
                    f"{target.label} requires {required.label} {asked}, but {required.label} "
                    f"declares {found}",
                    target.location,
                )

    def _dependencies(self, name: str) -> set[str]:
        """Every rule target `name` depends on, transitively (its edges are already resolved)."""
        seen: set[str] = set()
        stack = self._edges(name)
        while stack:
            other = stack.pop()
            if other not in seen:
                seen.add(other)
                stack.extend(self._edges(other))
        return seen

    def _files_of(self, name: str, files: dict[str, tuple[str, ...]], attr: str) -> tuple[str, ...]:
        result: dict[str, None] = {}
        for ref in self._refs[name]:
            if ref.attr == attr:
                result.update(dict.fromkeys(ref.files(files)))
        return tuple(result)

    def _genrule(self, target: Target, files: dict[str, tuple[str, ...]], producer: dict[str, int],
                 command: str | None = None, programs: tuple[str, ...] | None = None) -> Action:
        name = str(target.label)
        srcs = self._files_of(name, files, "srcs")
        tools = self._files_of(name, files, "tools")
        outputs = tuple(out_path(target.label.package, o) for o in target.outs)
        if command is None:
            command = _Expander(target, srcs, outputs, self._location_map(name, files),
                                variables=self._loader.config.vars)(target.cmd)
        inputs = tuple(sorted(set(srcs) | set(tools)))
        deps = tuple(sorted({producer[p] for p in inputs if p in producer}))
        resources, env = declared_resources(target.resources, target.env)
        definition = [ACTION_SCHEMA, target.kind, KIND_VERSIONS[target.kind], command,
                      inputs, sorted(tools), outputs, env, target.version]
        out_dirs = tuple(out_path(target.label.package, o) for o in target.out_dirs)
        if out_dirs:
            definition.append(["out_dirs", list(out_dirs)])
        # the names (never the values): declaring another secret re-runs the action
        if target.secrets:
            definition.append(list(target.secrets))
            # a result holding a secret never serves an action forbidding one
            if target.allow_secret_in_output:
                definition.append("allow_secret_in_output")
        if target.host_tools:
            definition.append(["host_tools", *target.host_tools])
        def_hash = hash_canonical(definition)
        if programs is None:
            programs = programs_of(command)
        return Action(
            label=name, kind=target.kind, command=command, inputs=inputs,
            tools=tuple(sorted(tools)),
            outputs=outputs, env=env, versions=target.version, timeout=target.timeout,
            tags=target.tags, def_hash=def_hash, deps=deps,
            sources=tuple(p for p in inputs if not is_generated(p)), resources=resources,
            message=target.message,
            secrets=target.secrets, allow_secret_in_output=target.allow_secret_in_output,
            programs=tuple(dict.fromkeys((*programs, *target.host_tools))),
            out_dirs=out_dirs,
        )

    def _py_task(self, target: Target, files: dict[str, tuple[str, ...]],
                 producer: dict[str, int]) -> Action:
        """A py_task: `<interpreter> <script> <args...>`, each word shell-quoted, with a fixed
        Python env.

        The interpreter is the target's `python`, else the workspace's (`[python] interpreter`,
        by default the one running posbuild); it is the one program the action runs, so its
        packages are the action's environment (envfp.py). Its code (script, deps, imported
        workspace modules) was added to the tools by `_py_code_refs`.
        """
        import shlex

        from posbuild.core.target import PY_TASK_ENV, is_label

        name = str(target.label)
        outputs = tuple(out_path(target.label.package, o) for o in target.outs)
        locations = self._location_map(name, files)
        script = locations[str(parse_label(target.script, target.label.package))]
        if len(script) != 1:
            raise BuildFileError(f"{name}: script '{target.script}' must name exactly one file, "
                                 f"but it names {len(script)}", target.location)
        expand = _Expander(target, self._files_of(name, files, "srcs"), outputs, locations, "args",
                           self._loader.config.vars)
        if is_label(target.python):
            interpreter = self._named_py_env(target).interpreter
        else:
            interpreter = target.python or self._loader.config.interpreter
        words = [interpreter, script[0]]
        for arg in target.args:
            words.extend(expand.words(arg))
        command = " ".join(shlex.quote(word) for word in words)
        env = tuple(sorted({**dict(target.env), **dict(PY_TASK_ENV)}.items()))
        return self._genrule(replace(target, env=env), files, producer, command=command,
                             programs=(interpreter,))

    def _entry_point(self, target: Target, files: dict[str, tuple[str, ...]],
                     under: str = "") -> tuple[str, list[str]]:
        """A runnable target's interpreter ("" for a shell script) and its words: the script
        or main, then `args` with their `$(location)`s expanded, each path prefixed `under`."""
        name = str(target.label)
        locations = {key: tuple(under + path for path in paths)
                     for key, paths in self._location_map(name, files).items()}
        entry = target.srcs[0] if target.kind.startswith("sh_") else target.main
        paths = locations[str(parse_label(entry, target.label.package))]
        if len(paths) != 1:
            raise BuildFileError(f"{name}: '{entry}' must name exactly one file, but it names "
                                 f"{len(paths)}", target.location)
        srcs = tuple(under + path for path in self._files_of(name, files, "srcs"))
        expand = _Expander(target, srcs, (), locations, "args", self._loader.config.vars)
        words = [paths[0]]
        for arg in target.args:
            words.extend(expand.words(arg))
        if target.kind.startswith("sh_"):
            return "", words
        return target.python or self._loader.config.interpreter, words

    def _test(self, target: Target, files: dict[str, tuple[str, ...]],
              producer: dict[str, int]) -> Action:
        """An sh_test or py_test that `posbuild test` runs: an action whose outputs are the
        test's log and JUnit XML (testaction.py), under its timeout, retried if flaky."""
        from posbuild.core.target import PY_TASK_ENV, test_timeout
        from posbuild.load.testaction import (GRACE_SECONDS, LOG_SUFFIX, XML_SUFFIX,
                                              test_command)

        package, name = target.label.package, target.label.name
        log, xml = name + LOG_SUFFIX, name + XML_SUFFIX
        for out in (log, xml):
            other = self._loader.package(package).by_output.get(out)
            if other is not None:
                raise BuildFileError(f"{other.label}: output '{out}' is where the test "
                                     f"{target.label} writes its result; rename it",
                                     other.location)
        python, words = self._entry_point(target, files)
        if not python and "/" not in words[0]:  # a script at the root: a path, not a command name
            words[0] = "./" + words[0]
        interpreter = python or self._loader.config.interpreter
        argv = [python, *words] if python else words
        timeout = test_timeout(target)
        command = test_command(interpreter, str(target.label), argv, out_path(package, log),
                               out_path(package, xml), timeout, shell=not python)
        env = {**dict(target.env), "TEST_TARGET": str(target.label)}
        if python:
            env.update(PY_TASK_ENV)
        tags = [*target.tags, *(f"{NONDETERMINISTIC_OUTPUT_TAG}{o}" for o in (log, xml))]
        if target.flaky and "flaky" not in tags:
            tags.append("flaky")
        test = replace(target, outs=(log, xml), env=tuple(sorted(env.items())),
                       tags=tuple(tags), timeout=timeout + GRACE_SECONDS)
        programs = (interpreter,) if python else (interpreter, "sh")
        return self._genrule(test, files, producer, command=command, programs=programs)

    def runnable(self, label: Label) -> tuple[str, list[str], Pairs]:
        """What `posbuild run` starts for a binary or test: (interpreter or "", words with
        absolute paths, env), as the test action would run it."""
        from posbuild.core.target import PY_TASK_ENV

        self.analyze([label])
        target = self._targets[str(label)]
        python, words = self._entry_point(target, self._files, f"{self._loader.root}/")
        env = dict(target.env)
        if python:
            env.update((k, v) for k, v in PY_TASK_ENV if k != "PYTHONPATH")
        return python, words, tuple(sorted(env.items()))

    def _named_py_env(self, target: Target) -> PyEnvSpec:
        """The py_env a py_task's `python` names."""
        where = f"{target.label}: python '{target.python}'"
        try:
            label = parse_label(target.python, target.label.package)
            named = self._target(label)
        except (BuildFileError, KeyError) as error:
            detail = error.detail if isinstance(error, BuildFileError) else "no such target"
            raise BuildFileError(f"{where}: {detail}", target.location) from None
        if named.kind != "py_env":
            raise BuildFileError(f"{where}: {named.label} is a {named.kind}, not a py_env",
                                 target.location)
        self._check_visible(target, where, named.label, named.visibility, named.location)
        return self._py_env_spec(named)

    def _py_env_spec(self, target: Target) -> PyEnvSpec:
        """What making the py_env `target` needs: its requirements must be a source file (the
        environment is made before any action runs)."""
        name = str(target.label)
        spec = self._py_envs.get(name)
        if spec is None:
            self._edges(name)
            (ref,) = [ref for ref in self._refs[name] if ref.attr == "requirements"]
            if ref.file is None or is_generated(ref.file):
                raise BuildFileError(
                    f"{name}: requirements '{target.requirements}' must be a source file (the "
                    "environment is made before any action runs)", target.location)
            srcs = tuple(ref.file for ref in self._refs[name] if ref.attr == "srcs")
            if any(path is None or is_generated(path) for path in srcs):
                raise BuildFileError(
                    f"{name}: srcs must be source files (the environment is made before any "
                    "action runs)", target.location)
            folder = self._loader.root / STATE_DIR / PY_ENVS / "by-label" / target.label.package
            spec = self._py_envs[name] = PyEnvSpec(
                name, ref.file, target.python or self._loader.config.interpreter,
                str(folder / target.label.name), tuple(sorted(srcs)))  # type: ignore[arg-type]
        return spec

    def _py_code_refs(self, target: Target) -> list[_Ref]:
        """A py_task's code, as tools: its script, its `deps`, and the workspace modules they
        import.

        The imports of the script and of the `.py` source files in `deps` are read (pyimports.py);
        a generated script's imports are not (it does not exist yet): list its modules in `deps`.
        """
        named = [self._resolve(target, "script", target.script)]
        named.extend(self._resolve(target, "deps", text) for text in target.deps)
        code = [_Ref("tools", ref.key, ref.target, ref.file) for ref in named]
        script = named[0].file if named[0].target is None else None
        if script is not None:
            extra = tuple(r.file for r in named[1:] if r.target is None and r.file
                          and r.file.endswith(".py"))
            scan = self._scan(target, script, extra)
            code.extend(_Ref("tools", path, None, path) for path in scan.modules)
        return code

    def _scan(self, target: Target, script: str, extra: tuple[str, ...]) -> Scan:
        from posbuild.load.pyimports import ImportScanner

        if self._scanner is None:
            self._scanner = ImportScanner(str(self._loader.root))
        scan = self._scanner.scan_task(str(target.label), script, extra)
        self.files_read.update(scan.files_read)
        return scan

    def _location_map(self, name: str,
                      files: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        """Files of every label written in srcs/tools, keyed by the label's canonical form."""
        return {ref.key: ref.files(files) for ref in self._refs[name]}



THREAD_VARIABLES = ("MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")


def declared_resources(declared: Sequence[tuple[str, int]],
                       env: Pairs) -> tuple[tuple[int, int, int], Pairs]:
    """An action's (cpu, mem_mb, io) and its environment with the thread-count variables set to cpu.

    The numerical libraries' thread pools then match the processors the action is pinned to. The
    variables are part of the action's env, hence of its key: changing `cpu` re-executes the
    action (mem_mb and io do not change what it computes, so they stay out of the key). A variable
    the target's `env` sets itself is kept as written; with cpu=0 none is added.
    """
    values = {"cpu": 1, "mem_mb": 0, "io": 0, **dict(declared)}
    cpu = values["cpu"]
    if cpu > 0:
        env = tuple(sorted({**{name: str(cpu) for name in THREAD_VARIABLES}, **dict(env)}.items()))
    return (cpu, values["mem_mb"], values["io"]), env


def _not_a_source(path: str) -> str:
    """Why a path under posbuild-out/ or .posbuild/ is no source: reading it would bypass its
    owner."""
    folder, _, rest = path.partition("/")
    if folder == STATE_DIR:
        return f"{STATE_DIR}/ holds posbuild's own state, not sources"
    package, _, name = rest.rpartition("/")
    return (f"{OUT_DIR}/ holds the outputs of rules, not sources; name the rule that produces it "
            f"(e.g. //{package}:{name})")


def _lists_a_file(entry: os.DirEntry[str]) -> bool:
    """Whether a listed entry is a file, or a link to one (a link that cannot be followed is
    not)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _parse(name: str) -> Label:
    return parse_label(name, "")


@dataclass(frozen=True, slots=True)
class _Ref:
    """How one srcs/tools entry resolved: a rule (`target`), one file (`file`), or a rule's one
    output."""

    attr: str
    key: str
    target: Label | None
    file: str | None

    def files(self, files_of_targets: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
        if self.file is not None:
            return (self.file,)
        return files_of_targets[str(self.target)]


_MAKE_VAR = re.compile(r"\$(\$|<|@|\(([^)\s]+)(?:\s+([^)]*))?\))")


_LOCATION_VARIABLES = ("location", "locations", "execpath", "execpaths", "rootpath",
                       "rootpaths")


class _Expander:
    """Bazel's genrule substitutions, meaning what they mean for a sandboxed genrule, whose
    working folder mirrors the workspace (Bazel's execroot) with `posbuild-out/` as its output
    tree:

    $(SRCS) $(OUTS) $< $@ $$; $(location L), $(execpath L) and their plurals: a label's paths
    from there; $(rootpath L), $(rootpaths L): the same paths relative to their tree (a
    generated file without `posbuild-out/`), as a runfiles path is; $(@D): the folder of the
    only output, or the package's output folder when there are several; $(RULEDIR): the
    package's output folder; $(GENDIR), $(BINDIR): the output tree, `posbuild-out`; and, as
    Bazel's `--define` values are, $(KEY) for a value of `[vars]` or `--define KEY=VALUE`.
    """

    def __init__(self, target: Target, srcs: tuple[str, ...], outs: tuple[str, ...],
                 locations: dict[str, tuple[str, ...]], attr: str = "cmd",
                 variables: tuple[tuple[str, str], ...] = ()) -> None:
        self._target = target
        self._variables = dict(variables)
        self._srcs = srcs
        self._outs = outs
        self._locations = locations
        self._attr = attr

    def __call__(self, cmd: str) -> str:
        return _MAKE_VAR.sub(self._replace, cmd)

    def words(self, arg: str) -> list[str]:
        """One py_task argument: alone, `$(SRCS)`, `$(OUTS)` or `$(locations L)` give one word per
        file."""
        match = _MAKE_VAR.fullmatch(arg)
        if match is not None:
            variable = match.group(2)
            if variable in ("SRCS", "OUTS"):
                return list(self._srcs if variable == "SRCS" else self._outs)
            if variable in ("locations", "execpaths", "rootpaths"):
                return list(self._location_paths(variable, (match.group(3) or "").strip()))
        return [self(arg)]

    def _fail(self, detail: str) -> BuildFileError:
        return BuildFileError(f"{self._target.label}: {self._attr}: {detail}",
                              self._target.location)

    def _one(self, paths: tuple[str, ...], what: str) -> str:
        if len(paths) != 1:
            raise self._fail(f"{what} needs exactly one file, but there are {len(paths)}")
        return paths[0]

    def _replace(self, match: re.Match[str]) -> str:
        token, variable, argument = match.group(1), match.group(2), match.group(3)
        if token == "$":
            return "$"
        if token == "<":
            return self._one(self._srcs, "$<")
        if token == "@":
            return self._one(self._outs, "$@")
        if variable in _LOCATION_VARIABLES:
            return self._location(variable, (argument or "").strip())
        simple = {"SRCS": self._srcs, "OUTS": self._outs}
        if variable in simple:
            return " ".join(simple[variable])
        if variable == "@D" and len(self._outs) == 1:
            return posixpath.dirname(self._outs[0])
        if variable in ("@D", "RULEDIR"):
            return out_path(self._target.label.package, "").rstrip("/")
        if variable in ("GENDIR", "BINDIR"):
            return OUT_DIR
        if variable in self._variables and argument is None:
            return self._variables[variable]
        raise self._fail(f"unknown variable '$({variable})' (write '$$' for a literal '$', or "
                         f"set {variable} in [vars] of posbuild.toml or with --define)")

    def _location(self, variable: str, text: str) -> str:
        paths = self._location_paths(variable, text)
        if variable.endswith("s"):
            return " ".join(paths)
        return self._one(paths, f"$({variable} {text})")

    def _location_paths(self, variable: str, text: str) -> tuple[str, ...]:
        package = self._target.label.package
        if not text:
            raise self._fail(f"$({variable}) needs a label, as in $({variable} //pkg:name)")
        try:
            label = parse_label(text, package)
        except BuildFileError as error:
            raise self._fail(error.detail) from None
        paths = self._locations.get(str(label))
        if paths is None and label.package == package and label.name in self._target.outs:
            paths = (out_path(package, label.name),)
        if paths is None:
            raise self._fail(f"$({variable} {text}): '{text}' is not in srcs, tools or outs")
        if variable.startswith("rootpath"):
            return tuple(path.removeprefix(OUT_DIR + "/") for path in paths)
        return paths

