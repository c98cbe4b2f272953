"""`posbuild build --verify`: actions with a cached result run again and must reproduce it byte
for byte; a difference is ORCH-04 (exit 14) and the cached result is not replaced."""

from conftest import counts

import lmdb

WORKSPACE = {
    "pkg/in.txt": "data\n",
    "pkg/BUILD": """
        genrule(name = "steady", srcs = ["in.txt"], outs = ["steady.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "clock", outs = ["clock.txt"], cmd = "date +%s%N > $@")
    """,  # noqa: E501
}


def results(root):
    env = lmdb.open(str(root / ".posbuild/store/db"), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor(db=env.open_db(b"results", txn=txn, create=False)))
    finally:
        env.close()


def test_deterministic_actions_are_re_executed_and_pass(ws):
    ws.write(WORKSPACE)
    ws.ok("//pkg:steady")
    result = ws.build("--verify", "//pkg:steady")
    assert result.returncode == 0, result.stderr
    assert counts(result) == {"executed": 1, "cached": 0, "failed": 0}
    assert ws.out("pkg/steady.txt") == "DATA\n"


def test_a_cached_result_that_a_rerun_does_not_reproduce_is_orch_04(ws):
    ws.write(WORKSPACE)
    ws.ok("//...")
    before = results(ws.root)
    result = ws.build("--verify", "//...")
    assert result.returncode == 14
    assert ("FAILED //pkg:clock: ORCH-04 non-deterministic execution: posbuild-out/pkg/clock.txt: "
            "the cached result has 20 bytes, this run has 20 bytes, first difference at byte"
            ) in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "posbuild: ORCH-04 non-deterministic execution: 1 action failed, some produced bytes "
        "that differ from their cached result: //pkg:clock")
    assert results(ws.root) == before  # the old result was not replaced


def test_actions_without_a_cached_result_simply_execute(ws):
    ws.write(WORKSPACE)
    result = ws.build("--verify", "//pkg:clock")
    assert result.returncode == 0, result.stderr
    assert counts(result)["executed"] == 1


def _kept(root, path):
    """(the bytes in posbuild-out/, the bytes of that output in the store's only result for it)."""
    from posbuild.core.records import ActionResult
    from posbuild.store.lmdbstore import Store

    held = [ActionResult.unpack(value) for value in results(root).values()]
    digests = [o.digest for r in held for o in r.outputs if o.path == path]
    assert len(digests) == 1, digests
    store = Store(root / ".posbuild/store")
    try:
        return (root / path).read_bytes(), store.get_blob(digests[0])
    finally:
        store.close()


def test_verify_keeps_the_cached_output_in_posbuild_out_and_in_the_store(ws):
    """What ORCH-04 says it keeps is what stays: the cached bytes, in posbuild-out/ and the store;
    the dependents go on with those bytes (and are verified in turn), and fsck passes."""
    ws.write({"pkg/BUILD": """
        genrule(name = "clock", outs = ["clock.txt"], cmd = "date +%N > $@")
        genrule(name = "down", srcs = [":clock"], outs = ["down.txt"], cmd = "cat $< $< > $@")
    """})
    ws.ok("//...")
    cached = (ws.root / "posbuild-out/pkg/clock.txt").read_bytes()
    result = ws.build("--verify", "//...")
    assert result.returncode == 14, result.stdout + result.stderr
    assert "the cached result is kept" in result.stderr and "stale" not in result.stderr
    # //pkg:down re-ran and matched
    assert counts(result) == {"executed": 1, "cached": 0, "failed": 1}
    assert _kept(ws.root, "posbuild-out/pkg/clock.txt") == (cached, cached)
    assert ws.out("pkg/down.txt").encode() == cached * 2
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    again = ws.ok("//...")  # the next build is a no-op on the kept bytes
    assert counts(again) == {"executed": 0, "cached": 2, "failed": 0}
    assert (ws.root / "posbuild-out/pkg/clock.txt").read_bytes() == cached


def test_verify_restores_the_kept_output_when_posbuild_out_lacks_it(ws):
    ws.write(
        {"pkg/BUILD": 'genrule(name = "clock", outs = ["clock.txt"], cmd = "date +%N > $@")\n'})
    ws.ok("//...")
    cached = (ws.root / "posbuild-out/pkg/clock.txt").read_bytes()
    (ws.root / "posbuild-out/pkg/clock.txt").unlink()
    result = ws.build("--verify", "//...")
    assert result.returncode == 14, result.stdout + result.stderr
    assert _kept(ws.root, "posbuild-out/pkg/clock.txt") == (cached, cached)
