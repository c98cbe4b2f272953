"""§11: a rebuild with nothing changed leaves the store's results, blobs and generations exactly
as they were — whether it is settled by stat alone, by key lookups, or by restoring outputs."""

from pathlib import Path

import lmdb

from conftest import counts

WORKSPACE = {
    "a/in.txt": "alpha\n",
    "a/BUILD": """
        genrule(name = "up", srcs = ["in.txt"], outs = ["up.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "twice", srcs = [":up"], outs = ["twice.txt", "log.txt"],
                cmd = "cat $< $< > $(location twice.txt); echo done > $(location log.txt); echo noise >&2")
    """,  # noqa: E501
    "b/BUILD": """
        genrule(name = "uses_a", srcs = ["//a:twice.txt"], outs = ["b.txt"], cmd = "wc -c < $< > $@")
    """,  # noqa: E501
}
TABLES = (b"results", b"blobs", b"generations")


def dump(root: Path) -> dict[bytes, dict[bytes, bytes]]:
    """Every row of the tables that must not change, read straight from LMDB."""
    env = lmdb.open(str(root / ".posbuild/store/db"), max_dbs=16, readonly=True, lock=False)
    try:
        tables = {}
        with env.begin() as txn:
            for name in TABLES:
                tables[name] = dict(txn.cursor(db=env.open_db(name, txn=txn, create=False)))
        return tables
    finally:
        env.close()


def test_noop_rebuild_settled_by_stat_leaves_the_store_unchanged(ws):
    ws.write(WORKSPACE)
    ws.ok("//...")
    before = dump(ws.root)
    assert len(before[b"results"]) == 3 and len(before[b"generations"]) == 1
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 3, "failed": 0}
    assert dump(ws.root) == before


def test_rebuild_through_key_lookups_leaves_the_store_unchanged(ws):
    ws.write(WORKSPACE)
    ws.ok("//...")
    before = dump(ws.root)
    for state in (ws.root / ".posbuild/graphs").glob("*.state"):
        state.unlink()  # forget what is up to date: every action is looked up by key again
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 3, "failed": 0}
    assert dump(ws.root) == before


def test_rebuild_after_clean_restores_outputs_without_touching_results_or_blobs(ws):
    ws.write(WORKSPACE)
    ws.ok("//...")
    before = dump(ws.root)
    assert ws.run("clean").returncode == 0
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 3, "failed": 0}
    assert dump(ws.root) == before


def test_two_identical_builds_from_nothing_write_identical_results_and_blobs(ws, tmp_path):
    ws.write(WORKSPACE)
    ws.ok("//...")
    first = dump(ws.root)
    assert ws.run("clean", "--all").returncode == 0
    ws.ok("//...")
    second = dump(ws.root)
    assert second[b"results"] == first[b"results"]
    assert second[b"blobs"] == first[b"blobs"]
