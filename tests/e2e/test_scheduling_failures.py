"""Scheduling and failure handling end to end: -j bounds, deterministic order, isolation, -k.

Concurrency is observed through a probe log outside the sandbox (absolute path in the command):
each action appends `start <name> <time>` and `end <name> <time>` lines to it.
"""

from __future__ import annotations

import json

import time
from pathlib import Path

from conftest import counts, executed_labels


def _probed(log: Path, name: str, seconds: float) -> str:
    """A genrule whose command records when it starts and ends, sleeping in between."""
    return (
        f'genrule(name = "{name}", outs = ["{name}.txt"], '
        f'cmd = "echo start {name} $$(date +%s.%N) >> {log}; sleep {seconds}; '
        f'echo end {name} $$(date +%s.%N) >> {log}; echo {name} > $@")\n'
    )


def _events(log: Path) -> list[tuple[float, str, str]]:
    rows = []
    for line in log.read_text().splitlines():
        kind, name, when = line.split()
        rows.append((float(when), kind, name))
    return sorted(rows)


def _max_overlap(events: list[tuple[float, str, str]]) -> int:
    running = peak = 0
    for _, kind, _ in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


def _start_order(events: list[tuple[float, str, str]]) -> list[str]:
    return [name for _, kind, name in events if kind == "start"]


def _progress_labels(result) -> list[str]:  # type: ignore[no-untyped-def]
    """Executed labels in the order the build reported them (not sorted)."""
    return [line.split("] ", 1)[1] for line in result.stdout.splitlines() if line.startswith("[")]


# ---- -j bounds concurrency --------------------------------------------------------------------

def _independent_sleepers(ws, log: Path, names: list[str], seconds: float) -> None:  # type: ignore[no-untyped-def]
    ws.write({"pkg/BUILD": "".join(_probed(log, n, seconds) for n in names)})


def test_j1_runs_one_action_at_a_time(ws, tmp_path):
    log = tmp_path / "probe.log"
    _independent_sleepers(ws, log, ["a", "b", "c", "d"], 0.2)
    ws.ok("-j1", "//...")
    events = _events(log)
    assert len(events) == 8
    assert _max_overlap(events) == 1


def test_j2_runs_at_most_two_actions_at_once_and_does_use_two(ws, tmp_path):
    log = tmp_path / "probe.log"
    _independent_sleepers(ws, log, ["a", "b", "c", "d", "e", "f"], 0.3)
    ws.ok("-j2", "//...")
    events = _events(log)
    assert len(events) == 12
    assert _max_overlap(events) == 2


def test_j4_runs_four_independent_sleeps_in_parallel(ws, tmp_path):
    log = tmp_path / "probe.log"
    # the budget must hold 4 x cpu=1
    (ws.root / "posbuild.toml").write_text("[resources]\ncpu = 4\n")
    _independent_sleepers(ws, log, ["a", "b", "c", "d"], 1.0)
    started = time.monotonic()
    ws.ok("-j4", "//...")
    wall = time.monotonic() - started
    events = _events(log)
    assert _max_overlap(events) == 4
    span = events[-1][0] - events[0][0]
    assert span < 2.0, f"4 x 1 s sleeps took {span:.2f} s of action time under -j4"
    assert wall < 4.0, f"the build took {wall:.2f} s (4 x 1 s run one after another take more)"


def test_jobs_from_posbuild_toml_bound_concurrency(ws, tmp_path):
    log = tmp_path / "probe.log"
    (ws.root / "posbuild.toml").write_text("[build]\njobs = 1\n")
    _independent_sleepers(ws, log, ["a", "b", "c"], 0.2)
    ws.ok("//...")
    assert _max_overlap(_events(log)) == 1


