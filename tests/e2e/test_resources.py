"""Resources end to end (DESIGN §10): the `[resources]` budget, ORCH-05, pinning, thread variables.

Actions write the wall-clock time at which they start and end into their outputs; the test then
replays those intervals against the declared requests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime

import pytest

from tests.conftest import Workspace, bwrap_problem, landlock_problem

STAMP = "python3 -c 'import time; print(time.time())'"
BUDGET = '[resources]\ncpu = 2\nmem_mb = 1000\n'


def timed(name: str, cpu: int, mem_mb: int, sleep: float, after: str = "") -> str:
    """A genrule that records its start and end times in `name`.txt."""
    srcs = f'srcs = [":{after}"], ' if after else ""
    return (f'genrule(name = "{name}", {srcs}outs = ["{name}.txt"], resources = {{"cpu": {cpu}, '
            f'"mem_mb": {mem_mb}}},\n        cmd = "{STAMP} > $(location {name}.txt); sleep '
            f'{sleep}; {STAMP} >> $(location {name}.txt)")\n')


def intervals(ws: Workspace, names: list[str]) -> dict[str, tuple[float, float]]:
    found = {}
    for name in names:
        start, end = map(float, ws.out(f"p/{name}.txt").split())
        found[name] = (start, end)
    return found


def peak(spans: dict[str, tuple[float, float]],
         demand: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The highest summed (cpu, mem_mb) over every instant at which some action started."""
    best = (0, 0)
    for instant, _ in spans.values():
        running = [n for n, (s, e) in spans.items() if s <= instant < e]
        total = (sum(demand[n][0] for n in running), sum(demand[n][1] for n in running))
        best = (max(best[0], total[0]), max(best[1], total[1]))
    return best


def test_mixed_requests_stay_within_the_budget_use_it_and_do_not_starve_the_large_one(
    ws: Workspace) -> None:
    # Two chains of small actions (long remaining paths, so they come first by priority), a large
    # action that needs the whole machine (last by priority), and two memory-heavy ones.
    demand = {f"{c}{i}": (1, 300) for c in "ab" for i in range(1, 5)}
    demand |= {"z_big": (2, 200), "m1": (1, 700), "m2": (1, 700)}
    build = "".join(timed(f"{c}{i}", 1, 300, 0.4, f"{c}{i - 1}" if i > 1 else "") for c in "ab"
                    for i in range(1, 5))
    build += timed("z_big", 2, 200, 0.4) + timed("m1", 1, 700, 0.3) + timed("m2", 1, 700, 0.3)
    ws.write({"posbuild.toml": BUDGET, "p/BUILD": build})
    ws.ok("-j", "4")
    spans = intervals(ws, sorted(demand))
    cpu, mem = peak(spans, demand)
    assert cpu <= 2 and mem <= 1000, spans  # never beyond the budget
    assert cpu == 2, spans  # the budget was used: no needless one-at-a-time
    # 700 + 700 > 1000
    assert not (spans["m1"][0] < spans["m2"][1] and spans["m2"][0] < spans["m1"][1])
    chain_starts = sorted(spans[n][0] for n in demand if n[0] in "ab")
    assert spans["z_big"][0] < chain_starts[-2], spans  # not postponed until the chains are done


def test_a_request_beyond_the_budget_is_orch_05_before_anything_runs(ws: Workspace) -> None:
    ws.write({"posbuild.toml": BUDGET, "p/BUILD": '''
        genrule(name = "prep", outs = ["prep.txt"], cmd = "echo prep > $@")
        genrule(name = "train", srcs = [":prep"], outs = ["model.txt"], resources = {"cpu": 8},
                cmd = "echo trained > $@")
    '''})
    result = ws.build()
    assert result.returncode == 15
    assert result.stderr.strip().splitlines()[-1] == (
        "posbuild: ORCH-05 resource oversubscription: //p:train requests cpu=8 but the budget is "
        "cpu=2 ([resources] in posbuild.toml)")
    assert not (ws.root / "posbuild-out" / "p" / "prep.txt").exists()


def test_a_memory_request_beyond_the_budget_names_mem_mb(ws: Workspace) -> None:
    ws.write({"posbuild.toml": BUDGET, "p/BUILD": '''
        genrule(name = "big", outs = ["o.txt"], resources = {"mem_mb": 4000}, cmd = "echo > $@")
    '''})
    result = ws.build()
    assert result.returncode == 15
    assert "//p:big requests mem_mb=4000 but the budget is mem_mb=1000" in result.stderr


