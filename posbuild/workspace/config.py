"""Layer 0: find the workspace and read `posbuild.toml` into one frozen Config.

The workspace is the nearest folder above the current one that holds `posbuild.toml`, exactly as
Bazel looks for its WORKSPACE file. Every setting is validated here, so a typo in the file is one
clear error naming the key, not a crash deep inside the build.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from posbuild.host.paths import within
from posbuild.core.digest import hash_bytes
from posbuild.errors import NoWorkspace, UsageError, WorkspaceError
from posbuild.core.layout import CONFIG_NAME, OUT_DIR, SANDBOX, STATE_DIR, STORE

# the PATH actions see, and where `[env] tools` are looked up
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


SERVER_IDLE = 3 * 3600  # Bazel's default too


@dataclass(frozen=True, slots=True)
class Budget:
    """`[resources]`: what the actions running at one time may declare in total (DESIGN §10)."""

    cpu: int
    mem_mb: int
    io: int

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.cpu, self.mem_mb, self.io)


RESOURCE_NAMES = ("cpu", "mem_mb", "io")  # the order of Budget.as_tuple() and of Action.resources
SANDBOX_MODES = ("auto", "landlock", "namespace", "folder")
EXECUTOR_KINDS = ("local", "dask")
DEFAULT_ROLE = "dev"


@dataclass(frozen=True, slots=True)
class Role:
    """`[roles.NAME]`: the target patterns a role may build (a leading `-` excludes) and whether it
    may upload to the remote cache."""

    name: str
    build: tuple[str, ...] = ("//...",)
    upload: bool = False


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """`[cache] remote / upload / timeout`: the shared HTTP cache, if any."""

    url: str = ""  # "" means no remote cache
    upload: bool = False  # `[cache] upload = true`: write results (also needs the signing key)
    timeout: float = 5.0  # seconds per request before the remote counts as down


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a build needs to know about its workspace before reading any BUILD file."""

    root: Path
    jobs: int
    build_file_names: tuple[str, ...]
    store_dir: Path
    env_pass: tuple[str, ...]
    sandbox_dir: Path
    cache_max_size: str = ""  # `[cache] max_size`: gc's default bound, as written (e.g. "20G")
    env_tools: tuple[str, ...] = ()  # `[env] tools`: executables whose path and digest enter h_E
    # `[resources]`; None only for Configs built by hand (see `resources`)
    budget: Budget | None = None
    remote: RemoteSettings = RemoteSettings()
    roles: tuple[Role, ...] = ()  # `[roles]`; empty: every role may build everything
    sandbox_mode: str = "auto"  # `[sandbox] mode`: auto | landlock | namespace | folder
    secrets_file: str = ""  # `[secrets] file`: where secret values live beside the environment
    executor: str = "local"  # `[executor] kind`: local | dask
    executor_address: str = ""  # `[executor] address`, e.g. "tcp://127.0.0.1:8786"
    # `[python] interpreter`, absolute: what py_task runs and `python3` in commands is; "" means
    # the Python running posbuild
    python: str = ""
    server: bool = True  # `[build] server`: builds go through the workspace's build server
    server_idle: int = SERVER_IDLE  # `[build] server_idle`: seconds an idle server waits
    # `[build] default_visibility`: of a target whose package sets none (Bazel's is private)
    default_visibility: str = "public"
    # `[vars]`, then `--define KEY=VALUE`: what `config("KEY")` reads in BUILD files, sorted
    vars: tuple[tuple[str, str], ...] = ()

    @property
    def interpreter(self) -> str:
        """The workspace's Python: `[python] interpreter`, else the one running posbuild."""
        import sys

        return self.python or sys.executable

    @property
    def resources(self) -> Budget:
        """The resource budget: `[resources]` as configured, each missing key at its default."""
        return self.budget or default_budget()

    @property
    def out_dir(self) -> Path:
        return self.root / OUT_DIR

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def workspace_tag(self) -> str:
        """What tags the workspace's rows in the store (generations, stat memo): "" in its own
        store, its path in one shared by several workspaces (`[cache] dir`)."""
        return "" if self.store_dir.is_relative_to(self.state_dir) else str(self.root)


