"""`posbuild gc` through the real CLI: old results accumulate over several versions of a source;
gc keeps what the kept generations need (rollback and a build after `clean` still execute
nothing) and evicts the rest (a build of an evicted version executes again)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import Workspace, counts

PIPELINE = {
    "p/BUILD": """
        genrule(name = "twice", srcs = ["a.txt"], outs = ["twice.txt"], cmd = "cat $< $< > $@")
        genrule(name = "upper", srcs = [":twice"], outs = ["upper.txt"], cmd = "tr a-z A-Z < $< > $@")
    """,  # noqa: E501
}
SUMMARY = re.compile(
    r"^gc: removed (\d+) generations?, (\d+) action results?, (\d+) blobs?; freed [\d.]+ "
    r"(?:B|KiB|MiB); store now [\d.]+ (?:B|KiB|MiB) in (\d+) blobs?, (\d+) generations? kept$"
)


def source(version: int) -> str:
    return f"version {version}\n"


def expected(version: int) -> dict[str, str]:
    twice = source(version) * 2
    return {"p/twice.txt": twice, "p/upper.txt": twice.upper()}


def outputs(ws: Workspace) -> dict[str, str]:
    return {rel: ws.out(rel) for rel in ("p/twice.txt", "p/upper.txt")}


def build_versions(ws: Workspace, versions: range) -> None:
    ws.write(PIPELINE)
    for version in versions:
        ws.write({"p/a.txt": source(version)})
        assert counts(ws.ok("//..."))["executed"] == 2


def store_rows(root: Path) -> tuple[list[int], int]:
    """Generation ids and the number of action results, read from the store itself."""
    from posbuild.store.lmdbstore import Store

    store = Store(root / ".posbuild" / "store")
    try:
        return [g.id for g in store.generations()], sum(1 for _ in store.iter_results())
    finally:
        store.close()


def summary(result_stdout: str) -> tuple[int, ...]:
    match = SUMMARY.match(result_stdout.splitlines()[0])
    assert match, result_stdout
    return tuple(map(int, match.groups()))


def test_max_size_keeps_what_kept_generations_need_and_evicts_the_rest(ws: Workspace) -> None:
    build_versions(ws, range(1, 6))
    assert store_rows(ws.root) == ([1, 2, 3, 4, 5], 10)

    result = ws.run("gc", "--max-size", "1")
    assert result.returncode == 0, result.stderr
    removed_generations, removed_results, _, _, kept = summary(result.stdout)
    assert (removed_generations, removed_results, kept) == (2, 4, 3)  # versions 1 and 2 are gone
    assert "gc: the store is still above --max-size 1 B" in result.stdout
    assert "needed by the 3 kept generations" in result.stdout
    assert store_rows(ws.root) == ([3, 4, 5], 6)

    assert ws.run("clean").returncode == 0
    restored = ws.ok("//...")
    assert counts(restored)["executed"] == 0  # the current version comes back from the store
    assert outputs(ws) == expected(5)

    ws.write({"p/a.txt": source(4)})  # an older version a kept generation still needs
    assert counts(ws.ok("//..."))["executed"] == 0
    assert outputs(ws) == expected(4)

    ws.write({"p/a.txt": source(1)})  # an evicted version runs again
    assert counts(ws.ok("//..."))["executed"] == 2
    assert outputs(ws) == expected(1)


def test_rollback_to_a_kept_generation_still_works_after_gc(ws: Workspace) -> None:
    build_versions(ws, range(1, 6))
    assert ws.run("gc", "--max-size", "0").returncode == 0
    result = ws.run("rollback", "--to", "3")
    assert result.returncode == 0, result.stderr
    assert outputs(ws) == expected(3)
    gone = ws.run("rollback", "--to", "2")
    assert gone.returncode == 2
    assert "no generation 2" in gone.stderr
    ws.write({"p/a.txt": source(3)})
    assert counts(ws.ok("//..."))["executed"] == 0


def test_keep_generations_drops_older_generations_but_no_results_without_a_bound(
    ws: Workspace) -> None:
    build_versions(ws, range(1, 4))
    result = ws.run("gc", "--keep-generations", "1")
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout)[:2] == (2, 0)
    assert "still above" not in result.stdout
    assert store_rows(ws.root) == ([3], 6)
    ws.write({"p/a.txt": source(1)})  # its result is still cached
    assert counts(ws.ok("//..."))["executed"] == 0


def test_gc_twice_is_a_no_op_the_second_time(ws: Workspace) -> None:
    build_versions(ws, range(1, 5))
    first = ws.run("gc", "--max-size", "1K", "--keep-generations", "2")
    assert first.returncode == 0, first.stderr
    again = ws.run("gc", "--max-size", "1K", "--keep-generations", "2")
    assert summary(again.stdout)[:3] == (0, 0, 0)
    assert summary(again.stdout)[3:] == summary(first.stdout)[3:]


def test_a_bad_size_is_a_usage_error_naming_it(ws: Workspace) -> None:
    build_versions(ws, range(1, 3))
    result = ws.run("gc", "--max-size", "12Q")
    assert result.returncode == 2
    assert result.stderr.startswith("posbuild: Invalid value for '--max-size': '12Q' is not a size")
    assert store_rows(ws.root) == ([1, 2], 4)
    assert ws.run("gc", "--keep-generations", "0").returncode == 2


def test_gc_without_a_store_has_nothing_to_do(ws: Workspace) -> None:
    result = ws.run("gc")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "gc: no store yet; nothing to collect\n"


def test_help_documents_the_defaults(ws: Workspace) -> None:
    result = ws.run("gc", "--help")
    assert result.returncode == 0
    assert "--keep-generations N" in result.stdout and "default: 3" in result.stdout
    assert "--max-size SIZE" in result.stdout
