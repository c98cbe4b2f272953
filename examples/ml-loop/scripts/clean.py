"""Clean the raw CSV: drop rows with a missing or non-numeric field; write x,y with fixed digits."""

import sys

source, target = sys.argv[1], sys.argv[2]
kept = []
with open(source) as f:
    next(f)  # header
    for line in f:
        fields = line.strip().split(",")
        try:
            x, y = float(fields[0]), float(fields[1])
        except (IndexError, ValueError):
            continue
        kept.append(f"{x:.4f},{y:.4f}")
with open(target, "w") as f:
    f.write("x,y\n" + "".join(row + "\n" for row in kept))
