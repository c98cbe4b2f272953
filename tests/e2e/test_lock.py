"""`posbuild lock` pins source digests in posbuild.lock; a changed pinned file is ORCH-03 (exit
13)."""

from __future__ import annotations

import json

from blake3 import blake3

from conftest import Workspace, counts, executed_labels

FILES = {
    "data/raw.csv": "a,b\n1,2\n",
    "data/other.csv": "c\n",
    "tools/clean.sh": "cat \"$1\"\n",
    "tools/BUILD": 'exports_files(["clean.sh"])\n',
    "data/BUILD": """
        genrule(name = "clean", srcs = ["raw.csv"], outs = ["clean.csv"], tools = ["//tools:clean.sh"],
                cmd = "sh $(location //tools:clean.sh) $(location raw.csv) > $@")
        genrule(name = "other", srcs = ["other.csv"], outs = ["other.out"], cmd = "cat $< > $@")
        """,  # noqa: E501
    "model/BUILD": """
        genrule(name = "train", srcs = ["//data:clean"], outs = ["model.txt"], cmd = "cat $< > $@")
        """,
}


def digest(text: str) -> str:
    return blake3(text.encode()).hexdigest()


def read_lock(ws: Workspace) -> dict:  # type: ignore[type-arg]
    return json.loads((ws.root / "posbuild.lock").read_text())


def test_lock_writes_the_sources_and_keeps_the_environment(ws: Workspace) -> None:
    ws.write(FILES)
    environment = {"hash": "ab" * 32, "fingerprint": {"python": "CPython 3.11"}}
    (ws.root / "posbuild.lock").write_text(json.dumps({"format": 1, "sources": {},
                                                       "environment": environment}))
    result = ws.run("lock", "//model:train")
    assert result.returncode == 0, result
    assert result.stdout == "locked 2 source files in posbuild.lock\n"
    lock = read_lock(ws)
    assert lock["sources"] == {"data/raw.csv": digest(FILES["data/raw.csv"]),
                               "tools/clean.sh": digest(FILES["tools/clean.sh"])}
    assert lock["environment"] == environment
    assert not (ws.root / "posbuild-out").exists()  # locking builds nothing

    result = ws.run("lock")  # default //...: adds other.csv, keeps the rest
    assert result.stdout == "locked 3 source files in posbuild.lock\n"
    assert sorted(read_lock(ws)["sources"]) == ["data/other.csv", "data/raw.csv", "tools/clean.sh"]


def test_changed_pinned_file_is_orch03_and_runs_nothing_until_relocked(ws: Workspace) -> None:
    ws.write(FILES)
    assert ws.run("lock").returncode == 0
    assert counts(ws.ok())["executed"] == 3
    assert counts(ws.ok())["executed"] == 0  # pins checked from the recorded state

    changed = "a,b\n1,3\n"
    ws.write({"data/raw.csv": changed})
    expected = ("posbuild: ORCH-03 checksum inconsistency: data/raw.csv is pinned in "
                f"posbuild.lock to {digest(FILES['data/raw.csv'])} but hashes to "
                f"{digest(changed)}; run `posbuild lock` to accept the change\n")
    for args in (("//model:train",), ("-n",), ()):
        result = ws.build(*args)
        assert result.returncode == 13, result
        assert result.stderr == expected
        assert result.stdout == ""
    assert ws.out("data/clean.csv") == FILES["data/raw.csv"]  # nothing ran

    # a request that does not read the pinned file ignores its pin
    result = ws.ok("//data:other")
    assert counts(result)["executed"] == 0

    assert ws.run("lock").stdout == "locked 3 source files in posbuild.lock\n"
    result = ws.ok()
    assert executed_labels(result) == ["//data:clean", "//model:train"]
    assert ws.out("model/model.txt") == changed


def test_changed_pinned_tool_is_orch03(ws: Workspace) -> None:
    ws.write(FILES)
    assert ws.run("lock").returncode == 0
    ws.write({"tools/clean.sh": "cat \"$1\"; echo\n"})
    result = ws.build()
    assert result.returncode == 13
    assert "ORCH-03 checksum inconsistency: tools/clean.sh is pinned in posbuild.lock" \
            in result.stderr
    assert not (ws.root / "posbuild-out").exists()


def test_touched_but_unchanged_pinned_file_builds(ws: Workspace) -> None:
    ws.write(FILES)
    assert ws.run("lock").returncode == 0
    ws.ok()
    ws.write({"data/raw.csv": FILES["data/raw.csv"]})  # same bytes, new mtime
    assert counts(ws.ok())["executed"] == 0


def test_pins_of_deleted_files_are_dropped(ws: Workspace) -> None:
    ws.write(FILES)
    assert ws.run("lock").returncode == 0
    (ws.root / "data/other.csv").unlink()
    ws.write({"data/BUILD": FILES["data/BUILD"].split('        genrule(name = "other"')[0]})
    result = ws.run("lock")
    assert result.returncode == 0, result
    assert result.stdout == ("locked 2 source files in posbuild.lock\n"
                             "dropped 1 pin of a file that no longer exists\n")
    assert sorted(read_lock(ws)["sources"]) == ["data/raw.csv", "tools/clean.sh"]


def test_lock_reports_bad_patterns(ws: Workspace) -> None:
    ws.write(FILES)
    result = ws.run("lock", "//nope:x")
    assert result.returncode == 3
    assert result.stderr.startswith("posbuild: ")
    assert not (ws.root / "posbuild.lock").exists()
