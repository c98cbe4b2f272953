"""Plot the quality of each variant call as a bar chart (an SVG, with no plotting library)."""

from __future__ import annotations

import sys


def calls(vcf: str) -> list[tuple[str, float]]:
    rows = []
    for line in open(vcf):
        if line.startswith("#"):
            continue
        chrom, pos, _, ref, alt, qual = line.split("\t")[:6]
        rows.append((f"{chrom}:{pos} {ref}>{alt}", float(qual)))
    return rows


def svg(rows: list[tuple[str, float]]) -> str:
    width, bar, gap = 600, 18, 6
    top = max((q for _, q in rows), default=1.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{(bar + gap) * len(rows) + 10}">']
    for index, (name, qual) in enumerate(rows):
        y = 5 + index * (bar + gap)
        length = (width - 220) * qual / top
        parts.append(f'<text x="5" y="{y + 13}" font-size="12">{name}</text>')
        parts.append(f'<rect x="150" y="{y}" width="{length:.1f}" height="{bar}" fill="#4a7"/>')
        parts.append(f'<text x="{155 + length:.1f}" y="{y + 13}" font-size="12">{qual:.0f}</text>')
    return "\n".join(parts + ["</svg>\n"])


if __name__ == "__main__":
    source, target = sys.argv[1:3]
    with open(target, "w") as out:
        out.write(svg(calls(source)))