def test_a_dependent_never_starts_before_its_dependency_ends(ws, tmp_path):
    log = tmp_path / "probe.log"
    ws.write({
        "pkg/BUILD": _probed(log, "first", 0.3) + _probed(log, "free", 0.3) + f"""
genrule(name = "second", srcs = [":first"], outs = ["second.txt"],
        cmd = "echo start second $$(date +%s.%N) >> {log}; cat $< > $@; echo end second $$(date +%s.%N) >> {log}")
""",  # noqa: E501
    })
    ws.ok("-j4", "//...")
    when = {(kind, name): t for t, kind, name in _events(log)}
    assert when[("start", "second")] >= when[("end", "first")]
    assert ws.out("pkg/second.txt") == "first\n"


# ---- deterministic order ----------------------------------------------------------------------

def test_j1_order_of_independent_actions_is_by_label_and_stable(ws, tmp_path):
    log = tmp_path / "probe.log"
    # declared out of order on purpose
    ws.write({"pkg/BUILD": "".join(_probed(log, n, 0.01)
                                   for n in ["delta", "bravo", "echo", "alpha", "charlie"])})
    orders = []
    for _ in range(2):
        log.unlink(missing_ok=True)
        result = ws.ok("-j1", "//...")
        assert _start_order(_events(log)) == ["alpha", "bravo", "charlie", "delta", "echo"]
        orders.append(_progress_labels(result))
        assert ws.run("clean", "--all").returncode == 0
    assert orders[0] == ["//pkg:alpha", "//pkg:bravo", "//pkg:charlie", "//pkg:delta", "//pkg:echo"]
    assert orders[0] == orders[1]


def test_j1_order_is_identical_across_clean_runs_with_dependencies(ws, tmp_path):
    log = tmp_path / "probe.log"
    build = "".join(_probed(log, n, 0.01) for n in ["z_root", "b_free", "m_free"])
    build += """
genrule(name = "a_child", srcs = [":z_root"], outs = ["a_child.txt"], cmd = "cat $< > $@")
genrule(name = "y_child", srcs = [":b_free", ":a_child"], outs = ["y_child.txt"], cmd = "cat $(SRCS) > $@")
"""  # noqa: E501
    ws.write({"pkg/BUILD": build})
    orders = []
    for _ in range(2):
        result = ws.ok("-j1", "//...")
        orders.append(_progress_labels(result))
        assert ws.run("clean", "--all").returncode == 0
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == ["//pkg:a_child", "//pkg:b_free", "//pkg:m_free", "//pkg:y_child",
                                 "//pkg:z_root"]
    position = {label: i for i, label in enumerate(orders[0])}
    assert position["//pkg:z_root"] < position["//pkg:a_child"] < position["//pkg:y_child"]
    # the critical path first (z_root → a_child → y_child), then by remaining path, ties by label
    assert orders[0] == ["//pkg:z_root", "//pkg:a_child", "//pkg:b_free", "//pkg:m_free",
                         "//pkg:y_child"]


# ---- failure isolation ------------------------------------------------------------------------

def _failure_graph(log: Path, extra: str = "") -> dict[str, str]:
    """bad fails; child and grandchild depend on it; good is independent."""
    return {
        "pkg/src.txt": "input\n",
        "pkg/BUILD": f"""
genrule(name = "bad", srcs = ["src.txt"], outs = ["bad.txt"],
        cmd = "echo start bad 0 >> {log}; cat $< > $@; grep -q good $< || exit 3")
genrule(name = "child", srcs = [":bad"], outs = ["child.txt"],
        cmd = "echo start child 0 >> {log}; cat $< > $@")
genrule(name = "grandchild", srcs = [":child"], outs = ["grandchild.txt"],
        cmd = "echo start grandchild 0 >> {log}; cat $< > $@")
genrule(name = "good", srcs = ["src.txt"], outs = ["good.txt"],
        cmd = "echo start good 0 >> {log}; cat $< > $@")
{extra}""",
    }


