"""feedback_loop: the closed train -> evaluate -> gap -> update loop as ordinary cached actions."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path


from conftest import POSBUILD, Workspace, counts, executed_labels

# A toy model {"value": v}: each iteration adds `step` (from data/step.txt); the gap result says
# converged once v reaches `target` (from data/target.txt). So it converges after
# ceil(target / step) iterations.
COMMON = """
import argparse, json

def parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model")
    parser.add_argument("--gap")
    parser.add_argument("--evaluation")
    parser.add_argument("--train")
    return parser.parse_args()

def load(path, default=None):
    if path is None:
        return default
    with open(path) as f:
        return json.load(f)

def save(path, value):
    with open(path, "w") as f:
        json.dump(value, f, sort_keys=True)

def numbers(paths):
    return [int(open(p).read()) for p in paths]
"""

TRAIN = """
import common
a = common.parse()
step, _ = common.numbers(a.data)
model = common.load(a.model, {"value": 0})
common.save(a.out, {"value": model["value"] + step, "iteration": a.iteration})
"""

EVALUATE = """
import common
a = common.parse()
_, target = common.numbers(a.data)
model = common.load(a.model)
common.save(a.out, {"distance": max(0, target - model["value"])})
"""

GAP = """
import common
a = common.parse()
evaluation = common.load(a.evaluation)
common.save(a.out, {"converged": evaluation["distance"] == 0, "distance": evaluation["distance"],
                    "iteration": a.iteration})
