"""Report: a Markdown summary of the loop and an SVG plot of the loss per iteration."""

import json
import sys

paths, (report_out, svg_out) = sys.argv[1:-2], sys.argv[-2:]
model_path = next(p for p in paths if p.endswith("model.json"))
history_path = next(p for p in paths if p.endswith("history.json"))
with open(model_path) as f:
    model = json.load(f)
with open(history_path) as f:
    history = json.load(f)
rows = [(h["iteration"], h["gap"]["train_loss"], h["gap"]["validation_loss"])
        for h in history["history"]]

lines = [
    "# ml-loop report",
    "",
    "Linear model y = w*x + b fitted by gradient descent in a closed feedback loop.",
    "",
    f"- converged: {'yes' if history['converged'] else 'no'}",
    f"- iterations: {history['iterations']}",
    f"- w = {model['w']:.6f}, b = {model['b']:.6f} (model of iteration {model['iteration']})",
    "",
    "| iteration | train loss | validation loss |",
    "| ---: | ---: | ---: |",
]
lines += [f"| {i} | {t:.6f} | {v:.6f} |" for i, t, v in rows]
lines += ["", "![loss per iteration](loss.svg)", ""]
with open(report_out, "w") as f:
    f.write("\n".join(lines))

width, height, margin = 480, 300, 40
top = max(max(t, v) for _, t, v in rows) or 1.0
count = max(len(rows) - 1, 1)


def point(index, value):
    x = margin + index * (width - 2 * margin) / count
    y = height - margin - value / top * (height - 2 * margin)
    return f"{x:.2f},{y:.2f}"


svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 '
    f'{width} {height}">',
    f'<rect width="{width}" height="{height}" fill="white"/>',
    f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" '
    'stroke="black"/>',
    f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
    f'<text x="{width / 2:.0f}" y="{height - 8}" text-anchor="middle" font-size="12">iteration '
    f'(1..{len(rows)})</text>',
    f'<text x="8" y="{margin - 10}" font-size="12">loss (max {top:.4f})</text>',
]
for column, colour, name in ((1, "steelblue", "train"), (2, "darkorange", "validation")):
    points = " ".join(point(i, row[column]) for i, row in enumerate(rows))
    svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
    svg.append(
        f'<text x="{width - margin}" y="{margin + 14 * column}" text-anchor="end" font-size="12" '
        f'fill="{colour}">{name}</text>')
svg.append("</svg>")
with open(svg_out, "w") as f:
    f.write("\n".join(svg) + "\n")
