"""Reads a data file bundled in the zip (the run's working directory is the zip's contents)."""

import csv
from pathlib import Path

with Path("data/measurements.csv").open(newline="") as handle:
    values = [float(row["value"]) for row in csv.DictReader(handle)]
print(f"rows={len(values)} total={sum(values):.1f} mean={sum(values) / len(values):.2f}")
