"""Layer 0: posbuild's C sources, compiled once per machine into the user's cache.

The wheel is built by hatchling, without a compiled extension, and a build tool should install
with `pip` alone; so the little C that posbuild has (the Landlock launcher, the native sandbox
helpers) is shipped as source and compiled on first use with the system's compiler (`cc` on
PATH) into `$XDG_CACHE_HOME/posbuild/` (else `~/.cache/posbuild/`). The file's name carries the
digest of its source, so an upgrade compiles anew; it is written to a temporary name and renamed,
so two builds compiling at once both end with a whole file; a digest of the compiled file sits
beside it, and one that no longer matches (truncated, overwritten) is compiled again. Where it
cannot be compiled the caller says what it does instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

COMPILE_TIMEOUT = 120.0  # seconds


def cache_folder(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Where compiled files live: `$XDG_CACHE_HOME/posbuild`, else `~/.cache/posbuild`."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "posbuild"


def compiled_path(source: Path, stem: str, folder: Path | None = None) -> Path:
    """Where `source` compiled is kept: its name carries the source's digest."""
    import hashlib

    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return (folder or cache_folder()) / f"{stem}-{os.uname().machine}-{digest}"


def compile_cached(source: Path, stem: str, flag_sets: Sequence[Sequence[str]],
                   folder: Path | None = None) -> str:
    """The path of `source` compiled, compiling it first when it is missing or does not match
    its digest file; `flag_sets` are tried in turn (the first that compiles is kept). Raises
    OSError with the reason when it cannot be had (no compiler, it failed ...)."""
    import hashlib
    import tempfile

    target = compiled_path(source, stem, folder)
    stamp = target.with_name(target.name + ".sha256")
    try:
        if hashlib.sha256(target.read_bytes()).hexdigest() == stamp.read_text().strip():
            return str(target)
    except OSError:
        pass
    compiler = shutil.which("cc")
    if compiler is None:
        raise OSError("no C compiler (cc) on PATH")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    except OSError as error:  # a read-only home ...: say where ($XDG_CACHE_HOME moves it)
        raise OSError(f"cannot write in {target.parent}: {error.strerror}") from None
    os.close(fd)
    try:
        for flags in flag_sets:
            try:
                done = subprocess.run([compiler, "-O2", *flags, "-o", temporary, str(source)],
                                      stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=COMPILE_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise OSError(f"{compiler} took over {COMPILE_TIMEOUT:.0f} s") from None
            if done.returncode == 0:
                break
        else:
            said = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise OSError(f"{compiler} failed" + (f": {said[-1]}" if said else ""))
        os.chmod(temporary, 0o755)
        digest = hashlib.sha256(Path(temporary).read_bytes()).hexdigest()
        stamp_temporary = temporary + ".sha256"
        Path(stamp_temporary).write_text(digest + "\n")
        os.replace(temporary, target)
        os.replace(stamp_temporary, stamp)
    finally:
        for leftover in (temporary, temporary + ".sha256"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return str(target)