"""

UPDATE = """
import common
a = common.parse()
common.save(a.out, common.load(a.train))
"""


def _build(max_iterations: int, extra: str = "") -> str:
    return f"""
        load("@posbuild//rules:feedback_loop.bzl", "feedback_loop")
        feedback_loop(
            name = "fit",
            data = ["step.txt", "target.txt"],
            initial_model = "init.json",
            train = "train.py",
            evaluate = "evaluate.py",
            gap = "gap.py",
            update = "update.py",
            deps = ["common.py"],
            max_iterations = {max_iterations},{extra}
        )
    """


def _workspace(ws: Workspace, max_iterations: int = 6, step: int = 1, target: int = 3) -> None:
    ws.write({
        "ml/BUILD": _build(max_iterations),
        "ml/common.py": COMMON,
        "ml/train.py": TRAIN,
        "ml/evaluate.py": EVALUATE,
        "ml/gap.py": GAP,
        "ml/update.py": UPDATE,
        "ml/init.json": '{"value": 0}',
        "ml/step.txt": f"{step}\n",
        "ml/target.txt": f"{target}\n",
    })


def _history(ws: Workspace) -> dict:
    return json.loads(ws.out("ml/fit/history.json"))


def _model(ws: Workspace) -> dict:
    return json.loads(ws.out("ml/fit/model.json"))


def _stage_labels(stages: str, iterations: range) -> list[str]:
    return sorted(f"//ml:fit_{s}_{i}" for s in stages.split() for i in iterations)


ALL = "train evaluate gap update"


def test_converges_after_k_iterations(ws: Workspace) -> None:
    _workspace(ws, max_iterations=6, target=3)
    result = ws.ok("//ml:fit")
    history = _history(ws)
    assert history["converged"] is True
    assert history["iterations"] == 3
    assert [h["iteration"] for h in history["history"]] == [1, 2, 3]
    assert [h["gap"]["converged"] for h in history["history"]] == [False, False, True]
    assert _model(ws) == {"value": 3, "iteration": 3}
    assert counts(result)["executed"] == 6 * 4 + 1
    # After convergence, iterations 4..6 copy through: same model, same gap result.
    for i in (4, 5, 6):
        assert json.loads(ws.out(f"ml/fit/model_{i}.json")) == {"value": 3, "iteration": 3}
        assert json.loads(ws.out(f"ml/fit/gap_{i}.json"))["iteration"] == 3


def test_stops_at_max_iterations(ws: Workspace) -> None:
    _workspace(ws, max_iterations=2, target=5)
    ws.ok("//ml:fit")
    history = _history(ws)
    assert history["converged"] is False
    assert history["iterations"] == 2
    assert len(history["history"]) == 2
    assert _model(ws) == {"value": 2, "iteration": 2}


def test_nothing_changed_executes_nothing(ws: Workspace) -> None:
    _workspace(ws, max_iterations=4, target=2)
    ws.ok("//ml:fit")
    assert counts(ws.ok("//ml:fit")) == {"executed": 0, "cached": 4 * 4 + 1, "failed": 0}


def test_raising_max_iterations_executes_only_new_iterations(ws: Workspace) -> None:
    _workspace(ws, max_iterations=2, target=4)
    ws.ok("//ml:fit")
    assert _history(ws)["iterations"] == 2
    ws.write({"ml/BUILD": _build(5)})
    result = ws.ok("//ml:fit")
    assert executed_labels(result) == sorted(_stage_labels(ALL, range(3, 6)) + ["//ml:fit"])
    assert _history(ws)["iterations"] == 4
    assert _model(ws) == {"value": 4, "iteration": 4}


def test_raising_max_iterations_after_convergence_only_copies(ws: Workspace) -> None:
    _workspace(ws, max_iterations=3, target=2)
    ws.ok("//ml:fit")
    before = (ws.out("ml/fit/model.json"), ws.out("ml/fit/history.json"))
    ws.write({"ml/BUILD": _build(5)})
    result = ws.ok("//ml:fit")
    # The new iterations' actions run (each a copy of its previous output), and the final step.
    assert executed_labels(result) == sorted(_stage_labels(ALL, range(4, 6)) + ["//ml:fit"])
    assert (ws.out("ml/fit/model.json"), ws.out("ml/fit/history.json")) == before


def test_changed_data_re_executes_from_iteration_one(ws: Workspace) -> None:
    _workspace(ws, max_iterations=4, target=4)
    ws.ok("//ml:fit")
    assert _history(ws)["iterations"] == 4
    ws.write({"ml/step.txt": "2\n"})
    result = ws.ok("//ml:fit")
    executed = executed_labels(result)
    assert "//ml:fit_train_1" in executed
    assert executed == sorted(_stage_labels(ALL, range(1, 5)) + ["//ml:fit"])
    assert _history(ws)["iterations"] == 2
    assert _model(ws) == {"value": 4, "iteration": 2}


def test_iteration_versions_are_recorded(ws: Workspace) -> None:
    _workspace(ws, max_iterations=2, target=5)
    ws.ok("//ml:fit")
    log = ws.run("log", "--json")
    assert log.returncode == 0, log.stderr
    records = {r["label"]: r for r in map(json.loads, log.stdout.splitlines())}
    for stage in ALL.split():
        for i in (1, 2):
            versions = records[f"//ml:fit_{stage}_{i}"]["versions"]
            assert versions == {"model": str(i)}


def test_gap_finishes_before_next_train(ws: Workspace) -> None:
    _workspace(ws, max_iterations=4, target=3)
    ws.ok("-j", "4", "//ml:fit")
    log = ws.run("log", "--json")
    records = {r["label"]: r for r in map(json.loads, log.stdout.splitlines())}
    for i in (1, 2, 3):
        gap, train = records[f"//ml:fit_gap_{i}"], records[f"//ml:fit_train_{i + 1}"]
        assert gap["state"] == train["state"] == "SUCCESS"
        assert gap["ended"] <= train["started"]


def test_two_clean_builds_are_byte_identical(ws: Workspace) -> None:
    _workspace(ws, max_iterations=5, target=3)
    ws.ok("//ml:fit")
    first = {p.relative_to(ws.root): p.read_bytes()
             for p in sorted((ws.root / "posbuild-out").rglob("*")) if p.is_file()}
    shutil.rmtree(ws.root / "posbuild-out")
    shutil.rmtree(ws.root / ".posbuild")
    result = ws.ok("//ml:fit")
    assert counts(result)["cached"] == 0
    second = {p.relative_to(ws.root): p.read_bytes()
              for p in sorted((ws.root / "posbuild-out").rglob("*")) if p.is_file()}
    assert first == second
    assert _history(ws)["iterations"] == 3


def test_a_gap_result_without_converged_fails(ws: Workspace) -> None:
    _workspace(ws, max_iterations=2)
    ws.write(
        {"ml/gap.py": "import common\na = common.parse()\ncommon.save(a.out, {'distance': 1})\n"})
    result = ws.build("//ml:fit")
    assert result.returncode == 1
    assert "boolean \"converged\"" in result.stdout + result.stderr


def test_bad_max_iterations_is_a_build_file_error(ws: Workspace) -> None:
    _workspace(ws)
    ws.write({"ml/BUILD": _build(0)})
    result = ws.build("//ml:fit")
    assert result.returncode == 3
    assert "max_iterations" in result.stderr


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ml-loop"


def test_ml_loop_example_builds_byte_identically_twice(tmp_path: Path) -> None:
    outputs = []
    for run in ("first", "second"):
        root = tmp_path / run
        shutil.copytree(EXAMPLE, root,
                        ignore=shutil.ignore_patterns("posbuild-out", ".posbuild", "__pycache__"))
        proc = subprocess.run([*POSBUILD, "build", "-q", "//..."], cwd=root, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = root / "posbuild-out"
        outputs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*"))
                        if p.is_file()})
    assert outputs[0] == outputs[1]
    files = outputs[0]
    history = json.loads(files[Path("fit/history.json")])
    assert history["converged"] is True
    assert 1 < history["iterations"] < 20
    assert files[Path("report.md")].startswith(b"# ml-loop report")
    assert files[Path("loss.svg")].startswith(b"<svg ")