# Every table of posbuild.toml and its keys; anything else is refused, so that a typo cannot
# silently drop a setting. `[roles.NAME]` tables are checked by `_roles`.
TABLES: dict[str, tuple[str, ...]] = {
    "build": ("build_file_names", "default_visibility", "jobs", "sandbox_base", "server",
              "server_idle"),
    "cache": ("dir", "max_size", "remote", "timeout", "upload"),
    "env": ("pass", "tools"),
    "executor": ("address", "kind"),
    "python": ("interpreter",),
    "resources": RESOURCE_NAMES,
    "roles": (),
    "sandbox": ("mode",),
    "secrets": ("file",),
    "vars": (),
}


def find_workspace(start: Path) -> Path:
    """The nearest ancestor of `start` (itself included) that holds posbuild.toml."""
    for folder in (start, *start.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    raise NoWorkspace(
        f"no {CONFIG_NAME} found in {start} or any folder above it; "
        f"create one (it may be empty) to mark the workspace root"
    )


def _get(table: dict[str, Any], section: str, key: str, kind: type | tuple[type, ...], default: Any,
         path: Path) -> Any:
    value = table.get(section, {}).get(key, default)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise WorkspaceError(
            f"{path}: [{section}] {key} must be {names}, got {type(value).__name__} {value!r}")
    _check_value(value, section, key, path)
    return value


def _check_value(value: Any, section: str, key: str, path: Path) -> None:
    """What TOML allows but no setting can mean: a NUL character (no path, name or URL holds
    one), a number that is not finite, an integer beyond 64 bits."""
    for item in value if isinstance(value, list) else (value,):
        if isinstance(item, str) and "\0" in item:
            raise WorkspaceError(
                f"{path}: [{section}] {key} must not contain a NUL character, got {item!r}")
        if isinstance(item, float) and not math.isfinite(item) or isinstance(item, int) \
                and abs(item) >= 1 << 63:
            raise WorkspaceError(
                f"{path}: [{section}] {key} must be a finite number of sensible size, got {item!r}")


def _string_list(table: dict[str, Any], section: str, key: str, default: list[str],
                 path: Path) -> tuple[str, ...]:
    value = _get(table, section, key, list, default, path)
    if not all(isinstance(item, str) and item for item in value):
        raise WorkspaceError(f"{path}: [{section}] {key} must be a list of non-empty strings")
    _check_value(value, section, key, path)
    return tuple(value)


def load_config(root: Path) -> Config:
    """Read and validate `root/posbuild.toml`."""
    path = root / CONFIG_NAME
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise WorkspaceError(f"{path}: {error}") from None
    except UnicodeDecodeError as error:
        raise WorkspaceError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise WorkspaceError(f"{path}: cannot read: {error.strerror}") from None
    _check_known(table, path)
    jobs = _get(table, "build", "jobs", int, 0, path)
    if jobs < 0:
        raise WorkspaceError(f"{path}: [build] jobs must be >= 0 (0 means one per CPU), got {jobs}")
    cache_dir = _get(table, "cache", "dir", str, "", path)
    store_dir = (root / os.path.expanduser(cache_dir)) if cache_dir else root / STATE_DIR / STORE
    sandbox_base = _get(table, "build", "sandbox_base", str, "", path)
    sandbox_dir = _sandbox_dir(root, sandbox_base)
    _check_placement(root, path, store_dir, cache_dir, sandbox_dir, sandbox_base)
    return Config(
        root=root,
        jobs=jobs or default_jobs(),
        build_file_names=_build_file_names(table, path),
        store_dir=store_dir,
        env_pass=_env_pass(table, path),
        sandbox_dir=sandbox_dir,
        cache_max_size=str(_get(table, "cache", "max_size", (str, int), "", path)),
        env_tools=_tools(table, path),
        budget=_budget(table, path),
        remote=_remote(table, path),
        roles=_roles(table, path),
        sandbox_mode=_choice(table, "sandbox", "mode", SANDBOX_MODES, path),
        secrets_file=os.path.expanduser(_get(table, "secrets", "file", str, "", path)),
        executor=_choice(table, "executor", "kind", EXECUTOR_KINDS, path),
        executor_address=_get(table, "executor", "address", str, "", path),
        python=_interpreter(table, path),
        server=_get(table, "build", "server", bool, True, path),
        server_idle=_server_idle(table, path),
        default_visibility=_choice(table, "build", "default_visibility", ("public", "private"),
                                   path),
        vars=_vars(table, path),
    )


VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _vars(table: dict[str, Any], path: Path) -> tuple[tuple[str, str], ...]:
    """`[vars]`: names to strings (an integer or boolean is taken as its TOML text), so that a
    BUILD file reads one type whether the value came from here or from `--define`."""
    found = []
    for key, value in table.get("vars", {}).items():
        if not VAR_NAME.fullmatch(key):
            raise WorkspaceError(f"{path}: [vars] '{key}' is not a name (letters, digits, '_', "
                                 f"'.', '-', not starting with a digit)")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            raise WorkspaceError(f"{path}: [vars] {key} must be a string, integer or boolean, "
                                 f"got {type(value).__name__} {value!r}")
        _check_value(value, "vars", key, path)
        found.append((key, value))
    return tuple(sorted(found))


def with_defines(config: Config, defines: Sequence[str]) -> Config:
    """`config` with `--define KEY=VALUE` values over its `[vars]` (the last of a repeated KEY
    wins, as in Bazel)."""
    if not defines:
        return config
    merged = dict(config.vars)
    for define in defines:
        key, value = parse_define(define)
        merged[key] = value
    return replace(config, vars=tuple(sorted(merged.items())))


def parse_define(text: str) -> tuple[str, str]:
    """`KEY=VALUE` of `--define` as (key, value); a malformed one is a usage error."""
    key, equals, value = text.partition("=")
    if not equals or not VAR_NAME.fullmatch(key):
        raise UsageError(f"--define {text!r}: expected KEY=VALUE, KEY a name (letters, digits, "
                         f"'_', '.', '-')")
    if "\0" in value:
        raise UsageError(f"--define {key}: the value must not contain a NUL character")
    return key, value


def _server_idle(table: dict[str, Any], path: Path) -> int:
    """`[build] server_idle`: seconds, at least 1 (to keep no server, say `server = false`)."""
    idle = _get(table, "build", "server_idle", int, SERVER_IDLE, path)
    if idle < 1:
        raise WorkspaceError(f"{path}: [build] server_idle must be >= 1 (seconds an idle build "
                             f"server waits before it stops), got {idle}")
    return idle


def _interpreter(table: dict[str, Any], path: Path) -> str:
    """`[python] interpreter`: an absolute path, or a bare name looked up on BASE_PATH; checked
    to be an executable file now, so that a typo fails before anything is loaded."""
    written = _get(table, "python", "interpreter", str, "", path)
    if not written:
        return ""
    if written.startswith("/"):
        candidates = [written]
    elif "/" in written:
        raise WorkspaceError(f"{path}: [python] interpreter: {written!r} must be an absolute "
                             f"path or a bare name (looked up on {BASE_PATH})")
    else:
        candidates = [f"{folder}/{written}" for folder in BASE_PATH.split(":")]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    where = "is not an executable file" if written.startswith("/") \
        else f"is not on the sandbox PATH {BASE_PATH}"
    raise WorkspaceError(f"{path}: [python] interpreter: {written!r} {where}")


def _build_file_names(table: dict[str, Any], path: Path) -> tuple[str, ...]:
    """`[build] build_file_names`: file names (no folders); an empty list would find no package."""
    names = _string_list(table, "build", "build_file_names", ["BUILD"], path)
    if not names:
        raise WorkspaceError(f"{path}: [build] build_file_names must name at least one file")
    for name in names:
        if "/" in name or name in (".", ".."):
            raise WorkspaceError(
                f"{path}: [build] build_file_names: '{name}' must be a file name, without '/'")
    return names


SIGNING_KEY = "POSBUILD_CACHE_KEY"  # signs the shared caches (remote.py): no action may hold it


def _env_pass(table: dict[str, Any], path: Path) -> tuple[str, ...]:
    """`[env] pass`: names of variables (exact names: no patterns); `FOO=1` would silently pass
    nothing, and the signing key would let every action forge cache entries."""
    names = _string_list(table, "env", "pass", [], path)
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise WorkspaceError(f"{path}: [env] pass: '{name}' is not an environment variable "
                                 "name (pass names a variable of posbuild's environment; a value "
                                 "is set in a rule's env)")
        if name == SIGNING_KEY:
            raise WorkspaceError(f"{path}: [env] pass: '{name}' is posbuild's signing key and is "
                                 "never given to actions (one holding it could forge shared cache "
                                 "entries); remove it")
    return names


def _check_known(table: dict[str, Any], path: Path) -> None:
    """Refuse a table or key posbuild does not read, suggesting the closest known name."""
    tables = ", ".join(sorted(TABLES))
    for section, value in table.items():
        if section not in TABLES:
            if not isinstance(value, dict):
                owners = [name for name, keys in TABLES.items() if section in keys]
                hint = f"; did you mean [{owners[0]}] {section}?" if len(owners) == 1 \
                    else f" (known tables: {tables})"
                raise WorkspaceError(f"{path}: '{section}' is outside any table{hint}")
            guess = _closest(section, TABLES)
            hint = f"; did you mean [{guess}]?" if guess else f" (known: {tables})"
            raise WorkspaceError(f"{path}: unknown table [{section}]{hint}")
        if not isinstance(value, dict):
            raise WorkspaceError(f"{path}: '{section}' must be a [table]")
        unknown = sorted(set(value) - set(TABLES[section])) \
            if section not in ("roles", "vars") else []
        if unknown:
            raise _unknown_key(path, section, unknown[0], TABLES[section])


def _unknown_key(path: Path, section: str, key: str, known: tuple[str, ...]) -> WorkspaceError:
    guess = _closest(key, known)
    return WorkspaceError(f"{path}: [{section}] has unknown key '{key}' (known: {', '.join(known)})"
                          + (f"; did you mean '{guess}'?" if guess else ""))


def _closest(word: str, names: Any) -> str | None:
    import difflib  # only when a name is unknown

    found = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
    return found[0] if found else None


def _choice(table: dict[str, Any], section: str, key: str, choices: tuple[str, ...],
            path: Path) -> str:
    value = _get(table, section, key, str, choices[0], path)
    if value not in choices:
        raise WorkspaceError(
            f"{path}: [{section}] {key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _remote(table: dict[str, Any], path: Path) -> RemoteSettings:
    """`[cache] remote` must be an http(s) URL; `timeout` a positive number of seconds."""
    url = _get(table, "cache", "remote", str, "", path).rstrip("/")
    if url and not url.startswith(("http://", "https://")):
        raise WorkspaceError(
            f"{path}: [cache] remote must be an http:// or https:// URL, got {url!r}")
    timeout = _get(table, "cache", "timeout", (int, float), 5.0, path)
    if timeout <= 0:
        raise WorkspaceError(f"{path}: [cache] timeout must be > 0 seconds, got {timeout}")
    return RemoteSettings(url, _get(table, "cache", "upload", bool, False, path), float(timeout))


def _roles(table: dict[str, Any], path: Path) -> tuple[Role, ...]:
    """`[roles.NAME] build = [patterns], upload = bool`, one table per role."""
    roles = []
    for name, section in sorted(table.get("roles", {}).items()):
        if not isinstance(section, dict):
            raise WorkspaceError(f"{path}: [roles] {name} must be a table ([roles.{name}])")
        unknown = sorted(set(section) - {"build", "upload"})
        if unknown:
            raise _unknown_key(path, f"roles.{name}", unknown[0], ("build", "upload"))
        wrapped = {f"roles.{name}": section}
        roles.append(Role(name, _string_list(wrapped, f"roles.{name}", "build", ["//..."], path),
                          _get(wrapped, f"roles.{name}", "upload", bool, False, path)))
    return tuple(roles)


def _budget(table: dict[str, Any], path: Path) -> Budget:
    """`[resources] cpu, mem_mb, io`; a missing key takes its default."""
    defaults = default_budget()
    values = []
    for name in RESOURCE_NAMES:
        value = _get(table, "resources", name, int, getattr(defaults, name), path)
        if value < 0:
            raise WorkspaceError(f"{path}: [resources] {name} must be >= 0, got {value}")
        values.append(value)
    return Budget(*values)


def default_budget() -> Budget:
    """The CPUs this process may use, the physical memory in MB, and 2 IO slots."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (ValueError, OSError):
        memory = 0
    return Budget(default_jobs(), max(memory, 1), 2)


def _tools(table: dict[str, Any], path: Path) -> tuple[str, ...]:
    """`[env] tools`: bare names (looked up on BASE_PATH) or absolute paths, each listed once."""
    tools = _string_list(table, "env", "tools", [], path)
    for tool in tools:
        if "/" in tool and not tool.startswith("/"):
            raise WorkspaceError(f"{path}: [env] tools: {tool!r} must be a bare name (looked up on "
                                 f"{BASE_PATH}) or an absolute path")
    return tuple(dict.fromkeys(tools))


def _sandbox_dir(root: Path, configured: str) -> Path:
    """Where this workspace's sandboxes go: as configured, else on /dev/shm when usable, else on
    disk."""
    if configured:
        return root / os.path.expanduser(configured)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        tag = hash_bytes(str(root).encode()).hex()[:16]
        return shm / f"posbuild-{os.getuid()}" / tag
    return root / STATE_DIR / SANDBOX


# The one place inside .posbuild/ a configured store or sandbox base may name: its default.
_DEFAULTS = {"[cache] dir": f"{STATE_DIR}/{STORE}",
             "[build] sandbox_base": f"{STATE_DIR}/{SANDBOX}"}


def _check_placement(root: Path, path: Path, store_dir: Path, cache_dir: str, sandbox_dir: Path,
                     sandbox_base: str) -> None:
    """Refuse a store or sandbox base that posbuild would delete more than its own files with:
    `/`, the home folder, the workspace or a folder above one of them; inside the workspace,
    anything but a hidden folder (posbuild never looks for packages or globbed sources in one)
    outside `.posbuild/` (posbuild's state, where only the default places are allowed) and
    `posbuild-out/`; the store and the sandbox base inside one another. Paths are compared
    after resolving links, so a link to the workspace is the workspace."""
    if not (cache_dir or sandbox_base):  # the default places are right by construction
        return
    real_root = os.path.realpath(root)
    home = os.path.realpath(os.path.expanduser("~"))
    real = {"[cache] dir": os.path.realpath(store_dir),
            "[build] sandbox_base": os.path.realpath(sandbox_dir)}
    for key, value in (("[cache] dir", cache_dir), ("[build] sandbox_base", sandbox_base)):
        if not value:
            continue
        why = _misplaced(real[key], real_root, home, _DEFAULTS[key])
        if why:
            raise WorkspaceError(f"{path}: {key} = {value!r} {why}; posbuild empties this folder, "
                                 "so it must be one of its own (outside the workspace, or in a "
                                 "hidden folder of it)")
    store, sandboxes = real["[cache] dir"], real["[build] sandbox_base"]
    if within(store, sandboxes) or within(sandboxes, store):
        raise WorkspaceError(f"{path}: [cache] dir = {cache_dir!r} and [build] sandbox_base = "
                             f"{sandbox_base!r} are inside one another ({store}, {sandboxes}); "
                             "each must be a folder of its own")


def _misplaced(real: str, root: str, home: str, default: str) -> str:
    """Why a configured folder (resolved) may not be posbuild's to empty, or ""."""
    if real == "/":
        return "is the root folder /"
    if within(root, real):
        return "is the workspace root" if real == root else f"holds the workspace ({real})"
    if within(home, real):
        return f"is the home folder {home}" if real == home else f"holds the home folder {home}"
    if not within(real, root):
        return ""
    rel = os.path.relpath(real, root)
    top = rel.split("/", 1)[0]
    if top == STATE_DIR:
        where = "is" if rel == STATE_DIR else "is inside"
        return "" if rel == default \
            else f"{where} {STATE_DIR}/, posbuild's own state (only {default} is allowed there)"
    if top == OUT_DIR:
        return f"is inside {OUT_DIR}/, the output tree"
    if not any(part.startswith(".") for part in rel.split("/")):
        return f"is inside the workspace among its sources ({rel})"
    return ""


def default_jobs() -> int:
    """The CPUs this process may use (respecting affinity masks, as in containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1
