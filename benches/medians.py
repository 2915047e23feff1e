#!/usr/bin/env python3
"""Medians over repeated loadgen runs, as markdown tables.

    benches/medians.py BASELINE FILE.json...
    benches/medians.py --rounds DIR N ROW[:SINK]...
    benches/medians.py --headroom DIR N ROW[:SINK]...

First form (benches/durable.sh): each FILE is a loadgen --json report of
one round; its name without the round suffix (`dedup-r2.json` -> `dedup`)
and each result's target name label a row (`dedup/relayhub-18893-durable`).
For every row: the median and range over the rounds of deliveries/s, server
CPU ns per delivery and stored p99, and the ratio of the medians to the
BASELINE row's.

--rounds (benches/compare.sh with ROUNDS > 1): for each ROW, the reports
DIR/ROW-r1.json .. DIR/ROW-rN.json (DIR/ROW.json when N is 1) and those of
its sink run SINK (the same load against the loadgen's sink): a table per
row with, per target, the median and range of deliveries/s, MB/s, p99 and
server CPU ns per delivery; then, per round, the ratios of the row's first
target (relayhub) to the best other target of the same run (highest
deliveries/s, lowest p99) and of the sink to it, and their medians. ROW
may be empty (`:headroom-64b`) when only the sink ran.

--headroom: one table over all rows: every target's deliveries/s, CPU use
of the loadgen and the server, CPU ns per delivery, and the sink's rate
over the target's (medians over the N rounds).
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


def spread(values, unit="", digits=0):
    values = [v for v in values if v is not None]
    if not values:
        return "-", None
    median = statistics.median(values)
    number = f"{{:,.{digits}f}}".format
    return f"{number(median)}{unit} ({number(min(values))}-{number(max(values))})", median


def medians_vs_baseline(baseline, files):
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
    return "\n".join(out)


def round_results(directory, name, rounds):
    """The results of NAME's rounds, one list per round ([] where a round
    wrote no report: the run failed or was not selected)."""
    if not name:
        return [[] for _ in range(rounds)]
    names = [name] if rounds == 1 else [f"{name}-r{n}" for n in range(1, rounds + 1)]
    out = []
    for stem in names:
        path = Path(directory) / f"{stem}.json"
        try:
            out.append(json.loads(path.read_text())["results"])
        except (OSError, ValueError, KeyError):
            out.append([])
    return out


def p99(result):
    return (result.get("latency") or {}).get("p99_us")


def entries(arguments):
    """ROW[:SINK] arguments as (row, sink) pairs, either may be empty."""
    pairs = []
    for argument in arguments:
        row, _, sink = argument.partition(":")
        pairs.append((row, sink))
    return pairs


def ratio_line(title, values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    per_round = ", ".join(f"{v:.2f}x" for v in values)
    return f"- {title}: {per_round}; median {statistics.median(values):.2f}x"


def row_table(directory, rounds, row, sink):
    server = round_results(directory, row, rounds)
    sinks = round_results(directory, sink, rounds)
    samples = {}
    for results, suffix in [(server, ""), (sinks, " (sink)")]:
        for round_runs in results:
            for result in round_runs:
                samples.setdefault(result["target"] + suffix, []).append(result)
    if not samples:
        return None
    title = " / ".join(name for name in (row, sink) if name)
    lines = [
        f"### {title}",
        "",
        "| target | rounds | deliveries/s median (range) | MB/s median (range) | "
        "p99 us median (range) | server ns/delivery median (range) | lost/dup/reord | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target, results in samples.items():
        rate, _ = spread([r["deliveries_per_s"] for r in results])
        megabytes, _ = spread([r["megabytes_per_s"] for r in results], digits=1)
        latency, _ = spread([p99(r) for r in results], digits=1)
        cpu, _ = spread([r.get("server_cpu_ns_per_delivery") for r in results])
        sequence = [r.get("sequence") or {} for r in results]
        checks = "/".join(
            str(sum(s.get(key, 0) for s in sequence)) for key in ("lost", "duplicated", "reordered")
        )
        errors = sum(r.get("errors", 0) for r in results)
        lines.append(
            f"| {target} | {len(results)} | {rate} | {megabytes} | {latency} | {cpu} | {checks} | {errors} |"
        )
    # Same-run ratios: the row's first target against the best other one.
    rate_ratios, p99_ratios, sink_ratios = [], [], []
    first = None
    for round_runs, sink_runs in zip(server, sinks):
        if not round_runs:
            continue
        base, others = round_runs[0], round_runs[1:]
        first = base["target"]
        rates = [o["deliveries_per_s"] for o in others if o["deliveries_per_s"] > 0]
        latencies = [p99(o) for o in others if p99(o)]
        rate_ratios.append(base["deliveries_per_s"] / max(rates) if rates else None)
        p99_ratios.append(p99(base) / min(latencies) if latencies and p99(base) else None)
        if sink_runs and base["deliveries_per_s"] > 0:
            sink_ratios.append(sink_runs[0]["deliveries_per_s"] / base["deliveries_per_s"])
    notes = [
        ratio_line(f"{first} / best other target, deliveries/s, per round", rate_ratios),
        ratio_line(f"{first} / best other target, p99 (below 1: {first}'s is lower), per round", p99_ratios),
        ratio_line(f"sink / {first}, deliveries/s (the loadgen's headroom), per round", sink_ratios),
    ]
    notes = [note for note in notes if note]
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


def rounds_tables(directory, rounds, arguments):
    tables = [row_table(directory, rounds, row, sink) for row, sink in entries(arguments)]
    header = f"Medians and ranges over {rounds} rounds (rows interleaved: round 1 of every row, then round 2, ...)."
    return "\n\n".join([header] + [t for t in tables if t])


def headroom_table(directory, rounds, arguments):
    median = lambda values: (
        statistics.median([v for v in values if v is not None])
        if any(v is not None for v in values)
        else None
    )
    lines = [
        "| load | target | deliveries/s | loadgen cpu | server cpu | loadgen ns/delivery | "
        "server ns/delivery | sink rate / target rate |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row, sink in entries(arguments):
        if not sink:
            continue
        sinks = round_results(directory, sink, rounds)
        by_target = {}
        for results in round_results(directory, row, rounds) + sinks:
            for result in results:
                by_target.setdefault(result["target"], []).append(result)
        sink_rate = median([r["deliveries_per_s"] for rs in sinks for r in rs])
        for target, results in by_target.items():
            value = lambda key: median([r.get(key) for r in results])
            rate = value("deliveries_per_s")
            f = lambda v, fmt: "-" if v is None else fmt.format(v)
            relative = sink_rate / rate if sink_rate and rate else None
            lines.append(
                f"| {row or sink} | {target} | {f(rate, '{:,.0f}')} | {f(value('loadgen_cpu_percent'), '{:.0f}%')} | "
                f"{f(value('server_cpu_percent'), '{:.0f}%')} | {f(value('loadgen_cpu_ns_per_delivery'), '{:.0f}')} | "
                f"{f(value('server_cpu_ns_per_delivery'), '{:.0f}')} | {f(relative, '{:.2f}x')} |"
            )
    if rounds > 1:
        lines += ["", f"Medians of {rounds} rounds."]
    return "\n".join(lines)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] in ("--rounds", "--headroom"):
        mode, directory, rounds, arguments = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
        render = rounds_tables if mode == "--rounds" else headroom_table
        print(render(directory, rounds, arguments))
        return
    if len(sys.argv) < 3 or sys.argv[1].startswith("--"):
        sys.exit(__doc__)
    print(medians_vs_baseline(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
