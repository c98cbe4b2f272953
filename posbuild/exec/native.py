"""Layer 1: a sandbox's staging, removal and command start, each one call into C (native.c).

Each is a few dozen system calls per action. Made from Python, every one of them is an
interpreter call that lets go of the interpreter's lock and takes it back, and with two worker
threads the lock changes hands at nearly each: on a cold build of 10,000 cheap actions that
hand-over, not the system calls, was a large part of posbuild's own time (docs/benchmarks.md).
In C each of the three lets go of the lock once.

native.c is compiled on first use into the user's cache (compiled.py) and loaded with ctypes.
Where it cannot be (no C compiler, a libc older than glibc 2.34) the Python code does the same
work (stage.py, sandbox.py), as it does for anything unusual the C code hands back (a folder
input, a sandbox the command changed, an error): every function here returns None or False for
"do it in Python", never raising for it. `POSBUILD_TEST_NO_NATIVE=1` turns it off, so that the
Python paths are tested as well.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

SOURCE = Path(__file__).with_name("native.c")
_lock = threading.Lock()
_library: Any = None  # the loaded library; False: none can be had in this process


@dataclass(frozen=True, slots=True)
class Spawned:
    """A command `spawn` started: posbuild's child, as a Popen's is, waited for by its pid (also
    its process group)."""

    pid: int


def _loaded() -> Any:
    """The library, compiled and loaded on first use; None where it cannot be."""
    global _library
    if _library is None:
        with _lock:
            if _library is None:
                _library = _load() or False
    return _library or None


def _load() -> Any:
    import ctypes

    from posbuild.exec.compiled import compile_cached

    if os.environ.get("POSBUILD_TEST_NO_NATIVE"):
        return None
    try:
        library = ctypes.CDLL(compile_cached(SOURCE, "native", (["-shared", "-fPIC"],)),
                              use_errno=True)
    except OSError:
        return None
    text, number, big = ctypes.c_char_p, ctypes.c_int, ctypes.c_longlong
    library.posbuild_stage.argtypes = (text, text, text, number, number, big, number)
    library.posbuild_remove.argtypes = (text, text, number)
    library.posbuild_spawn.argtypes = (text, text, number, text, number, text, number, number,
                                       number)
    for function in (library.posbuild_stage, library.posbuild_remove, library.posbuild_spawn):
        function.restype = number
    return library


def available() -> bool:
    """Whether the C helpers run in this process."""
    return _loaded() is not None


def paths_blob(paths: Sequence[str]) -> bytes:
    """Paths as native.c takes them: one buffer of NUL-terminated strings."""
    return os.fsencode("\0".join(paths)) + b"\0"


def stage(root: str, sandbox: str, paths: bytes, count: int, inputs: int, limit: int,
          link_large: bool) -> bool | None:
    """Make `sandbox` as stage.stage does, from the `count` paths of `paths` (paths_blob), the
    first `inputs` of them the inputs. True: made; False: stopped with part of it made (remove
    it, then stage in Python); None: nothing made (stage in Python)."""
    library = _loaded()
    if library is None:
        return None
    done = library.posbuild_stage(os.fsencode(root), os.fsencode(sandbox), paths, count,
                                  inputs, limit, link_large)
    return True if done == 0 else None if done == 2 else False


def remove(sandbox: str, paths: bytes, count: int) -> bool:
    """Remove a sandbox `stage` made from `paths`; False when something else is there or
    something went wrong (then list and remove what is left)."""
    library = _loaded()
    return library is not None and \
        library.posbuild_remove(os.fsencode(sandbox), paths, count) == 0


def spawn(program: str, argv: Sequence[str], env: Mapping[str, str], cwd: str, stdin: int,
          stdout: int, stderr: int) -> Spawned | None:
    """Start `program` as subprocess.Popen(argv, executable=program, cwd=cwd, env=env,
    stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True) does; None
    without the library or for a NUL byte in an argument (Popen then says so). Raises OSError,
    as Popen, when it cannot be exec'd."""
    library = _loaded()
    if library is None:
        return None
    words = "\0".join(argv)
    variables = "\0".join([f"{name}={value}" for name, value in env.items()])
    if words.count("\0") != len(argv) - 1 or variables.count("\0") != max(len(env) - 1, 0) \
            or "\0" in program or "\0" in cwd or any("=" in name for name in env):
        return None
    import ctypes

    pid = library.posbuild_spawn(os.fsencode(program), os.fsencode(words) + b"\0", len(argv),
                                 os.fsencode(variables) + b"\0", len(env), os.fsencode(cwd),
                                 stdin, stdout, stderr)
    if pid < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), program)
    return Spawned(pid)