def test_failing_action_commits_nothing_and_its_dependents_never_start(ws, tmp_path):
    log = tmp_path / "probe.log"
    ws.write(_failure_graph(log))
    result = ws.build("-k", "//...")
    assert result.returncode == 1
    assert executed_labels(result) == ["//pkg:good"]
    assert counts(result) == {"executed": 1, "cached": 0, "failed": 1}
    assert sorted(_start_order(_events(log))) == ["bad", "good"]
    out = ws.root / "posbuild-out/pkg"
    assert not (out / "bad.txt").exists()
    assert not (out / "child.txt").exists()
    assert not (out / "grandchild.txt").exists()
    assert ws.out("pkg/good.txt") == "input\n"
    # nothing of the failure was cached: fixing the input runs the failed branch, not `good`
    ws.write({"pkg/src.txt": "good input\n"})
    fixed = ws.ok("//...")
    assert executed_labels(fixed) == ["//pkg:bad", "//pkg:child", "//pkg:good", "//pkg:grandchild"]
    assert ws.out("pkg/grandchild.txt") == "good input\n"


def test_failure_removes_stale_outputs_of_its_dependents(ws, tmp_path):
    log = tmp_path / "probe.log"
    ws.write(_failure_graph(log))
    ws.write({"pkg/src.txt": "good input\n"})
    ws.ok("//...")
    assert ws.out("pkg/grandchild.txt") == "good input\n"
    ws.write({"pkg/src.txt": "now failing\n"})
    result = ws.build("-k", "//...")
    assert result.returncode == 1
    out = ws.root / "posbuild-out/pkg"
    # child and grandchild were not rebuilt: their old outputs must not pass for current ones
    assert not (out / "child.txt").exists()
    assert not (out / "grandchild.txt").exists()


def test_failure_removes_the_stale_output_of_the_failed_action(ws, tmp_path):
    log = tmp_path / "probe.log"
    ws.write(_failure_graph(log))
    ws.write({"pkg/src.txt": "good input\n"})
    ws.ok("//...")
    ws.write({"pkg/src.txt": "now failing\n"})
    assert ws.build("-k", "//...").returncode == 1
    assert not (ws.root / "posbuild-out/pkg/bad.txt").exists()


def _stop_graph(log: Path) -> dict[str, str]:
    """`a_fail` sorts first; b, c and d are independent of it."""
    build = f"""
genrule(name = "a_fail", outs = ["a_fail.txt"], cmd = "echo start a_fail 0 >> {log}; sleep 0.2; exit 1")
"""  # noqa: E501
    build += "".join(
        f'genrule(name = "{n}", outs = ["{n}.txt"], cmd = "echo start {n} 0 >> {log}; echo {n} > '
        '$@")\n'
        for n in ["b", "c", "d"]
    )
    return {"pkg/BUILD": build}


def test_default_stops_launching_new_work_after_a_failure(ws, tmp_path):
    log = tmp_path / "probe.log"
    ws.write(_stop_graph(log))
    result = ws.build("-j1", "//...")
    assert result.returncode == 1
    assert executed_labels(result) == []
    assert _start_order(_events(log)) == ["a_fail"]
    for name in ["b", "c", "d"]:
        assert not (ws.root / f"posbuild-out/pkg/{name}.txt").exists()


def test_keep_going_completes_every_independent_branch_and_still_fails(ws, tmp_path):
    log = tmp_path / "probe.log"
    ws.write(_stop_graph(log))
    result = ws.build("-j1", "-k", "//...")
    assert result.returncode == 1
    assert executed_labels(result) == ["//pkg:b", "//pkg:c", "//pkg:d"]
    assert counts(result) == {"executed": 3, "cached": 0, "failed": 1}
    for name in ["b", "c", "d"]:
        assert ws.out(f"pkg/{name}.txt") == f"{name}\n"
    assert not (ws.root / "posbuild-out/pkg/a_fail.txt").exists()


