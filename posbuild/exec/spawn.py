"""Layer 0: start a command pinned to its processors without confining the thread that starts it.

A forked child inherits its thread's CPU mask, so with `subprocess` the only exact way to pin a
command is to confine the spawning thread first. A worker thread confined like that shares its
command's processor with it: its Python (concluding the last action, staging the next) and its
command run one after the other on one processor while the other may idle, and freeing it
after each start makes it migrate at every start instead. Either costs a cold build of cheap
actions a fifth of its time. spawn.c (compiled on first use, host/compiler.py) sets the mask
in the command's own process, between vfork and exec, and does what `subprocess.Popen` does
for the sandbox (a session, the three descriptors, a umask, a working folder, every other
descriptor closed, Python's ignored signals restored) in one call that lets go of the
interpreter lock.

`load()` is None where the library cannot be had (no compiler, no `vfork`): the sandbox
then starts commands with `subprocess` and confines its worker threads, as exactly and more
slowly.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from posbuild.host import compiler

if TYPE_CHECKING:
    import ctypes

SOURCE = Path(__file__).with_name("spawn.c")

# the child's step that failed (spawn.c): the file an error names
_SESSION, _PIN, _FDS, _CWD, _EXEC = range(1, 6)


@dataclass(frozen=True, slots=True)
class Spawned:
    """A command `Spawn.start` started: posbuild's child, and the leader of its own session
    (its pid is its process group's)."""

    pid: int


class Spawn:
    """The compiled spawn, loaded (`load`)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        import ctypes  # imported here: only a build that runs commands needs it

        self._int32, self._int, self._byref = ctypes.c_int32, ctypes.c_int, ctypes.byref
        self._call = library.posbuild_spawn
        self._call.restype = ctypes.c_long
        self._call.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                               ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int32),
                               ctypes.c_int, ctypes.POINTER(ctypes.c_int)]

    def start(self, program: str, argv: Sequence[str], env: Mapping[str, str], cwd: str,
              stdin: int, stdout: int, stderr: int, umask: int = -1,
              processors: Sequence[int] = ()) -> Spawned:
        """Start `program` with `argv` and exactly `env` in `cwd`, in a session of its own,
        with the three descriptors and `umask` (-1: posbuild's) given, on `processors` (none:
        posbuild's mask). Raises OSError as `subprocess.Popen` would (the program, or the
        folder, named)."""
        packed_argv = b"".join(os.fsencode(word) + b"\0" for word in argv)
        packed_env = b"".join(os.fsencode(f"{k}={v}\0") for k, v in env.items())
        if packed_argv.count(0) != len(argv) or packed_env.count(0) != len(env):
            raise ValueError("embedded null byte")
        cpus = (self._int32 * len(processors))(*processors)
        step = self._int(0)
        result = self._call(os.fsencode(program), packed_argv, len(argv), packed_env, len(env),
                            os.fsencode(cwd), stdin, stdout, stderr, umask, cpus,
                            len(processors), self._byref(step))
        if result >= 0:
            return Spawned(result)
        error = -result
        named = {_CWD: cwd, _EXEC: program}.get(step.value)
        if named is None:
            raise OSError(error, os.strerror(error))
        raise OSError(error, os.strerror(error), named)


_loaded: list[Spawn | None] = []  # the process's one answer, once asked
_loading = threading.Lock()


def load(folder: Path | None = None) -> Spawn | None:
    """This process's spawn, compiled and loaded at the first call; None when it cannot be had
    here (no compiler, a system without `vfork`: asked once per process)."""
    with _loading:
        if not _loaded:
            import ctypes

            try:
                _loaded.append(Spawn(ctypes.CDLL(compiler.compiled(SOURCE, folder,
                                                                   library=True))))
            except (OSError, AttributeError):
                _loaded.append(None)
        return _loaded[0]
