"""Layer 2: the bubblewrap (`bwrap`) command line that runs one action in its own namespaces.

The folder sandbox (sandbox.py) gives an action a folder holding only its declared inputs, but
nothing stops the command from reading `/home/me/project/data.csv` by its absolute path, writing
into the workspace, or fetching something from the network. Bubblewrap closes those holes with
the kernel's namespaces, at a cost of 6-12 ms per action on a busy two-core machine, most of it
the kernel creating and tearing down the namespaces (bench/bench_sandbox.py):

* mount namespace: the whole system is visible read-only (`--ro-bind / /`), with a fresh `/dev` (so
  the host's `/dev/shm` is gone), a fresh `/proc`, and an empty private `/tmp`. The workspace root,
  the store (when it lives outside the workspace) and the sandbox base folder are covered by empty
  file systems at their own paths: /proc/self/mountinfo names those paths, but covering a parent
  instead (`/home` for `/home/me/project`) would also hide the tools installed beside the workspace
  (a conda under the home folder). Then the action's own sandbox folder is bound back, writable, at
  its real absolute path, so every path in the command, HOME and TMPDIR stay what the folder sandbox
  would give. Its declared inputs are bound read-only on top (`input_binds`: a folder that holds
  inputs and no output, such as a package's sources, is read-only as a whole). The Python running
  posbuild (a venv inside the checkout, or under /tmp) and the other `visible` paths are bound back
  read-only, so `py_task` actions and `[env] tools` keep working;
* PID, IPC and UTS namespaces: the command sees only its own processes. `--die-with-parent` ends
  the command when posbuild dies, even by SIGKILL, which the folder sandbox cannot promise. The
  shell is the namespace's PID 1 (`--as-pid-1`): with bwrap's own init process in between, the
  rusage posbuild reads with wait4 would miss the command (bwrap exits without reaping it), and
  when PID 1 ends the kernel kills every other process of the namespace, as the folder sandbox
  kills the process group. (As PID 1 the shell ignores signals sent from inside the namespace
  for which it has no handler: `kill $$` does nothing there.);
* network namespace: only a loopback of its own, unless the target has `tags = ["network"]`.

WRITABLE_VARIABLE (`POSBUILD_SANDBOX_WRITABLE=/a:/b`, in the environment the CLI passes) names
folders left visible and writable: a hole on purpose, for debugging and for tests that watch
actions through files (the workspace stays hidden even inside such a folder).

When posbuild runs as root, every capability is dropped: with CAP_SYS_ADMIN a command could
unmount what hides the workspace, and with CAP_DAC_READ_SEARCH it could open hidden files by
handle (open_by_handle_at) whatever is mounted over them.

Files that must stay unreadable although the system is visible (the secrets file) are covered
with /dev/null. Without the network tag, /run is a private, empty folder too: a network
namespace does not cover Unix sockets in the file system (the Docker or D-Bus socket), and a
read-only mount does not stop connecting to one. Sockets elsewhere stay reachable.

Nothing here runs an action or prints: `probe` tells whether bwrap works at all (once per
process), `choose` turns `[sandbox] mode` into an Isolation, the Landlock sandbox's shared argv
(landlock.py: "auto" prefers it), an error or a notice, and `command` builds one action's argv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from posbuild.host.paths import within
from posbuild.errors import SandboxUnavailable
from posbuild.exec import landlock
from posbuild.exec.landlock import Landlocked

WRITABLE_VARIABLE = "POSBUILD_SANDBOX_WRITABLE"  # debugging and test probes: folders left writable
PROBE_TIMEOUT = 20.0  # seconds; bwrap starts in milliseconds, a hang means something is wrong
_probed: dict[tuple[str, ...], str | None] = {}  # argv → None (works) or why not; once per process
_landlock_probed: dict[Landlocked, str | None] = {}  # the same, for the Landlock sandbox
_launcher: list[tuple[str, str]] = []  # (the compiled launcher, or "" and why not); once
_noticed: set[str] = set()


@dataclass(frozen=True, slots=True)
class Isolation:
    """What every namespaced action shares: the bwrap argv around the per-action part.

    `head` hides the workspace and shows the system read-only; `head_network` is the same
    without `--unshare-net`, for actions tagged `network`. `tail` comes after the action's own
    binds: it makes the empty folders that hide the workspace read-only (bwrap can only create
    the mount points of later binds in them while they are writable).
    """

    bwrap: str
    head: tuple[str, ...]
    head_network: tuple[str, ...]
    tail: tuple[str, ...] = ()


def isolation(bwrap: str, hidden: Iterable[str], visible: Iterable[str],
              writable: Iterable[str] = (),
              as_root: bool | None = None, masked: Iterable[str] = ()) -> Isolation:
    """The shared part of the command line: namespaces, the read-only system, `hidden` covered.

    `hidden`: folders to cover with an empty, read-only file system (the workspace root ...);
    those that do not exist are skipped (bwrap cannot make a mount point in the read-only system).
    `visible`: files or folders bound back read-only where they would be hidden (the
    interpreter, tools). `writable`: folders bound writable at their own path, the one escape
    hatch (WRITABLE_VARIABLE); a hidden folder inside one stays hidden. `masked`: files covered
    with /dev/null (the secrets file). Order matters to bwrap: each later mount goes on top of the
    earlier ones.
    """
    options = ["--die-with-parent", "--new-session", "--unshare-pid", "--as-pid-1", "--unshare-ipc",
               "--unshare-uts"]
    if (os.geteuid() == 0) if as_root is None else as_root:
        options += ["--cap-drop", "ALL"]
    options += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    opened = [w for w in sorted({os.path.abspath(w) for w in writable}) if w != "/"
              and os.path.isdir(w)]
    for folder in opened:
        options += ["--bind", folder, folder]
    covered = ["/dev"]  # /tmp is covered too, except where a writable folder opens it again
    tail: list[str] = []

    def hide(folder: str) -> None:
        options.extend(["--tmpfs", folder])
        tail.extend(["--remount-ro", folder])
        covered.append(folder)

    folders = sorted(h for h in {os.path.abspath(h) for h in hidden} - {"/"} if os.path.isdir(h))
    for folder in folders:
        if not any(within(folder, c) for c in covered) and (
                not within(folder, "/tmp") or any(within(folder, w) for w in opened)):
            hide(folder)
    shown: list[str] = []
    for path in sorted({os.path.abspath(v) for v in visible}):
        if os.path.exists(path) and any(within(path, c) for c in (*covered, "/tmp")) and not any(
                within(path, s) for s in shown):
            options += ["--ro-bind", path, path]
            shown.append(path)
    for folder in folders:  # a hidden folder inside a visible one (a workspace inside the venv)
        if any(within(folder, s) and folder != s for s in shown):
            hide(folder)
    # also inside a folder opened writable
    for path in sorted({os.path.realpath(m) for m in masked}):
        if os.path.isfile(path) and not any(within(path, c) for c in covered):
            options += ["--ro-bind", "/dev/null", path]
    head = (bwrap, *options)
    return Isolation(bwrap, (*head, "--unshare-net", "--tmpfs", "/run"), head, tuple(tail))


def command(isolation: Isolation, sandbox: str, exec_root: str, binds: Sequence[tuple[str, str]],
            network: bool, program: Sequence[str]) -> list[str]:
    """The argv that runs `program` (the shell's argv) in `exec_root`, with `sandbox` writable.

    `binds`: (source, target) pairs bound read-only on top, in order (`input_binds`).
    """
    argv = list(isolation.head_network if network else isolation.head)
    argv += ["--bind", sandbox, sandbox]
    for source, target in binds:
        argv += ["--ro-bind", source, target]
    argv += isolation.tail
    argv += ["--chdir", exec_root, "--", *program]
    return argv


def input_binds(inputs: Sequence[str], outputs: Sequence[str]) -> list[str]:
    """The workspace-relative folders and files to bind read-only so that no input can be written.

    One bind per file would be simplest, but bwrap re-reads the whole mount table for each bind,
    so n binds cost O(n²): 100 cost ~50 ms, 1,000 cost seconds. So each input is covered by its
    highest ancestor folder that holds no declared output (`pkg/` for the sources of a package,
    `posbuild-out/dep/` for another package's outputs); only inputs that sit in a folder where
    the action also writes an output are bound one by one. Folders come before files.
    """
    blocked = {""}
    for path in outputs:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            blocked.add("/".join(parts[:depth]))
    folders: dict[str, None] = {}
    files: list[str] = []
    for path in inputs:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in blocked:
                folders[folder] = None
                break
        else:
            files.append(path)
    chosen = sorted(folders)
    kept: list[str] = []
    for folder in chosen:  # `pkg` already covers `pkg/sub`
        if not kept or not within(folder, kept[-1]):
            kept.append(folder)
    return kept + [f for f in files if not any(within(f, k) for k in kept)]


def writable_paths(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The folders WRITABLE_VARIABLE names (colon-separated absolute paths); relative ones are
    ignored."""
    return tuple(p for p in environ.get(WRITABLE_VARIABLE, "").split(":") if p.startswith("/"))


def find_bwrap() -> str | None:
    """bwrap's absolute path on posbuild's own PATH, or None."""
    return shutil.which("bwrap")


def probe(argv: Sequence[str]) -> str | None:
    """Run `argv + ["true"]` once per process: None when it works, else the reason in a few
    words."""
    key = tuple(argv)
    if key not in _probed:
        try:
            done = subprocess.run([*argv, "--", "/bin/true"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=PROBE_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as error:
            _probed[key] = f"{argv[0]}: {getattr(error, 'strerror', None) or error}"
        else:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            _probed[key] = None if done.returncode == 0 else (
                f"{argv[0]} exited with {done.returncode}" + (f": {lines[-1]}" if lines else ""))
    return _probed[key]


def choose(mode: str, hidden: Iterable[str], visible: Iterable[str],
           writable: Iterable[str] = (),
           masked: Iterable[str] = ()) -> tuple[Isolation | Landlocked | None, str]:
    """Turn `[sandbox] mode` into (how actions are isolated, a notice for the user or "").

    "folder" never probes. "landlock" and "namespace" raise SandboxUnavailable when their
    sandbox cannot run here. "auto" takes the first that works of Landlock (`landlock.py`),
    bubblewrap and the folder sandbox; falling back, it says why in one line per sandbox it could
    not use (a kernel without Landlock ABI 6 needs no word), once per process.
    """
    if mode == "folder":
        return None, ""
    unlike = ""  # why the Landlock sandbox cannot run, when the user should hear it
    if mode in ("auto", "landlock"):
        version = landlock.abi()
        fast, problem = _landlocked(hidden, visible, writable, masked) \
            if version >= landlock.MIN_ABI \
            else (None, f"the kernel has Landlock ABI {version}, {landlock.MIN_ABI} is needed")
        if fast is not None:
            return fast, ""
        if mode == "landlock":
            raise SandboxUnavailable(
                f'[sandbox] mode = "landlock" cannot run here ({problem}); set [sandbox] mode = '
                '"auto", "namespace" or "folder"')
        if version >= landlock.MIN_ABI:  # an old kernel needs no word
            unlike = problem

    def fell_back(to: str) -> list[str]:
        return [f"posbuild: the Landlock sandbox is not available ({unlike}); actions run {to}"
                ] if unlike else []
    bwrap = find_bwrap()
    if bwrap is None:
        problem_b: str | None = "bwrap not found on PATH"
        chosen = None
    else:
        chosen = isolation(bwrap, hidden, visible, writable, masked=masked)
        problem_b = probe((*chosen.head, *chosen.tail))
    if problem_b is None:
        return chosen, _once(fell_back("under bubblewrap"))
    if mode == "namespace":
        raise SandboxUnavailable(
            f'[sandbox] mode = "namespace" needs bubblewrap, which cannot run here ({problem_b}); '
            'install it (Debian/Ubuntu: apt-get install bubblewrap) or set [sandbox] mode = '
            '"auto" or "folder"')
    return None, _once([*fell_back("in the folder sandbox"),
                        f"posbuild: bubblewrap not available ({problem_b}); actions run in the "
                        "folder sandbox"])


def _landlocked(hidden: Iterable[str], visible: Iterable[str], writable: Iterable[str],
                masked: Iterable[str]) -> tuple[Landlocked | None, str]:
    """The Landlock sandbox's shared rules, or None and why it cannot run here (on a kernel
    with Landlock ABI MIN_ABI)."""
    if not _launcher:
        try:
            _launcher.append((landlock.compiled(), ""))
        except OSError as error:
            _launcher.append(("", error.strerror or str(error)))
    launcher, why_not = _launcher[0]
    if not launcher:
        return None, why_not
    try:
        fast = landlock.landlocked(launcher, hidden, visible, writable, masked)
    except OSError as error:
        return None, error.strerror or str(error)
    if fast not in _landlock_probed:
        _landlock_probed[fast] = landlock.probe(fast)
    problem = _landlock_probed[fast]
    return (fast, "") if problem is None else (None, problem)


def _once(lines: list[str]) -> str:
    """The notice lines not given yet in this process, as one text."""
    fresh = [line for line in lines if line not in _noticed]
    _noticed.update(fresh)
    return "\n".join(fresh)