def test_an_action_using_more_memory_than_declared_fails_with_orch_05(ws: Workspace) -> None:
    hog = "python3 -c 'b = b\\\"x\\\" * (200 * 1024 * 1024); print(len(b))' > $@"
    ws.write({"posbuild.toml": BUDGET, "p/BUILD": f'''
        genrule(name = "hog", outs = ["o.txt"], resources = {{"mem_mb": 50}}, cmd = "{hog}")
    '''})
    result = ws.build()
    assert result.returncode == 15, result.stdout + result.stderr
    match = re.search(r"ORCH-05 resource oversubscription: //p:hog used (\d+) MB of memory but "
                      r"declared mem_mb=50",
                      result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert 200 <= int(match.group(1)) < 400
    assert not (ws.root / "posbuild-out" / "p" / "o.txt").exists()
    # declared generously, the same command passes
    (ws.root / "p" / "BUILD").write_text(
        (ws.root / "p" / "BUILD").read_text().replace('"mem_mb": 50', '"mem_mb": 500'))
    ws.ok()


@pytest.mark.parametrize("mode", ["folder", "landlock", "namespace"])
def test_a_small_command_is_not_charged_with_posbuilds_memory(ws: Workspace, mode: str) -> None:
    """A command posbuild starts shares posbuild's memory until it execs (vfork), and the
    kernel counts that memory as the command's: `echo` was reported with posbuild's 30-80 MB
    (hundreds through the server), so `mem_mb = 8` failed it with ORCH-05. Now the small fork
    server starts it (Landlock; the folder sandbox, for an action with `mem_mb`) and its peak is
    its own, or, where posbuild starts it itself, a peak no higher than posbuild's is recorded as
    unknown and fails nothing."""
    problem = {"landlock": landlock_problem, "namespace": bwrap_problem}.get(mode, lambda: None)()
    if problem is not None:
        pytest.skip(problem)
    ws.write({"posbuild.toml": BUDGET + f'[sandbox]\nmode = "{mode}"\n', "p/BUILD": """
        genrule(name = "small", outs = ["s.txt"], resources = {"mem_mb": 8}, cmd = "echo x > $@")
        genrule(name = "line", outs = ["l.txt"], resources = {"mem_mb": 8},
                cmd = "echo x > $@ && echo y >> $@")
    """})
    result = ws.build()
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in ws.run("log", "--json").stdout.splitlines()]
    peaks = {r["label"]: r["usage"]["max_rss_kb"] for r in records}
    assert set(peaks) == {"//p:small", "//p:line"}, records
    # unknown (under posbuild's own), or what echo really took under a small fork server
    assert all(peak is None or peak < 8 * 1024 for peak in peaks.values()), peaks
    rows = [line.split() for line in ws.run("log").stdout.splitlines()
            if line.endswith(("//p:small", "//p:line"))]
    assert len(rows) == 2 and all(row[3] == "-" or float(row[3].rstrip("M")) < 8 for row in rows)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the launcher")
def test_a_checked_command_under_posbuilds_own_memory_is_measured_exactly(ws: Workspace) -> None:
    """In the folder sandbox the command of an action that declares `mem_mb` starts through the
    small fork server, so its peak is its own even when it is below posbuild's (which a command
    posbuild starts itself is charged with): 5 MB more than a bare Python, with `mem_mb = 8`, is
    ORCH-05; `echo` is measured, not left unknown."""
    taker = "python3 -c 'b = bytearray(5 * 1024 * 1024); print(len(b))' > $@"
    ws.write({"posbuild.toml": BUDGET + '[sandbox]\nmode = "folder"\n', "p/BUILD": f"""
        genrule(name = "taker", outs = ["t.txt"], resources = {{"mem_mb": 8}}, cmd = "{taker}")
        genrule(name = "small", outs = ["s.txt"], resources = {{"mem_mb": 8}}, cmd = "echo x > $@")
    """})
    result = ws.build("--keep-going")
    assert result.returncode == 15, result.stdout + result.stderr
    match = re.search(r"//p:taker used (\d+) MB of memory but declared mem_mb=8", result.stderr)
    assert match and 8 < int(match.group(1)) < 30, result.stderr
    assert "//p:small" not in result.stderr
    records = {r["label"]: r for r in map(json.loads, ws.run("log", "--json").stdout.splitlines())}
    small = records["//p:small"]["usage"]["max_rss_kb"]
    assert small is not None and small < 8 * 1024, records["//p:small"]


def test_thread_variables_follow_cpu(ws: Workspace) -> None:
    variables = "OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS NUMEXPR_NUM_THREADS"
    cmd = f"for v in {variables}; do printenv $$v; done > $@"
    ws.write({"posbuild.toml": BUDGET, "p/BUILD": f'''
        genrule(name = "two", outs = ["two.txt"], resources = {{"cpu": 2}}, cmd = "{cmd}")
        genrule(name = "default", outs = ["default.txt"], cmd = "{cmd}")
        genrule(name = "own", outs = ["own.txt"], resources = {{"cpu": 2}}, env = {{"OMP_NUM_THREADS": "7"}},
                cmd = "printenv OMP_NUM_THREADS > $@")
    '''})  # noqa: E501
    ws.ok()
    assert ws.out("p/two.txt").split() == ["2"] * 4
    assert ws.out("p/default.txt").split() == ["1"] * 4
    assert ws.out("p/own.txt") == "7\n"  # a variable the target sets itself is kept


