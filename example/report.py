"""A Markdown report from the statistics and the cleaned rows."""

import csv
import json
import sys

with open(sys.argv[1]) as handle:
    stats = json.load(handle)
with open(sys.argv[2], newline="") as handle:
    rows = sum(1 for _ in csv.DictReader(handle))

print("# Temperature report\n")
print(f"{rows} clean observations from {len(stats)} stations.\n")
print("| station | n | mean °C | min °C | max °C |")
print("| --- | ---: | ---: | ---: | ---: |")
for station, s in stats.items():
    print(f"| {station} | {s['n']} | {s['mean_c']:.2f} | {s['min_c']:.1f} | {s['max_c']:.1f} |")
