"""Execution records (§12): one per requested action per build, however it was settled, with
every field plausible; `posbuild log` shows them, `--trace` writes a Chrome trace, and
`posbuild explain` / `build --explain` name the key component that changed."""

import json
from datetime import datetime

WORKSPACE = {
    "pkg/raw.txt": "b\na\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@",
                version = {"schema": "2"})
        genrule(name = "busy", srcs = [":sorted"], outs = ["busy.txt"],
                cmd = "python3 -c 'import time; t = time.process_time(); [0 for _ in iter(lambda: time.process_time() - t > 0.3, True)]'; cp $< $@")
        genrule(name = "big", outs = ["big.txt"],
                cmd = "python3 -c 'b = bytearray(120 * 1024 * 1024); b[::4096] = b\\"x\\" * len(b[::4096]); print(len(b))' > $@")
    """,  # noqa: E501
}


def log_json(ws, *args):
    result = ws.run("log", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_field_of_an_executed_record_is_plausible(ws):
    ws.write(WORKSPACE)
    ws.ok("//...")
    records = {r["label"]: r for r in log_json(ws)}
    assert sorted(records) == ["//pkg:big", "//pkg:busy", "//pkg:sorted"]
    sorted_ = records["//pkg:sorted"]
    assert sorted_["state"] == "SUCCESS" and sorted_["exit_code"] == 0 and sorted_["error"] is None
    assert len(sorted_["key"]) == 64 and len(sorted_["env_hash"]) == 64 and sorted_["build"] == "1"
    start, end = (datetime.fromisoformat(sorted_[k]) for k in ("started", "ended"))
    assert start.utcoffset().total_seconds() == 0 and start <= end
    assert "." in sorted_["started"]  # microseconds
    assert abs((end - start).total_seconds() - sorted_["duration_s"]) < 0.001
    assert set(sorted_["inputs"]) == {"pkg/raw.txt"} and len(sorted_["inputs"]["pkg/raw.txt"]) == 64
    assert sorted_["versions"] == {"schema": "2"}
    assert set(sorted_["outputs"]) == {"posbuild-out/pkg/sorted.txt"}
    assert set(sorted_["usage"]) == {"user_s", "system_s", "max_rss_kb", "read_bytes",
                                     "written_bytes"}
    assert sorted_["slot"] >= 1
    busy = records["//pkg:busy"]["usage"]
    assert busy["user_s"] + busy["system_s"] > 0.2
    assert records["//pkg:big"]["usage"]["max_rss_kb"] > 100 * 1024


def test_every_build_has_one_record_per_requested_action_however_it_was_settled(ws):
    ws.write(WORKSPACE)
    ws.ok("//...")
    ws.ok("//...")  # settled by stat alone
    ws.write({"pkg/raw.txt": "a\nb\n"})  # sorted re-runs, its output is unchanged: early cutoff
    ws.ok("//...")
    for build, states in ((1, {"SUCCESS"}), (2, {"CACHED"}), (3, {"SUCCESS", "CACHED"})):
        records = log_json(ws, "--build", str(build))
        assert sorted(r["label"] for r in records) == ["//pkg:big", "//pkg:busy",
                                                       "//pkg:sorted"], build
        assert {r["state"] for r in records} == states, build
    third = {r["label"]: r["state"] for r in log_json(ws, "--build", "3")}
    assert third == {"//pkg:sorted": "SUCCESS", "//pkg:busy": "CACHED", "//pkg:big": "CACHED"}


def test_failed_and_skipped_actions_have_records_with_error_codes(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "bad", outs = ["bad.txt"], cmd = "exit 3")
            genrule(name = "after", srcs = [":bad"], outs = ["after.txt"], cmd = "cp $< $@")
            genrule(name = "fine", outs = ["fine.txt"], cmd = "echo ok > $@")
        """,
    })
    assert ws.build("-k", "//...").returncode == 1
    records = {r["label"]: r for r in log_json(ws)}
    assert records["//pkg:bad"]["state"] == "FAILED" and records["//pkg:bad"]["error"] == "exit 3"
    assert records["//pkg:bad"]["exit_code"] == 3
    assert records["//pkg:after"]["state"] == "SKIPPED"
    assert records["//pkg:fine"]["state"] == "SUCCESS"
    failed = log_json(ws, "--failed")
    assert sorted(r["label"] for r in failed) == ["//pkg:after", "//pkg:bad"]


def test_log_table_and_pattern_filter(ws):
    ws.write(WORKSPACE)
    ws.ok("//...")
    result = ws.run("log", "//pkg:sorted")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("build 1  started ")
    assert lines[1].split() == ["state", "seconds", "cpu", "s", "max", "RSS", "exit", "key",
                                "error", "label"]
    assert len(lines) == 3 and lines[2].startswith("SUCCESS") and lines[2].endswith("//pkg:sorted")


