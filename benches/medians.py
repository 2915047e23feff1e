#!/usr/bin/env python3
"""Medians over repeated loadgen runs, as a markdown table.

    benches/medians.py BASELINE FILE.json...

Each FILE is a loadgen --json report of one round; its name without the
round suffix (`dedup-r2.json` -> `dedup`) and each result's target name
label a row (`dedup/relayhub-18893-durable`). For every row: the median
and range over the rounds of deliveries/s, server CPU ns per delivery and
stored p99, and the ratio of the medians to the BASELINE row's.
"""

import json
import re
import statistics
import sys
from pathlib import Path


def rows(files):
    table = {}
    for file in files:
        group = re.sub(r"-r\d+$", "", Path(file).stem)
        for result in json.loads(Path(file).read_text())["results"]:
            label = f"{group}/{result['target']}"
            durable = result.get("durable") or {}
            stored_p99 = (durable.get("stored_latency") or {}).get("p99_us")
            table.setdefault(label, []).append(
                (
                    result["deliveries_per_s"],
                    result.get("server_cpu_ns_per_delivery"),
                    stored_p99,
                    result["errors"],
                )
            )
    return table


def spread(values, unit=""):
    values = [v for v in values if v is not None]
    if not values:
        return "-", None
    median = statistics.median(values)
    return f"{median:,.0f}{unit} ({min(values):,.0f}-{max(values):,.0f})", median


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    baseline, files = sys.argv[1], sys.argv[2:]
    table = rows(files)
    if baseline not in table:
        sys.exit(f"medians.py: no row {baseline!r} in {', '.join(table)}")
    medians = {}
    lines = [
        "| run/target | rounds | deliveries/s median (range) | vs baseline | "
        "server ns/delivery median (range) | vs baseline | stored p99 us median | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, samples in table.items():
        rate, rate_median = spread([s[0] for s in samples])
        cpu, cpu_median = spread([s[1] for s in samples])
        p99, _ = spread([s[2] for s in samples])
        medians[label] = (rate_median, cpu_median)
        lines.append([label, len(samples), rate, cpu, p99, sum(s[3] for s in samples)])
    base_rate, base_cpu = medians[baseline]
    out = lines[:2]
    for label, count, rate, cpu, p99, errors in lines[2:]:
        rate_median, cpu_median = medians[label]
        ratio = lambda a, b: f"{a / b:.3f}x" if a is not None and b else "-"
        out.append(
            f"| {label} | {count} | {rate} | {ratio(rate_median, base_rate)} | "
            f"{cpu} | {ratio(cpu_median, base_cpu)} | {p99} | {errors} |"
        )
    print("\n".join(out))


if __name__ == "__main__":
    main()