def test_changing_cpu_reexecutes_and_changing_mem_mb_does_not(ws: Workspace) -> None:
    build = (
        'genrule(name = "g", outs = ["g.txt"], resources = {{"cpu": {cpu}, "mem_mb": {mem}}}, cmd '
        '= "echo $$OMP_NUM_THREADS > $@")\n')
    ws.write({"posbuild.toml": BUDGET, "p/BUILD": build.format(cpu=1, mem=100)})
    ws.ok()
    ws.write({"p/BUILD": build.format(cpu=1, mem=200)})
    assert "0 executed" in ws.ok().stdout
    ws.write({"p/BUILD": build.format(cpu=2, mem=200)})
    assert "1 executed" in ws.ok().stdout
    assert ws.out("p/g.txt") == "2\n"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and at least two processors")
def test_actions_run_pinned_to_cpu_processors(ws: Workspace) -> None:
    probe = "python3 -c 'import os; print(len(os.sched_getaffinity(0)))' > $@"
    ws.write({"posbuild.toml": BUDGET, "p/BUILD": f'''
        genrule(name = "one", outs = ["one.txt"], cmd = "{probe}")
        genrule(name = "two", outs = ["two.txt"], resources = {{"cpu": 2}}, cmd = "{probe}")
        genrule(name = "free", outs = ["free.txt"], resources = {{"cpu": 0}}, cmd = "{probe}")
    '''})
    ws.ok()
    assert ws.out("p/one.txt") == "1\n"
    assert ws.out("p/two.txt") == "2\n"
    assert ws.out("p/free.txt") == f"{len(os.sched_getaffinity(0))}\n"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
                    or shutil.which("cc") is None,
                    reason="needs CPU affinity, two processors and a C compiler")
def test_actions_with_checked_memory_are_pinned_as_the_others(ws: Workspace) -> None:
    """In the folder sandbox their commands start through the fork server, which sets the mask
    from the request; started by a worker that had just run a pinned action, it must not keep
    that one processor for an unpinned command."""
    probe = "python3 -c 'import os; print(len(os.sched_getaffinity(0)))' > $@"
    ws.write({"posbuild.toml": BUDGET + '[sandbox]\nmode = "folder"\n', "p/BUILD": f'''
        genrule(name = "one", outs = ["one.txt"], cmd = "{probe}")
        genrule(name = "free", srcs = [":one"], outs = ["free.txt"],
                resources = {{"cpu": 0, "mem_mb": 100}}, cmd = "{probe}")
        genrule(name = "two", srcs = [":free"], outs = ["two.txt"],
                resources = {{"cpu": 2, "mem_mb": 100}}, cmd = "{probe}")
        genrule(name = "single", srcs = [":two"], outs = ["single.txt"],
                resources = {{"mem_mb": 100}}, cmd = "{probe}")
    '''})
    ws.ok("-j1")
    assert ws.out("p/one.txt") == "1\n"
    assert ws.out("p/free.txt") == f"{len(os.sched_getaffinity(0))}\n"
    assert ws.out("p/two.txt") == "2\n"
    assert ws.out("p/single.txt") == "1\n"


def test_bad_resources_table_is_a_workspace_error(ws: Workspace) -> None:
    ws.write({"posbuild.toml": '[resources]\ncpus = 2\n',
              "p/BUILD": 'genrule(name = "g", outs = ["g"], cmd = "echo > $@")\n'})
    result = ws.build()
    assert result.returncode == 3
    assert "[resources] has unknown key 'cpus' (known: cpu, mem_mb, io)" in result.stderr


def test_a_large_memory_action_runs_beside_a_small_one_not_alone(ws: Workspace) -> None:
    """Four 600 MB actions, four 100 MB ones and one taking both processors, equally urgent:
    the labels put the small ones first, yet each 600 MB action runs beside a 100 MB one (their
    sum fits in 1000 MB) instead of alone after them, a processor idle."""
    demand = {f"a{n}": (1, 100) for n in range(4)} | {f"b{n}": (1, 600) for n in range(4)}
    demand["c"] = (2, 0)
    build = "".join(
        f'genrule(name = "{name}", outs = ["{name}.txt"], resources = {{"cpu": {cpu}, '
        f'"mem_mb": {mem}}}, cmd = "sleep 0.3; echo {name} > $@")\n'
        for name, (cpu, mem) in demand.items())
    ws.write({"posbuild.toml": BUDGET, "p/BUILD": build})
    ws.ok("-j", "2")
    records = [json.loads(line) for line in ws.run("log", "--json").stdout.splitlines()]
    spans = {r["label"].split(":")[1]: (datetime.fromisoformat(r["started"]).timestamp(),
                                        datetime.fromisoformat(r["ended"]).timestamp())
             for r in records}
    assert sorted(spans) == sorted(demand)
    cpu, mem = peak(spans, demand)
    assert cpu <= 2 and mem <= 1000, spans
    for big in (n for n in demand if n[0] == "b"):
        beside = [n for n in demand if n[0] == "a" and spans[n][0] < spans[big][1]
                  and spans[big][0] < spans[n][1]]
        assert beside, (big, spans)
