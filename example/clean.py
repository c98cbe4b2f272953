"""Normalise station names and drop rows without a numeric temperature."""

import csv
import sys

with open(sys.argv[1], newline="") as raw:
    rows = list(csv.DictReader(raw))

writer = csv.writer(sys.stdout, lineterminator="\n")
writer.writerow(["station", "date", "temperature_c", "humidity"])
for row in rows:
    try:
        temperature = float(row["temperature_c"])
    except ValueError:
        continue
    writer.writerow([row["station"].strip().lower(), row["date"], f"{temperature:.1f}",
                     row["humidity"]])
