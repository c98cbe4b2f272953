"""The variant-calling example (examples/variant-calling) with the real tools: the calls are the
variants its data was made with, and changing one sample re-runs that sample's steps and the call
only."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import counts
from oracle import assert_correct_build

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "variant-calling"
TOOLS = ("bwa", "samtools", "bcftools")
missing = [tool for tool in TOOLS if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} on PATH "
                                                      "(apt-get install bwa samtools bcftools)")

# (position, ref, alt) -> genotypes of A, B, C: what scripts/make_data.py put into the reads
EXPECTED = {
    ("501", "G", "T"): ("1/1", "1/1", "0/0"),
    ("901", "T", "A"): ("0/0", "0/0", "1/1"),
    ("1501", "T", "G"): ("1/1", "0/0", "1/1"),
    ("2201", "T", "C"): ("0/0", "1/1", "0/0"),
    ("2701", "C", "T"): ("0/0", "0/0", "1/1"),
}


@pytest.fixture
def example(ws):
    """The `ws` workspace holding a copy of the example."""
    shutil.copytree(EXAMPLE, ws.root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("posbuild-out", ".posbuild"))
    return ws


def _calls(root: Path) -> dict[tuple[str, str, str], tuple[str, ...]]:
    rows = [line.split("\t") for line in (root / "posbuild-out/calls.vcf").read_text().splitlines()
            if not line.startswith("#")]
    return {(r[1], r[3], r[4]): tuple(sample.split(":")[0] for sample in r[9:]) for r in rows}


def test_the_pipeline_calls_the_variants_its_data_was_made_with(example) -> None:
    result = example.ok("//...")
    assert counts(result) == {"executed": 10, "cached": 0, "failed": 0}
    assert _calls(example.root) == EXPECTED
    assert (example.root / "posbuild-out/quals.svg").read_text().startswith("<svg ")
    assert counts(example.ok("//...")) == {"executed": 0, "cached": 10, "failed": 0}


def test_changing_one_sample_re_runs_that_sample_and_the_call_only(example) -> None:
    example.ok("//...")
    reads = example.root / "data/samples/B.fastq"
    lines = reads.read_text().splitlines(keepends=True)
    lines[1] = "C" + lines[1][1:]  # one base of one read
    reads.write_text("".join(lines))
    result = example.ok("--explain", "//...")
    assert counts(result) == {"executed": 3, "cached": 7, "failed": 0}
    ran = sorted(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("["))
    assert ran == ["//:calls", "//:indexed_B", "//:sorted_B"]
    assert "explain //:sorted_B: input data/samples/B.fastq changed" in result.stderr
    assert _calls(example.root) == EXPECTED  # one base of one read changes no call
    assert_correct_build(example)


def _ran(result) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("["))


def test_a_tool_upgrade_re_runs_the_steps_that_run_that_tool_only(example) -> None:
    example.ok("//...")
    # samtools upgraded (faked: the fingerprint entry of the program the steps find on the PATH)
    upgraded = {"POSBUILD_TEST_FINGERPRINT": json.dumps({"tool.samtools": "/usr/bin/samtools 0"})}
    result = example.build("--explain", "//...", env=upgraded)
    assert result.returncode == 0, result.stderr
    # (genome_index runs `samtools faidx` too; the calls come out the same: early cutoff)
    assert _ran(result) == ["//:genome_index", "//:indexed_A", "//:indexed_B", "//:indexed_C",
                            "//:sorted_A", "//:sorted_B", "//:sorted_C"]
    assert "the environment hash changed" in result.stderr
    assert_correct_build(example, environ=upgraded)
    # a package installed into the Python the plot runs re-runs the plot alone
    python = {"POSBUILD_TEST_FINGERPRINT": json.dumps({
        "tool.samtools": "/usr/bin/samtools 0", f"tool.{sys.executable}": "another python"})}
    assert _ran(example.build("//...", env=python)) == ["//:plot"]
