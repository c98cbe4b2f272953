"""Layer 0: which processor the calling thread runs on now (`sched_getcpu`).

posbuild pins each command to processors of its own (exec/sandbox.py). Choosing among equally
used ones by number alone sends every build's first command to processor 0: two builds side by
side (two workspaces, two CI jobs) then share one processor while another idles, and each takes
twice as long. The processor the kernel runs the spawning thread on is one it chose with the
whole machine's load in view, so among equals that one is taken first.
"""

from __future__ import annotations

from typing import Callable

_getcpu: Callable[[], int] | None = None


def current_processor() -> int:
    """The number of the processor the calling thread runs on, or -1 where the system cannot
    say. The C library's `sched_getcpu` (a vDSO read on Linux: well under a microsecond), called
    holding the interpreter lock (a call that let it go would hand it to another thread and wait
    to get it back, far dearer than the call), and looked up on first use: ctypes costs a few
    milliseconds to import, paid only by a build that runs commands."""
    global _getcpu
    if _getcpu is None:
        _getcpu = _lookup()
    return _getcpu()


def _lookup() -> Callable[[], int]:
    try:
        import ctypes

        function = ctypes.PyDLL(None).sched_getcpu
    except (ImportError, OSError, AttributeError):
        return lambda: -1
    function.restype = ctypes.c_int
    function.argtypes = []
    return function
