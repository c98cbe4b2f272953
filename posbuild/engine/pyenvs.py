"""Layer 0: make the virtual environments py_env targets declare, before any action runs.

A py_env is a Python environment made from a requirements (or lock) file, as Snakemake makes a
rule's conda environment: `python -m venv` from the declared interpreter, then `pip install -r`.
It is content-addressed: the folder `.posbuild/envs/<digest>/` is named by the digest of the
requirements file's bytes and of the interpreter it is made from, so changing the file makes a
new environment (and going back finds the old one), and `.posbuild/envs/by-label/<pkg>/<name>`
is a link to the current one. A py_task that names the py_env runs `<link>/bin/python`; its key
holds that interpreter's packages (envfp.py), so it re-runs exactly when what it imports from
changed, and other actions never do.

Making one needs the network (pip downloads), so it runs as an action with the `network` tag
does: in the workspace's sandbox (namespaces where bubblewrap runs: the system read-only, the
workspace hidden but for the requirements file and the py_env's `srcs`, staged as inputs), with
the network, and with one folder writable: the environment's own, bound at its final path. What
pip runs (an sdist's build) is thus held to what any command is held to. The caller's proxy and
pip variables (`PIP_*`, `HTTP(S)_PROXY`, `NO_PROXY`) are passed in. A virtual environment holds
its own absolute path, so it is made in place; a file `.complete` written last says it is whole.
A folder without it (a build killed while pip ran) is removed and made again. The check a build
pays when nothing changed is two stat() calls per py_env, against the stamps saved beside its
link. `posbuild gc` removes the environments no link names any more (`sweep`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

from posbuild.core.action import Action, PyEnvSpec
from posbuild.core.digest import hash_canonical, hash_file
from posbuild.core.layout import NETWORK_TAG, PY_ENVS
from posbuild.errors import ActionFailed, BuildFileError
from posbuild.host.atomic import write_atomically
from posbuild.workspace.config import BASE_PATH, Config
from posbuild.workspace.envfp import Environments, sandbox_path, stat_stamp

COMPLETE = ".complete"
STAMPS = ".stamps"  # beside a by-label link: what its environment was made from, by stat
FORMAT = 1
TAIL = 20  # lines of pip's output shown when it fails


def ensure(config: Config, specs: Sequence[PyEnvSpec], environ: Mapping[str, str],
           say: Callable[[str], None]) -> None:
    """Make each environment that does not exist yet for its requirements and interpreter; `say`
    tells the user which are made (it takes a while). Raises ActionFailed when one cannot be."""
    for spec in specs:
        _ensure_one(config, spec, environ, say)


def _ensure_one(config: Config, spec: PyEnvSpec, environ: Mapping[str, str],
                say: Callable[[str], None]) -> None:
    sources = [str(config.root / path) for path in (spec.requirements, *spec.srcs)]
    base = _interpreter(spec)
    link = spec.folder
    stamps = hash_canonical([FORMAT, [stat_stamp(path) for path in sources], base,
                             stat_stamp(base)])
    stamp_file = Path(link + STAMPS)
    try:
        if stamp_file.read_bytes() == stamps and os.path.isfile(f"{link}/{COMPLETE}"):
            return  # the common case: nothing changed since the last build
    except OSError:
        pass
    try:
        contents = [hash_file(path) for path in sources]
    except OSError as error:
        raise BuildFileError(f"{spec.label}: {error.filename} cannot be read: "
                             f"{error.strerror}") from None
    digest = hash_canonical([FORMAT, list(zip((spec.requirements, *spec.srcs), contents)), base,
                             hash_file(os.path.realpath(base))]).hex()
    folder = config.state_dir / PY_ENVS / digest[:32]
    if not (folder / COMPLETE).is_file():
        _make(config, spec, base, folder, environ, say)
    _link(link, folder)
    write_atomically(stamp_file, stamps)


def _interpreter(spec: PyEnvSpec) -> str:
    if spec.python.startswith("/"):
        candidates = [spec.python]
    else:
        candidates = [f"{folder}/{spec.python}" for folder in BASE_PATH.split(":")]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise BuildFileError(f"{spec.label}: python '{spec.python}' is not an executable file"
                         + ("" if spec.python.startswith("/") else f" on {BASE_PATH}"))


# what pip and the proxies it goes through read from the caller's environment
_PASSED = re.compile(r"^(PIP_[A-Z_]+|(HTTPS?|NO|ALL)_PROXY|(https?|no|all)_proxy)$")


def _make(config: Config, spec: PyEnvSpec, base: str, folder: Path,
          environ: Mapping[str, str], say: Callable[[str], None]) -> None:
    """venv + pip install, in place, in a sandbox; `.complete` last."""
    from posbuild.exec.namespaces import choose
    from posbuild.exec.sandbox import LocalSpawner, hidden_folders

    if folder.exists():  # a build was killed while making it
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    say(f"posbuild: making the Python environment of {spec.label} from {spec.requirements} "
        f"(pip install; this may take a while)")
    package = os.path.dirname(spec.requirements) or "."
    requirements = os.path.basename(spec.requirements)
    python = shlex.quote(str(folder / "bin" / "python"))
    command = f"{shlex.quote(base)} -m venv {shlex.quote(str(folder))}"
    if any(line.strip() and not line.lstrip().startswith("#") for line in
           (config.root / spec.requirements).read_text(errors="replace").splitlines()):
        command += (f" && cd {shlex.quote(package)} && {python} -m pip install --no-input "
                    f"--disable-pip-version-check -r {shlex.quote(requirements)}")
    action = Action(label=spec.label, kind="py_env", command=command,
                    inputs=(spec.requirements, *spec.srcs), tools=(), outputs=(), env=(),
                    versions=(), timeout=0, tags=(NETWORK_TAG,), def_hash=b"", deps=(),
                    sources=(spec.requirements, *spec.srcs), resources=(1, 0, 0))
    search_path = sandbox_path(config)
    visible = Environments(search_path).visible([base])
    isolation, _ = choose(config.sandbox_mode, hidden_folders(config), visible, (str(folder),))
    spawner = LocalSpawner(config.root, config.sandbox_dir, isolation, search_path=search_path)
    passed = tuple((name, value) for name, value in sorted(environ.items()) if _PASSED.match(name))
    try:
        spawner.clear_stale()
        result = spawner.run(action, passed)
        try:
            said = (result.stdout + result.stderr).decode("utf-8", "replace")
        finally:
            spawner.remove(result)
    finally:
        spawner.close()
    if result.exit_code != 0:
        tail = said.strip().splitlines()[-TAIL:]
        raise ActionFailed(
            f"{spec.label}: making its Python environment failed: the command exited with "
            f"{result.exit_code}" + "".join(f"\n  {line}" for line in tail))
    (folder / COMPLETE).write_bytes(b"")


def _link(link: str, folder: Path) -> None:
    """Point the by-label link at `folder`, atomically."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    temporary = f"{link}.tmp-{os.getpid()}"
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    os.symlink(os.path.relpath(folder, os.path.dirname(link)), temporary)
    os.replace(temporary, link)


def sweep(config: Config) -> tuple[int, int]:
    """Remove the environments no by-label link points at (made for requirements since changed);
    (how many, bytes freed). Run under the workspace lock, so no build is making one meanwhile."""
    envs = config.state_dir / PY_ENVS
    if not envs.is_dir():
        return 0, 0
    labels = envs / "by-label"
    # (os.walk lists a link to a folder among the folders, and does not follow it)
    linked = {os.path.realpath(os.path.join(folder, name))
              for folder, folders, names in os.walk(labels) for name in [*folders, *names]
              if os.path.islink(os.path.join(folder, name))}
    removed = freed = 0
    for entry in os.scandir(envs):
        if entry.name == "by-label" or not entry.is_dir(follow_symlinks=False) \
                or os.path.realpath(entry.path) in linked:
            continue
        freed += sum(os.lstat(os.path.join(folder, name)).st_size
                     for folder, _, names in os.walk(entry.path) for name in names)
        shutil.rmtree(entry.path)
        removed += 1
    return removed, freed
