"""ORCH failures of an action travel as error classes, and still read as they always did."""

from __future__ import annotations

from posbuild.core.action import Action
from posbuild.engine.session import summary_error
from posbuild.errors import ActionFailed, NonDeterminism, ResourceOversubscription
from posbuild.engine.outcome import Failure
from posbuild.engine.reporter import BuildSummary
from posbuild.engine.resources import memory_overrun


def action(mem_mb: int) -> Action:
    return Action(label="//p:big", kind="genrule", command="true", inputs=(), tools=(), outputs=(),
                  env=(), versions=(), timeout=0, tags=(), def_hash=b"d" * 32, deps=(), sources=(),
                  resources=(1, mem_mb, 0))


def test_a_memory_overrun_is_orch_05_with_the_old_text() -> None:
    error = memory_overrun(action(10), 10 * 1024 + 1)
    assert isinstance(error, ResourceOversubscription)
    assert Failure.of(error) == Failure(
        "ORCH-05 resource oversubscription: //p:big used 11 MB of memory but declared mem_mb=10",
        "ORCH-05", error)
    assert memory_overrun(action(10), 10 * 1024) is None \
            and memory_overrun(action(0), 1 << 30) is None


def test_a_difference_under_verify_is_orch_04_with_the_old_text() -> None:
    failure = Failure.of(NonDeterminism("out: differs; the cached result is kept"))
    assert failure.message \
            == ("ORCH-04 non-deterministic execution: out: differs; the cached result is kept")
    assert failure.code == "ORCH-04"


def summary(*orch: type) -> BuildSummary:
    return BuildSummary(3, 1, 0, 2, 0, 0.1, ("//p:a", "//p:b"), orch=orch)


def test_the_build_exits_with_the_class_its_failures_carry() -> None:
    assert isinstance(summary_error(summary(NonDeterminism, ResourceOversubscription)),
                      NonDeterminism)
    assert isinstance(summary_error(summary(ResourceOversubscription)), ResourceOversubscription)
    error = summary_error(summary())
    assert isinstance(error, ActionFailed) \
            and error.render().endswith("2 actions failed: //p:a, //p:b")
