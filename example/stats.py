"""Per-station summary statistics of the cleaned data, as JSON."""

import csv
import json
import statistics
import sys

by_station: dict[str, list[float]] = {}
with open(sys.argv[1], newline="") as clean:
    for row in csv.DictReader(clean):
        by_station.setdefault(row["station"], []).append(float(row["temperature_c"]))

summary = {
    station: {
        "n": len(values),
        "mean_c": round(statistics.fmean(values), 2),
        "min_c": min(values),
        "max_c": max(values),
    }
    for station, values in sorted(by_station.items())
}
with open(sys.argv[2], "w") as out:
    json.dump(summary, out, indent=2, sort_keys=True)
    out.write("\n")