def test_trace_has_one_lane_per_job_slot(ws, tmp_path):
    ws.write(WORKSPACE)
    ws.ok("-j2", "//...")
    trace_file = tmp_path / "trace.json"
    result = ws.run("log", "--trace", str(trace_file))
    assert result.returncode == 0, result.stderr
    trace = json.loads(trace_file.read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert sorted(e["name"] for e in spans) == ["//pkg:big", "//pkg:busy", "//pkg:sorted"]
    assert {e["tid"] for e in spans} <= {1, 2}
    lanes = {e["tid"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert {e["tid"] for e in spans} <= lanes
    assert all(e["ts"] >= 0 and e["dur"] > 0 for e in spans)


def test_explain_names_the_changed_input_with_old_and_new_digests(ws):
    ws.write(WORKSPACE)
    ws.ok("//pkg:sorted")
    old = log_json(ws)[0]["inputs"]["pkg/raw.txt"]
    ws.write({"pkg/raw.txt": "c\na\n"})
    ws.ok("//pkg:sorted")
    new = log_json(ws)[0]["inputs"]["pkg/raw.txt"]
    result = ws.run("explain", "//pkg:sorted")
    assert result.returncode == 0, result.stderr
    assert "executed in build 2" in result.stdout
    assert f"input pkg/raw.txt changed: {old[:12]} -> {new[:12]}" in result.stdout


def test_explain_a_command_and_a_version_change(ws):
    ws.write(WORKSPACE)
    ws.ok("//pkg:sorted")
    ws.write({"pkg/BUILD": WORKSPACE["pkg/BUILD"].replace('"schema": "2"', '"schema": "3"').replace(
        "sort $<", "sort -r $<")})
    ws.ok("//pkg:sorted")
    out = ws.run("explain", "//pkg:sorted").stdout
    assert "version schema changed: 2 -> 3" in out
    assert (
        "the command changed: 'sort pkg/raw.txt > posbuild-out/pkg/sorted.txt' -> 'sort -r "
        "pkg/raw.txt > posbuild-out/pkg/sorted.txt'") in out


def test_explain_an_up_to_date_action_and_build_explain_lines(ws):
    ws.write(WORKSPACE)
    ws.ok("//pkg:sorted")
    ws.ok("//pkg:sorted")
    assert "up to date in build 2" in ws.run("explain", "//pkg:sorted").stdout
    ws.write({"pkg/raw.txt": "z\n"})
    result = ws.build("--explain", "//pkg:sorted")
    assert result.returncode == 0
    assert "explain //pkg:sorted: input pkg/raw.txt changed: " in result.stderr


def test_log_before_any_build_is_a_clear_error(ws):
    result = ws.run("log")
    assert result.returncode == 2
    assert result.stderr.strip() == "posbuild: no build recorded yet"


# -- every attempt leaves a record: refused and killed builds (§12, §18.6) ------------------------

CYCLE = {
    "pkg/BUILD": """
        genrule(name = "a", srcs = [":b"], outs = ["a.txt"], cmd = "cp $< $@")
        genrule(name = "b", srcs = [":a"], outs = ["b.txt"], cmd = "cp $< $@")
    """,
}


def test_a_build_refused_by_a_cycle_leaves_a_record_with_orch_01(ws):
    ws.write(WORKSPACE)
    ws.ok("//pkg:sorted")
    ws.write(CYCLE)
    assert ws.build("//...").returncode == 11
    table = ws.run("log")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("build 2  started ")
    assert "refused: ORCH-01 DAG cycle detected: " in table.stdout
    refused = log_json(ws)
    assert len(refused) == 1 and refused[0]["state"] == "REFUSED" \
            and refused[0]["error"] == ("ORCH-01")
    assert refused[0]["build"] == "2" and refused[0]["patterns"] == ["//..."]
    assert "//pkg:a" in refused[0]["message"] and refused[0]["seal"]
    builds = [json.loads(line) for line in ws.run("log", "--builds", "--json").stdout.splitlines()]
    assert [(b["build"], b["state"]) for b in builds] == [("1", "FINISHED"), ("2", "REFUSED")]
    assert ws.run("fsck").returncode == 0


def test_a_build_refused_by_environment_drift_leaves_a_record_with_orch_07(ws):
    ws.write(WORKSPACE)
    ws.run("env", "approve")
    drifted = ws.build("//pkg:sorted",
                       env={"POSBUILD_TEST_FINGERPRINT": json.dumps({"os.release": "99.1"})})
    assert drifted.returncode == 17, drifted.stderr
    refused = log_json(ws)
    assert [(r["state"], r["error"], r["patterns"]) for r in refused] == [("REFUSED", "ORCH-07",
                                                                           ["//pkg:sorted"])]
    assert refused[0]["message"].startswith(
        "ORCH-07 environment drift: the environment these actions run in ")
    assert "refused: ORCH-07 environment drift" in ws.run("log", "--builds").stdout
    ws.ok("//pkg:sorted")  # the next build chains after the refused one
    assert ws.run("fsck").returncode == 0


def test_a_dry_run_refused_by_a_cycle_records_nothing(ws):
    ws.write(CYCLE)
    assert ws.build("-n", "//...").returncode == 11
    assert ws.run("log").stderr.strip() == "posbuild: no build recorded yet"


def test_builds_refused_by_a_version_mismatch_or_the_resource_budget_are_recorded(ws):
    ws.write({
        "data/BUILD": 'genrule(name = "clean", outs = ["clean.csv"], cmd = "echo > $@", version = '
                      '{"schema": "2"})\n',
        "model/BUILD": 'genrule(name = "train", srcs = ["//data:clean"], outs = ["m.txt"], cmd = '
                       '"cat $< > $@", requires = {"//data:clean": {"schema": "3"}})\n',
    })
    assert ws.build("//model:train").returncode == 12
    ws.write({
        "posbuild.toml": "[resources]\ncpu = 2\n",
        "model/BUILD": 'genrule(name = "train", srcs = ["//data:clean"], outs = ["m.txt"], cmd = '
                       '"cat $< > $@", resources = {"cpu": 8})\n',
    })
    assert ws.build("//model:train").returncode == 15
    builds = [json.loads(line) for line in ws.run("log", "--builds", "--json").stdout.splitlines()]
    assert [(b["state"], b["error"], b["patterns"]) for b in builds] == [
        ("REFUSED", "ORCH-02", ["//model:train"]), ("REFUSED", "ORCH-05", ["//model:train"])]
    assert "cpu=8" in builds[1]["message"]
    assert ws.run("fsck").returncode == 0
