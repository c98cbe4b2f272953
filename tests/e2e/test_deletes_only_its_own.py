"""posbuild deletes only what it made: real `rm -rf` targets (the workspace, a temp HOME, a
sandbox base and a store folder holding someone else's files) must survive `clean --all`, builds,
`rollback` and `fsck --repair`; a store or sandbox base placed where posbuild would empty more than
its own files is refused when posbuild.toml is loaded (exit 3, one line naming the key and value).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import POSBUILD, Workspace

BUILD = 'genrule(name = "a", srcs = ["in.txt"], outs = ["a.txt"], cmd = "cp $< $@")\n'


def _workspace(tmp_path: Path, toml: str) -> tuple[Workspace, dict[str, str]]:
    """A workspace with one action, and an environment whose HOME is a temp folder with a
    sentinel."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "sentinel.txt").write_text("the user's file\n")
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.write({"posbuild.toml": toml, "p/BUILD": BUILD, "p/in.txt": "1\n",
              "sentinel.txt": "a source\n"})
    return ws, {"HOME": str(home)}


def _one_error_line(result, *parts: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posbuild: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_cache_dir_dot_is_refused_and_clean_all_leaves_the_workspace(tmp_path):
    """The issue's case: `[cache] dir = "."` made `clean --all` delete the whole workspace."""
    ws, env = _workspace(tmp_path, '[cache]\ndir = "."\n')
    ws.build("//...", env=env)
    result = ws.run("clean", "--all", env=env)
    _one_error_line(result, "posbuild.toml", "[cache] dir = '.'", "workspace root")
    assert (ws.root / "sentinel.txt").read_text() == "a source\n"
    assert (ws.root / "p" / "BUILD").exists()


def test_cache_dir_home_is_refused_and_clean_all_leaves_home(tmp_path):
    """`[cache] dir = "~"` deleted the home folder (here a temp HOME holding a sentinel)."""
    ws, env = _workspace(tmp_path, '[cache]\ndir = "~"\n')
    ws.build("//...", env=env)
    result = ws.run("clean", "--all", env=env)
    _one_error_line(result, "[cache] dir = '~'", "home folder")
    assert (Path(env["HOME"]) / "sentinel.txt").read_text() == "the user's file\n"


@pytest.mark.parametrize("key", ["[cache] dir", "[build] sandbox_base"])
@pytest.mark.parametrize("value, why", [
    (".", "is the workspace root"),
    ("..", "holds the workspace"),
    ("~", "is the home folder"),
    ("/", "is the root folder"),
    ("p", "among its sources"),
    ("p/sub", "among its sources"),
    ("posbuild-out/cache", "posbuild-out/"),
    (".posbuild", ".posbuild/"),
    (".posbuild/tmp", ".posbuild/"),
    ("link-to-root", "is the workspace root"),
])
def test_a_bad_placement_is_refused_at_load(tmp_path, key, value, why):
    """Each place posbuild would empty more than its own files is exit 3 before anything runs.
    (`query` writes nothing, so the old code could be checked against this without harm.)"""
    section, name = key[1:].split("] ")
    ws, env = _workspace(tmp_path, f'[{section}]\n{name} = "{value}"\n')
    (ws.root / "link-to-root").symlink_to(ws.root)
    result = ws.run("query", "//...", env=env)
    _one_error_line(result, f"{ws.root}/posbuild.toml", f"{key} = {value!r}", why)


def test_a_store_and_a_sandbox_base_inside_one_another_are_refused(tmp_path):
    shared = tmp_path / "scratch"
    ws, env = _workspace(
        tmp_path, f'[cache]\ndir = "{shared}"\n[build]\nsandbox_base = "{shared}/sandboxes"\n')
    _one_error_line(ws.run("query", "//...", env=env), "[cache] dir", "[build] sandbox_base",
                    "inside one another")


@pytest.mark.parametrize("toml", [
    '[cache]\ndir = ".cache/posbuild"\n[build]\nsandbox_base = ".sandboxes"\n',
    '[cache]\ndir = ".posbuild/store"\n[build]\nsandbox_base = ".posbuild/sandbox"\n',
    '[cache]\ndir = "{tmp}/store"\n[build]\nsandbox_base = "{tmp}/sandboxes"\n',
])
def test_good_placements_are_accepted(tmp_path, toml):
    """A hidden folder of the workspace, the default places, folders outside: all fine."""
    ws, env = _workspace(tmp_path, toml.format(tmp=tmp_path))
    assert ws.build("//...", env=env).returncode == 0
    assert ws.run("clean", "--all", env=env).returncode == 0
    assert (ws.root / "sentinel.txt").exists()


def test_a_sandbox_base_holding_other_files_survives_builds(tmp_path):
    """Every build emptied a configured `[build] sandbox_base`, other files included. A folder
    that holds others' files is refused; in a base posbuild made, files it did not make stay."""
    base = tmp_path / "scratch"
    base.mkdir()
    (base / "results.csv").write_text("a user's data\n")
    (base / "123-0").mkdir()  # even a name like a sandbox's: the folder is not posbuild's
    ws, env = _workspace(tmp_path,
                         f'[build]\nsandbox_base = "{base}"\n[sandbox]\nmode = "folder"\n')
    _one_error_line(ws.build("//...", env=env), str(base), "did not make")
    assert (base / "results.csv").read_text() == "a user's data\n" and (base / "123-0").is_dir()

    own = tmp_path / "sandboxes"
    ws.write({"posbuild.toml": f'[build]\nsandbox_base = "{own}"\n[sandbox]\nmode = "folder"\n'})
    ws.ok("//...")
    assert (own / "CACHEDIR.TAG").read_bytes().startswith(
        b"Signature: 8a477f597d28d172789f06886806bc55")
    (own / "notes.txt").write_text("dropped here later\n")
    ws.write({"p/in.txt": "2\n"})
    ws.ok("//...")
    assert ws.run("fsck", "--repair").returncode == 0
    assert ws.run("clean", "--all").returncode == 0
    assert (own / "notes.txt").read_text() == "dropped here later\n"


def test_a_store_folder_holding_other_files_is_refused(tmp_path):
    """`[cache] dir` naming an existing folder of someone else's (here one with a sentinel)."""
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work\n")
    ws, env = _workspace(tmp_path, f'[cache]\ndir = "{folder}"\n')
    _one_error_line(ws.build("//...", env=env), str(folder), "refusing to use it as the store")
    _one_error_line(ws.run("clean", "--all", env=env), str(folder))
    assert sorted(os.listdir(folder)) == ["thesis.tex"]


def test_rollback_never_deletes_a_store_under_posbuild_out(tmp_path):
    """A store under posbuild-out/ was deleted by `rollback` (files no generation lists):
    refused."""
    ws, env = _workspace(tmp_path, '[cache]\ndir = "posbuild-out/cache"\n')
    ws.build("//...", env=env)
    result = ws.run("rollback", env=env)
    _one_error_line(result, "[cache] dir = 'posbuild-out/cache'", "posbuild-out/")


def test_a_linked_posbuild_out_is_never_emptied(tmp_path):
    """posbuild-out/ replaced by a link to a folder of the user's: rollback, clean and fsck
    --repair delete nothing there (rollback and fsck --repair deleted every file the store has no
    record of)."""
    ws, env = _workspace(tmp_path, "")
    ws.ok("//...")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine\n")
    os.chmod(ws.root / "posbuild-out" / "p", 0o755)
    os.rename(ws.root / "posbuild-out", tmp_path / "old-out")
    (ws.root / "posbuild-out").symlink_to(elsewhere)
    _one_error_line(ws.run("rollback"), "posbuild-out", "symbolic link")
    _one_error_line(ws.run("clean"), "posbuild-out", "symbolic link")
    _one_error_line(ws.run("fsck", "--repair"), "posbuild-out", "symbolic link")
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"]


def test_stores_and_state_made_before_marks_are_adopted(tmp_path):
    """A workspace whose `.posbuild/` and shared store have no marks yet (made by an earlier
    posbuild) is recognised, marked on first use, and `clean --all` empties it as before."""
    store = tmp_path / "shared-store"
    ws, env = _workspace(tmp_path, f'[cache]\ndir = "{store}"\n')
    ws.ok("//...")
    for folder in (store, ws.root / ".posbuild"):
        (folder / "CACHEDIR.TAG").unlink()
    result = ws.ok("//...")
    assert "1 cached" in result.stdout
    assert (store / "CACHEDIR.TAG").exists() and (ws.root / ".posbuild" / "CACHEDIR.TAG").exists()
    (store / "CACHEDIR.TAG").unlink()
    assert ws.run("clean", "--all").returncode == 0
    assert sorted(os.listdir(store)) == ["CACHEDIR.TAG", "gc.lock"]
    assert (ws.root / "sentinel.txt").exists()


def test_clean_all_keeps_the_lock_file_others_wait_on(tmp_path):
    """`clean --all` deleted `.posbuild/lock` while other commands waited on it; they then held a
    lock on a deleted file, and the next command locked a new one beside them."""
    ws, env = _workspace(tmp_path, "")
    ws.ok("//...")
    lock = ws.root / ".posbuild" / "lock"
    inode = lock.stat().st_ino
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([*POSBUILD, "clean", "--all"], cwd=ws.root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert proc.poll() is None, "clean did not wait for the lock"
        assert (ws.root / "posbuild-out").exists()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "waiting for it" in err
    assert lock.stat().st_ino == inode
    assert not (ws.root / "posbuild-out").exists()


def test_clean_beside_running_builds_never_breaks_either(tmp_path):
    """Builds (each request writing its graph cache, each action the store) and `clean --all`
    in two loops for a few seconds: both always finish with exit 0 and no traceback (builds used
    to write `.posbuild/` before taking the lock, and clean deleted the lock file itself), and
    fsck then passes."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    files = {"posbuild.toml": '[sandbox]\nmode = "folder"\n'}
    for p in range(3):
        files[f"p{p}/BUILD"] = "".join(f'genrule(name = "t{i}", outs = ["t{i}.txt"], cmd = "echo '
                                       f'{p} {i} > $@")\n'
                                       for i in range(40))
    ws.write(files)
    script = tmp_path / "loop.sh"  # runs its arguments again and again for 12 s
    script.write_text(
        'end=$((SECONDS + 12))\nwhile [ $SECONDS -lt $end ]; do "$@" || echo "exit $?" >&2; done\n')
    builds = [subprocess.Popen(["bash", str(script), *POSBUILD, "build", "-q", pattern],
                               cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for pattern in ("//...", "//p1/...", "//p2:all")]
    cleans = subprocess.Popen(["bash", str(script), *POSBUILD, "clean", "--all"], cwd=ws.root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors = [proc.communicate(timeout=120)[1] for proc in (*builds, cleans)]
    noise = "posbuild: another posbuild command is running in this workspace; waiting for it"
    problems = [line for text in errors for line in text.splitlines() if line and line != noise]
    assert not problems, "\n".join(problems[:40])
    ws.ok("//...")
    check = ws.run("fsck")
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_linked_state_folder_pointing_at_home_is_neither_used_nor_marked(tmp_path):
    """`.posbuild` as a link to the home folder: posbuild must not adopt it (it would write its
    store there, mark home as a cache that backups skip, and `clean --all` would empty it)."""
    ws, env = _workspace(tmp_path, "")
    home = Path(env["HOME"])
    (ws.root / ".posbuild").symlink_to(home)
    for args in (("build", "//..."), ("clean", "--all")):
        _one_error_line(ws.run(*args, env=env), f"{ws.root}/.posbuild", "did not make")
    assert sorted(os.listdir(home)) == ["sentinel.txt"]


def test_another_program_s_cachedir_tag_does_not_make_a_folder_posbuild_s(tmp_path):
    """A folder another tool tagged (Cargo's target/, ~/.cache/...) is not posbuild's store."""
    folder = tmp_path / "target"
    folder.mkdir()
    (folder / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n# cargo\n")
    (folder / "debug.bin").write_text("someone else's\n")
    ws, env = _workspace(tmp_path, f'[cache]\ndir = "{folder}"\n')
    _one_error_line(ws.build("//...", env=env), str(folder), "refusing to use it as the store")
    _one_error_line(ws.run("clean", "--all", env=env), str(folder))
    assert sorted(os.listdir(folder)) == ["CACHEDIR.TAG", "debug.bin"]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file of the workspace but the lock file, with its size and mtime."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if path != str(root / ".posbuild" / "lock"):
                info = os.lstat(path)
                found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.mark.parametrize("args", [
    ("build", "//p:all"),  # a request never built before: loading it writes the graph cache
    ("lock", "//p:all"),
    ("env", "approve"),
    ("clean",),
    ("clean", "--all"),
    ("rollback",),
    ("gc", "--max-size", "0"),
    ("fsck", "--repair"),
    ("cache", "import", "--allow-unsigned", "ARCHIVE"),
])
def test_a_command_that_writes_waits_for_the_lock_before_writing_anything(tmp_path, args):
    """While another command holds the workspace lock, a command that writes changes nothing
    (builds wrote the graph cache before they locked, `env approve` wrote posbuild.lock without
    the lock); once the lock is free it finishes."""
    ws, env = _workspace(tmp_path, "")
    ws.ok("//...")
    archive = tmp_path / "cache.tar"
    assert ws.run("cache", "export", str(archive)).returncode == 0
    args = tuple(str(archive) if arg == "ARCHIVE" else arg for arg in args)
    ws.write({"p/in.txt": "2\n"})
    before = _snapshot(ws.root)
    with open(ws.root / ".posbuild" / "lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([*POSBUILD, *args], cwd=ws.root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        time.sleep(2)
        running = proc.poll() is None
        after = _snapshot(ws.root)
    out, err = proc.communicate(timeout=120)
    assert running, f"{' '.join(args)} did not wait for the lock: {out}{err}"
    changed = sorted(path for path in before.keys() | after.keys()
                     if before.get(path) != after.get(path))
    assert not changed, f"{' '.join(args)} wrote while another command held the lock: {changed}"
    assert proc.returncode == 0, out + err
