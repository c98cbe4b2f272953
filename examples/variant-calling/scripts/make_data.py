"""Write the example's data: a small random genome and, for each sample, reads drawn from it
with a few variants of the sample's own. Deterministic (fixed seeds), so the shipped files can be
made again byte for byte: python3 scripts/make_data.py data
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

GENOME_LENGTH = 3000
READ_LENGTH = 100
COVERAGE = 15
# sample -> {position: alternative base}: the variants the caller should find
VARIANTS = {
    "A": {500: "T", 1500: "G"},
    "B": {500: "T", 2200: "C"},
    "C": {900: "A", 1500: "G", 2700: "T"},
}


def genome() -> str:
    rng = random.Random(1)
    return "".join(rng.choice("ACGT") for _ in range(GENOME_LENGTH))


def mutated(reference: str, variants: dict[int, str]) -> str:
    bases = list(reference)
    for position, alt in variants.items():
        assert bases[position] != alt, f"position {position} already holds {alt}"
        bases[position] = alt
    return "".join(bases)


def reads(sequence: str, sample: str) -> str:
    rng = random.Random(sample)
    count = GENOME_LENGTH * COVERAGE // READ_LENGTH
    records = []
    for number in range(count):
        start = rng.randrange(0, GENOME_LENGTH - READ_LENGTH)
        read = sequence[start:start + READ_LENGTH]
        records.append(f"@{sample}.{number}\n{read}\n+\n{'I' * READ_LENGTH}\n")
    return "".join(records)


def main(folder: Path) -> None:
    reference = genome()
    for position, alt in (p for v in VARIANTS.values() for p in v.items()):
        if reference[position] == alt:
            raise SystemExit(f"variant at {position} equals the reference base; change it")
    (folder / "genome.fa").write_text(
        ">chr1\n" + "\n".join(reference[i:i + 60] for i in range(0, GENOME_LENGTH, 60)) + "\n")
    (folder / "samples").mkdir(exist_ok=True)
    for sample, variants in VARIANTS.items():
        (folder / "samples" / f"{sample}.fastq").write_text(
            reads(mutated(reference, variants), sample))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