def test_keep_going_long_form_is_accepted(ws, tmp_path):
    log = tmp_path / "probe.log"
    ws.write(_stop_graph(log))
    result = ws.build("-j1", "--keep-going", "//...")
    assert result.returncode == 1
    assert ws.out("pkg/d.txt") == "d\n"


def test_failure_shows_label_reason_and_indented_stderr(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "x", outs = ["x.txt"],
                    cmd = "echo to stdout; echo first problem >&2; echo second problem >&2; exit 3")
        """,
    })
    result = ws.build("//pkg:x")
    assert result.returncode == 1
    assert "FAILED //pkg:x: command failed (exit code 3)\n  first problem\n  second problem\n" \
            in result.stderr
    assert "//pkg:x" in result.stderr.splitlines()[-1]


def test_two_failures_under_keep_going_are_both_reported(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "one", outs = ["1"], cmd = "echo oops-one >&2; exit 4")
            genrule(name = "two", outs = ["2"], cmd = "echo oops-two >&2; exit 5")
        """,
    })
    result = ws.build("-k", "//...")
    assert result.returncode == 1
    assert "FAILED //pkg:one: command failed (exit code 4)\n  oops-one\n" in result.stderr
    assert "FAILED //pkg:two: command failed (exit code 5)\n  oops-two\n" in result.stderr
    assert counts(result)["failed"] == 2


def test_action_exceeding_its_timeout_fails_with_a_timeout_message(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "slow", outs = ["slow.txt"], timeout = 1, cmd = "sleep 20; echo late > $@")
            genrule(name = "after", srcs = [":slow"], outs = ["after.txt"], cmd = "cat $< > $@")
        """,  # noqa: E501
    })
    started = time.monotonic()
    result = ws.build("//...")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "FAILED //pkg:slow: timed out after 1 s" in result.stderr
    assert elapsed < 10, f"a 1 s timeout took {elapsed:.1f} s to fire"
    assert not (ws.root / "posbuild-out/pkg/slow.txt").exists()
    assert not (ws.root / "posbuild-out/pkg/after.txt").exists()


def test_timeout_kills_background_children_of_the_action(ws, tmp_path):
    marker = tmp_path / "marker"
    ws.write({
        "pkg/BUILD": f"""
            genrule(name = "slow", outs = ["slow.txt"], timeout = 1,
                    cmd = "(sleep 2; touch {marker}) & sleep 20")
        """,
    })
    result = ws.build("//pkg:slow")
    assert result.returncode == 1
    time.sleep(2.5)
    assert not marker.exists(), "a child of the timed-out action survived it"


def test_a_file_system_error_of_posbuilds_own_fails_that_action_only_and_its_record_says_so(ws):
    """A file where posbuild-out/pkg/ must be a folder: installing the output fails with the
    path, the action is FAILED (not a crash), other packages build. The result was committed
    before the install (a kill must never lose an accepted result), so it stays in the store;
    the action's record says FAILED, as the build did, and the next build restores the output."""
    ws.write({
        "pkg/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")\n',
        "other/BUILD": 'genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")\n',
        "posbuild-out/pkg": "in the way\n",
    })
    result = ws.build("-k", "//...")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "FAILED //pkg:a: File exists: " in result.stderr and "posbuild-out/pkg" in result.stderr
    assert counts(result) == {"executed": 1, "cached": 0, "failed": 1}
    assert ws.out("other/b.txt") == "b\n"
    records = [json.loads(line) for line in ws.run("log", "--json").stdout.splitlines()]
    assert {r["label"]: r["state"] for r in records} == {"//pkg:a": "FAILED",
                                                         "//other:b": "SUCCESS"}
    assert [r["error"] for r in records if r["label"] == "//pkg:a"] == ["install failed"]
    (ws.root / "posbuild-out/pkg").unlink()
    fixed = ws.ok("//...")
    assert counts(fixed) == {"executed": 0, "cached": 2, "failed": 0} \
            and ws.out("pkg/a.txt") == ("a\n")
    assert ws.run("fsck").returncode == 0
