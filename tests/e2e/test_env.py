"""The environment fingerprint end to end (§14): `posbuild env show|approve|check`, ORCH-07 in
builds, `--allow-env-drift`, `[env] tools`, and h_E as part of every action key.

Environment changes are faked through POSBUILD_TEST_FINGERPRINT (a JSON object of entries to add
or replace, null to remove), which the CLI applies on top of the real fingerprint.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

from conftest import counts, executed_labels

ONE = {
    "pkg/a.txt": "alpha\n",
    "pkg/BUILD": """
        genrule(name = "copy", srcs = ["a.txt"], outs = ["copy.txt"], cmd = "cat $< > $@")
    """,
}
PY_VERSION = ".".join(map(str, sys.version_info[:3]))


def inject(entries: dict[str, str | None]) -> dict[str, str]:
    return {"POSBUILD_TEST_FINGERPRINT": json.dumps(entries)}


def h_e(result) -> str:  # type: ignore[no-untyped-def]
    match = re.search(r"^h_E ([0-9a-f]{64})$", result.stdout, re.M)
    assert match, result.stdout + result.stderr
    return match.group(1)


def entries(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    rows = {}
    for line in result.stdout.splitlines():
        if not line.startswith("h_E "):
            name, value = line.split(None, 1)
            rows[name] = value
    return rows


# ---- env show
# -----------------------------------------------------------------------------------------


def test_env_show_lists_every_kind_of_entry_and_the_hash(ws):
    ws.write({"posbuild.toml": '[env]\ntools = ["sh"]\n'})
    result = ws.run("env", "show")
    assert result.returncode == 0, result.stderr
    rows = entries(result)
    assert rows["python.implementation"] == sys.implementation.name
    assert rows["python.version"] == PY_VERSION
    assert rows["dist.click"] and rows["dist.blake3"] and rows["dist.msgpack"]
    for name in ("os.system", "os.release", "os.kernel", "libc", "cpu.arch", "posbuild.version"):
        assert rows[name], name
    assert rows["cpu.model"].endswith("(recorded, not hashed)")
    path, digest = rows["tool.sh"].split()
    assert path in ("/usr/local/bin/sh", "/usr/bin/sh", "/bin/sh") \
            and re.fullmatch(r"[0-9a-f]{64}", digest)
    names = [line.split()[0] for line in result.stdout.splitlines()[:-1]]
    assert names == sorted(names)
    # aligned
    assert len({line.index(line.split()[1]) for line in result.stdout.splitlines()[:-1]}) == 1
    assert h_e(result)


def test_env_show_json_matches_the_text_form(ws):
    text = ws.run("env", "show")
    data = json.loads(ws.run("env", "show", "--json").stdout)
    assert data["hash"] == h_e(text)
    assert data["fingerprint"]["python.version"] == PY_VERSION
    assert "cpu.model" in data["not_hashed"] and "python.version" not in data["not_hashed"]


def test_hardware_model_is_recorded_but_not_hashed(ws):
    base = h_e(ws.run("env", "show"))
    assert h_e(ws.run("env", "show", env=inject({"cpu.model": "Some Other CPU @ 1 GHz"}))) == base
    assert h_e(ws.run("env", "show", env=inject({"python.version": "9.9.9"}))) != base


# ---- approve and check
# -------------------------------------------------------------------------------


def test_approve_writes_hash_and_fingerprint_and_keeps_sources(ws):
    (ws.root / "posbuild.lock").write_text(json.dumps({"format": 1,
                                                       "sources": {"pkg/a.txt": "ab" * 32}}))
    approved = ws.run("env", "approve")
    assert approved.returncode == 0, approved.stderr
    lock = json.loads((ws.root / "posbuild.lock").read_text())
    assert lock["sources"] == {"pkg/a.txt": "ab" * 32}
    assert lock["environment"]["hash"] == h_e(ws.run("env", "show"))
    assert lock["environment"]["fingerprint"]["python.version"] == PY_VERSION
    assert lock["environment"]["hash"] in approved.stdout
    check = ws.run("env", "check")
    assert check.returncode == 0, check.stderr
    assert "environment matches the approved hash" in check.stdout


def test_check_reports_added_removed_and_changed_entries_as_orch_07(ws):
    ws.run("env", "approve")
    result = ws.run("env", "check", env=inject({"python.version": "3.99.1", "dist.newpkg": "1.2",
                                                "dist.click": None}))
    assert result.returncode == 17, result.stdout + result.stderr
    assert result.stderr.startswith("posbuild: ORCH-07 environment drift: ")
    lines = [line.strip() for line in result.stderr.splitlines()[1:]]
    click_version = json.loads(
        (ws.root / "posbuild.lock").read_text())["environment"]["fingerprint"]["dist.click"]
    assert lines == [f"removed dist.click {click_version}", "added dist.newpkg 1.2",
                     f"changed python.version {PY_VERSION} -> 3.99.1"]  # sorted by entry name


def test_check_without_approval_is_an_error(ws):
    result = ws.run("env", "check")
    assert result.returncode == 1
    assert "posbuild env approve" in result.stderr


def test_hardware_only_change_is_a_note_not_drift(ws):
    ws.write(ONE)
    ws.run("env", "approve")
    other = inject({"cpu.model": "Some Other CPU @ 1 GHz", "host.name": "elsewhere"})
    check = ws.run("env", "check", env=other)
    assert check.returncode == 0, check.stderr
    assert "note: changed cpu.model" in check.stderr and "Some Other CPU @ 1 GHz" in check.stderr
    built = ws.build("//...", env=other)
    assert built.returncode == 0, built.stderr
    assert "ORCH-07" not in built.stderr


# ---- builds
# ----------------------------------------------------------------------------------------------


def test_build_in_a_drifted_environment_stops_before_anything_runs(ws):
    ws.write(ONE)
    ws.run("env", "approve")
    result = ws.build("//...", env=inject({"python.version": "3.99.1"}))
    assert result.returncode == 17, result.stdout + result.stderr
    first, *rest = result.stderr.splitlines()
    assert first.startswith("posbuild: ORCH-07 environment drift: h_E ")
    assert "--allow-env-drift" in first
    assert [line.strip() for line in rest] == [f"changed python.version {PY_VERSION} -> 3.99.1"]
    assert executed_labels(result) == []
    assert not (ws.root / "posbuild-out" / "pkg" / "copy.txt").exists()


def test_allow_env_drift_warns_and_builds(ws):
    ws.write(ONE)
    ws.run("env", "approve")
    result = ws.build("--allow-env-drift", "//...", env=inject({"python.version": "3.99.1"}))
    assert result.returncode == 0, result.stderr
    assert "warning: --allow-env-drift" in result.stderr
    assert f"changed python.version {PY_VERSION} -> 3.99.1" in result.stderr
    assert executed_labels(result) == ["//pkg:copy"]
    assert ws.out("pkg/copy.txt") == "alpha\n"
    log = ws.run("log", "--json")
    records = [json.loads(line) for line in log.stdout.splitlines()]
    assert [r["env_drift_allowed"] for r in records] == [True]
    assert "(environment drift allowed)" in ws.run("log").stdout


def test_an_approved_environment_builds_normally(ws):
    ws.write(ONE)
    assert ws.run("env", "approve").returncode == 0
    assert executed_labels(ws.ok("//...")) == ["//pkg:copy"]
    assert executed_labels(ws.ok("//...")) == []


def test_a_different_environment_hash_re_executes_actions(ws):
    ws.write(ONE)
    assert executed_labels(ws.ok("//...")) == ["//pkg:copy"]
    other = inject({"dist.numpy": "2.0.0"})
    changed = ws.build("//...", env=other)
    assert changed.returncode == 0, changed.stderr
    assert counts(changed) == {"executed": 1, "cached": 0, "failed": 0}
    assert counts(ws.build("//...", env=other)) == {"executed": 0, "cached": 1, "failed": 0}
    hardware = ws.build("//...", env=inject({"dist.numpy": "2.0.0", "cpu.model": "Other"}))
    assert counts(hardware) == {"executed": 0, "cached": 1, "failed": 0}


# ---- [env] tools
# -----------------------------------------------------------------------------------------


def test_a_tool_whose_bytes_change_changes_h_e_and_re_executes(ws, tmp_path):
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    shutil.copy("/bin/true", tool)
    ws.write({**ONE, "posbuild.toml": f'[env]\ntools = ["{tool}"]\n'})
    before = ws.run("env", "show")
    assert entries(before)[f"tool.{tool}"].startswith(f"{tool} ")
    assert executed_labels(ws.ok("//...")) == ["//pkg:copy"]
    assert executed_labels(ws.ok("//...")) == []
    ws.run("env", "approve")
    with open(tool, "ab") as handle:
        handle.write(b"\0")
    after = ws.run("env", "show")
    assert h_e(after) != h_e(before)
    drift = ws.build("//...")
    assert drift.returncode == 17
    assert f"changed tool.{tool} {tool} " in drift.stderr
    rebuilt = ws.build("--allow-env-drift", "//...")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert executed_labels(rebuilt) == ["//pkg:copy"]


def test_a_missing_tool_is_a_clear_error(ws):
    ws.write({**ONE, "posbuild.toml": '[env]\ntools = ["no-such-tool-xyz"]\n'})
    for result in (ws.run("env", "show"), ws.build("//...")):
        assert result.returncode == 3
        assert "no-such-tool-xyz" in result.stderr and "sandbox PATH" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_relative_tool_path_is_rejected(ws):
    ws.write({"posbuild.toml": '[env]\ntools = ["bin/tool"]\n'})
    result = ws.run("env", "show")
    assert result.returncode == 3
    assert "[env] tools" in result.stderr and "bin/tool" in result.stderr
