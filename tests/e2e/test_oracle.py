"""The correctness oracle (tests/oracle.py) itself: it passes on what a real build leaves, and
fails, naming the action and the file, on each real way a build's result can be wrong.

Every failing case first shows the oracle passing on the same workspace before the damage, and
passing again once a build has repaired it, so it is the damage alone that it catches.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from conftest import Workspace
from oracle import assert_correct_build
from posbuild.store.lmdbstore import Store

# Three steps deep, a diamond, an executable output, a passed variable and a no-cache action.
FILES = {
    "posbuild.toml": '[env]\npass = ["GREETING"]\n',
    "pkg/a.txt": "alpha\n",
    "pkg/b.txt": "beta\n",
    "pkg/BUILD": """
        genrule(name = "left", srcs = ["a.txt"], outs = ["left.txt"], cmd = "cat $< > $@")
        genrule(name = "right", srcs = ["b.txt"], outs = ["right.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "join", srcs = [":left", ":right"], outs = ["join.txt"], cmd = "cat $(SRCS) > $@")
        genrule(name = "greet", srcs = [":join"], outs = ["greet.sh"],
                cmd = "echo \\"echo $$GREETING\\" > $@; cat $< >> $@; chmod 755 $@")
        genrule(name = "stamp", srcs = [":join"], outs = ["stamp.txt"], cmd = "wc -c < $< > $@",
                tags = ["no-cache"])
    """,  # noqa: E501
}
GREETING = {"GREETING": "hello"}


@pytest.fixture
def built(ws: Workspace) -> Workspace:
    """The workspace, built, and found correct by the oracle."""
    ws.write(FILES)
    result = ws.run("build", "//...", env=GREETING)
    assert result.returncode == 0, result.stderr
    assert_correct_build(ws, environ=GREETING)
    return ws


def _rewrite(path: os.PathLike[str], data: bytes) -> None:
    """Write over a read-only output behind posbuild's back, keeping its mtime."""
    before = os.stat(path)
    os.chmod(path, stat.S_IMODE(before.st_mode) | stat.S_IWUSR)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, stat.S_IMODE(before.st_mode))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _repaired(ws: Workspace) -> None:
    """Build again, and the oracle passes once more."""
    result = ws.run("build", "//...", env=GREETING)
    assert result.returncode == 0, result.stderr
    assert_correct_build(ws, environ=GREETING)


def test_passes_on_a_real_build_and_on_a_rebuild_after_a_change(built):
    assert (built.root / "posbuild-out/pkg/greet.sh").read_text() == "echo hello\nalpha\nBETA\n"
    built.write({"pkg/a.txt": "ALPHA again\n"})
    _repaired(built)
    assert_correct_build(built, patterns=("//pkg:left", "//pkg:join"), environ=GREETING)


def test_fails_on_an_output_rewritten_behind_posbuilds_back(built):
    _rewrite(built.root / "posbuild-out/pkg/join.txt", b"ALPHA\nbeta\n")  # the same size
    with pytest.raises(AssertionError, match=r"//pkg:join: posbuild-out/pkg/join\.txt on disk "
                                             r"\(11 bytes, \w+\) is not what the store's result"):
        assert_correct_build(built, environ=GREETING)
    _repaired(built)


def test_fails_on_an_output_that_lost_its_executable_bit(built):
    os.chmod(built.root / "posbuild-out/pkg/greet.sh", 0o444)
    with pytest.raises(AssertionError,
                       match=r"//pkg:greet: posbuild-out/pkg/greet\.sh is not executable on disk"):
        assert_correct_build(built, environ=GREETING)


def test_fails_on_a_missing_output(built):
    (built.root / "posbuild-out/pkg/left.txt").unlink()
    with pytest.raises(AssertionError, match=r"//pkg:left: output posbuild-out/pkg/left\.txt "
                                             "is missing"):
        assert_correct_build(built, environ=GREETING)
    _repaired(built)


def test_fails_on_a_source_changed_after_the_build(built):
    built.write({"pkg/b.txt": "gamma\n"})
    with pytest.raises(AssertionError, match=r"//pkg:right: the store holds no result for key "
                                             r"\w+, computed from the inputs on disk "
                                             r"\(pkg/b\.txt=\w+\)"):
        assert_correct_build(built, environ=GREETING)
    _repaired(built)


def test_fails_on_a_build_file_changed_after_the_build(built):
    built.write({"pkg/BUILD": FILES["pkg/BUILD"].replace("tr a-z A-Z", "tr a-y A-Y")})
    with pytest.raises(AssertionError, match="//pkg:right: the store holds no result"):
        assert_correct_build(built, environ=GREETING)
    _repaired(built)


def test_fails_in_another_environment_than_the_builds(built):
    """The passed variables and h_E are part of every key (the first action is the first found
    wrong): the oracle computes them as the build did, from the environment it is given."""
    with pytest.raises(AssertionError, match="//pkg:left: the store holds no result"):
        assert_correct_build(built, environ={"GREETING": "bye"})
    other = {TEST_FINGERPRINT: json.dumps({"os.release": "0.0-oracle"})}
    with pytest.raises(AssertionError, match="//pkg:left: the store holds no result"):
        assert_correct_build(built, environ={**GREETING, **other})
    result = built.run("build", "//...", env={**GREETING, **other})
    assert result.returncode == 0, result.stderr
    assert_correct_build(built, environ={**GREETING, **other})


TEST_FINGERPRINT = "POSBUILD_TEST_FINGERPRINT"


def _store(ws: Workspace) -> Store:
    return Store(ws.root / ".posbuild/store")


def test_fails_when_the_store_lost_the_results(built):
    store = _store(built)
    try:
        store.remove(results=[key for key, _ in store.iter_results()])
    finally:
        store.close()
    with pytest.raises(AssertionError, match="//pkg:left: the store holds no result"):
        assert_correct_build(built, environ=GREETING)
    _repaired(built)


def test_fails_on_a_fresh_store(built):
    store_dir = built.root / ".posbuild/store"
    shutil.rmtree(store_dir)
    with pytest.raises(AssertionError, match="left no store"):
        assert_correct_build(built, environ=GREETING)
    _store(built).close()  # an empty store, as a command opening it makes
    with pytest.raises(AssertionError, match="//pkg:left: the store holds no result"):
        assert_correct_build(built, environ=GREETING)
    _repaired(built)


def test_fails_when_a_blob_a_result_names_is_missing(built):
    store = _store(built)
    try:
        right = (built.root / "posbuild-out/pkg/right.txt").read_bytes()
        blob = next(output.digest for _, result in store.iter_results()
                    for output in result.outputs if output.path == "posbuild-out/pkg/right.txt")
        store.remove(blobs=[blob])
    finally:
        store.close()
    assert right == b"BETA\n"
    with pytest.raises(AssertionError, match=r"//pkg:right: the store's result for key \w+: "
                                             r"blob \w+: .*missing"):
        assert_correct_build(built, environ=GREETING)


def test_fails_on_a_module_a_py_task_imports_changed_after_the_build(ws):
    """A py_task's inputs include the workspace modules its script imports, transitively."""
    ws.write({
        "app/BUILD": 'py_task(name = "report", script = "report.py", outs = ["out.txt"], '
                     'args = ["$@"])\n',
        "app/report.py": "import sys\nfrom lib import fmt\n"
                         "open(sys.argv[1], 'w').write(fmt.NAME)\n",
        "app/lib/__init__.py": "",
        "app/lib/fmt.py": "from . import style\nNAME = 'fmt' + style.MARK\n",
        "app/lib/style.py": "MARK = '!'\n",
    })
    ws.ok("//...")
    assert_correct_build(ws)
    ws.write({"app/lib/style.py": "MARK = '?'\n"})
    with pytest.raises(AssertionError, match=r"//app:report: the store holds no result .*"
                                             r"app/lib/style\.py="):
        assert_correct_build(ws)
    ws.ok("//...")
    assert_correct_build(ws)


def test_passes_on_workspaces_sharing_one_store(tmp_path):
    """A `[cache] dir` shared by two workspaces is opened as each of them (its tag)."""
    for name in ("a", "b"):
        space = Workspace(tmp_path / name)
        space.write({"posbuild.toml": f'[cache]\ndir = "{tmp_path / "shared"}"\n',
                     "pkg/in.txt": f"{name}\n",
                     "pkg/BUILD": 'genrule(name = "x", srcs = ["in.txt"], outs = ["x.txt"], '
                                  'cmd = "cat $< > $@")\n'})
        space.ok("//...")
        assert_correct_build(space)
    assert not (tmp_path / "a/.posbuild/store").exists()
