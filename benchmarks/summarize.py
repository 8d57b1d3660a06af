"""Prints a run's test bits/dim against wall-clock time as a Markdown table.

    python benchmarks/summarize.py runs/glow_mnist_small
"""

import csv
import json
import pathlib
import sys

run = pathlib.Path(sys.argv[1])
results = json.loads((run / "results.json").read_text())
print(f"{results['model']} ({results['config']}), {results['parameters']:,} parameters, "
      f"backend {results['backend']}, {results['hardware']}, {results['date']}")
print(f"`{results['command']}`\n")
if "evaluate_command" in results:
    print(f"Final figures re-scored with `{results['evaluate_command']}`.\n")
words = results["command"].split()
subset = words[words.index("--eval-images") + 1] if "--eval-images" in words else "2000"
print(f"| epoch | wall clock (s) | train loss (bits/dim) | test bits/dim, midpoints, "
      f"{subset}-image subset |")
print("| --- | --- | --- | --- |")
with open(run / "log.csv") as f:
    for row in csv.DictReader(f):
        print(f"| {int(row['epoch']) + 1} | {float(row['wall_clock_seconds']):.0f} | "
              f"{float(row['loss']):.3f} | {float(row['test_bits_per_dim']):.3f} |")
print(f"\nFinal, all {results['test_images']:,} test images after "
      f"{results['optimizer_steps']:,} steps: {results['test_bits_per_dim']:.3f} bits/dim "
      f"(uniform dequantization, one draw per image), "
      f"{results['test_bits_per_dim_midpoint']:.3f} at bin midpoints.")
