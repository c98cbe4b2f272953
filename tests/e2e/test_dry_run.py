"""`posbuild build -n` lists what would execute, and runs and writes nothing."""

from pathlib import Path

from conftest import counts

BUILD = {
    "pkg/a.txt": "a\n",
    "pkg/b.txt": "b\n",
    "pkg/BUILD": """
        genrule(name = "up_a", srcs = ["a.txt"], outs = ["up_a.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "up_b", srcs = ["b.txt"], outs = ["up_b.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "both", srcs = [":up_a", ":up_b"], outs = ["both.txt"], cmd = "cat $(SRCS) > $@")
    """,  # noqa: E501
}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and "sandbox" not in p.parts and p.name != "lock.mdb"}  # LMDB's reader table


def _planned(stdout: str) -> list[str]:
    return [line.split()[-1] for line in stdout.splitlines() if line.startswith("would execute ")]


def test_dry_run_on_a_fresh_workspace_lists_everything_and_creates_nothing(ws):
    ws.write(BUILD)
    result = ws.build("-n", "//...")
    assert result.returncode == 0, result.stderr
    assert _planned(result.stdout) == ["//pkg:up_a", "//pkg:up_b", "//pkg:both"]
    assert "DRY RUN: 3 actions (3 would execute, 0 cached)" in result.stdout
    assert not (ws.root / "posbuild-out").exists()


def test_dry_run_after_a_change_lists_only_the_affected_actions_and_changes_nothing(ws):
    ws.write(BUILD)
    ws.ok("//...")
    ws.write({"pkg/a.txt": "changed\n"})
    before = _snapshot(ws.root)
    result = ws.build("-n", "//...")
    assert result.returncode == 0, result.stderr
    assert _planned(result.stdout) == ["//pkg:up_a", "//pkg:both"]
    assert _snapshot(ws.root) == before
    assert counts(ws.ok("//...")) == {"executed": 2, "cached": 1, "failed": 0}


def test_dry_run_with_nothing_to_do_lists_nothing(ws):
    ws.write(BUILD)
    ws.ok("//...")
    result = ws.build("-n", "//...")
    assert _planned(result.stdout) == []
    assert "DRY RUN: 3 actions (0 would execute, 3 cached)" in result.stdout
