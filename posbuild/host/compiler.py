"""Layer 0: compile a C source shipped beside posbuild, once per machine and version of it.

Python cannot run between fork and exec without costing milliseconds, and the wheel is built
by hatchling (no compiled extension): so the little C posbuild needs (the Landlock launcher,
the spawn that pins a command in its own process) is compiled on first use with the system's
C compiler (`cc` on PATH) into the user's cache (`$XDG_CACHE_HOME/posbuild/`, else
`~/.cache/posbuild/`), under a name carrying the digest of its source, so an upgrade compiles
anew. Written to a temporary name and renamed, so two builds compiling at once both end with a
whole file; a digest of the compiled file sits beside it, and a file that no longer matches it
(truncated, overwritten) is compiled again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

COMPILE_TIMEOUT = 120.0  # seconds


def cache_folder(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Where compiled files live: `$XDG_CACHE_HOME/posbuild`, else `~/.cache/posbuild`."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "posbuild"


def product_path(source: Path, folder: Path | None = None, suffix: str = "") -> Path:
    """Where `source` compiles to: its stem, the machine and the source's digest name it."""
    import hashlib

    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return (folder or cache_folder()) / f"{source.stem}-{os.uname().machine}-{digest}{suffix}"


def compiled(source: Path, folder: Path | None = None, library: bool = False) -> str:
    """The compiled `source` (a program, or with `library` a shared library), compiled first when
    it is missing or does not match its digest file. Raises OSError with the reason when it
    cannot be had (no compiler, it failed ...)."""
    import hashlib
    import tempfile

    target = product_path(source, folder, ".so" if library else "")
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
    # a static program starts faster; not every system can link one
    tries = [["-shared", "-fPIC"]] if library else [["-static"], []]
    try:
        for flags in tries:
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
