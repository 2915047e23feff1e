#!/usr/bin/env bash
# Is the loadgen, not the hub, the limit? Runs the same loads against the
# hub and against the loadgen's own sink (the cheapest possible peer),
# alternately, REPEAT times each, every server pinned to SERVER_CORE and the
# loadgen to LOADGEN_CORE, and prints the median (and range) of each
# number. Alternating and repeating matters on a shared machine: a single
# pair of runs can differ by 1.5x from one minute to the next.
#
#   benches/headroom.sh                     # 64 B w16, 64 B w64, 1 MiB; 3 x 8 s each
#   REPEAT=5 DURATION=10s benches/headroom.sh
#   PRIORITY=1 benches/headroom.sh          # own session at autogroup nice -20 (root)
#
# Output: a markdown table on stdout, and OUT/headroom-runs.json (every run).
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=headroom.sh
source benches/lib.sh
bench_priority "$@"

OUT=${OUT:-docs/reports}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
REPEAT=${REPEAT:-3}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
HUB_PORT=${HUB_PORT:-17878}
SINK_PORT=${SINK_PORT:-17880}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
LOADGEN=$TARGET_DIR/release/relayhub-loadgen
HUB=$TARGET_DIR/release/relayhub

if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release -p relayhub-loadgen -p relayhub-server
fi


port_free "$HUB_PORT" HUB
port_free "$SINK_PORT" SINK

mkdir -p "$OUT"
work=$(mktemp -d)
taskset -c "$SERVER_CORE" "$HUB" --listen "127.0.0.1:$HUB_PORT" --shards 1 --pin false --storage memory >"$work/hub.log" 2>&1 &
pids+=($!); hub_pid=$!
wait_port "$HUB_PORT" "$hub_pid"
taskset -c "$SERVER_CORE" "$LOADGEN" --sink-listen "127.0.0.1:$SINK_PORT" >"$work/sink.log" 2>&1 &
pids+=($!); sink_pid=$!
wait_port "$SINK_PORT" "$sink_pid"

loads=(
    "64 B, window 16|--scenario relay --clients 64 --window 16 --body-bytes 64"
    "64 B, window 64|--scenario relay --clients 64 --window 64 --body-bytes 64"
    "1 MiB, 8 x window 4|--scenario relay --clients 8 --window 4 --body-bytes 1048576"
)
echo "headroom.sh: load average $(cut -d' ' -f1-3 /proc/loadavg), $REPEAT x $DURATION per target and load" >&2
for load in "${loads[@]}"; do
    label=${load%%|*}
    args=${load#*|}
    for round in $(seq "$REPEAT"); do
        for target in hub sink; do
            if [[ $target == hub ]]; then
                url="relayhub://127.0.0.1:$HUB_PORT"; pid=$hub_pid
            else
                url="sink://127.0.0.1:$SINK_PORT"; pid=$sink_pid
            fi
            # shellcheck disable=SC2086
            taskset -c "$LOADGEN_CORE" "$LOADGEN" --target "$url" --server-pid "$pid" \
                --duration "$DURATION" --warmup "$WARMUP" -q --json "$work/run.json" $args >/dev/null
            python3 - "$work/run.json" "$label" "$target" "$round" "$(cut -d' ' -f1 /proc/loadavg)" >>"$work/runs.jsonl" <<'PY'
import json, sys
path, label, target, round_, load = sys.argv[1:]
r = json.load(open(path))["results"][0]
print(json.dumps({"load": label, "target": target, "round": int(round_), "loadavg": float(load),
                  "deliveries_per_s": r["deliveries_per_s"], "megabytes_per_s": r["megabytes_per_s"],
                  "loadgen_cpu_percent": r["loadgen_cpu_percent"], "server_cpu_percent": r["server_cpu_percent"],
                  "loadgen_cpu_ns_per_delivery": r["loadgen_cpu_ns_per_delivery"],
                  "server_cpu_ns_per_delivery": r["server_cpu_ns_per_delivery"],
                  "p99_us": r["latency"]["p99_us"], "lost": r["sequence"]["lost"], "errors": r["errors"]}))
PY
            echo "  $label $target round $round done" >&2
        done
    done
done

python3 - "$work/runs.jsonl" "$OUT/headroom-runs.json" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
json.dump(runs, open(sys.argv[2], "w"), indent=1)
def cell(values, fmt):
    values = sorted(values)
    return f"{fmt.format(statistics.median(values))} ({fmt.format(values[0])}-{fmt.format(values[-1])})"
print("| load | target | deliveries/s | loadgen cpu | server cpu | loadgen ns/delivery | server ns/delivery | lost+errors |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
medians = {}
for load in dict.fromkeys(r["load"] for r in runs):
    for target in ("hub", "sink"):
        rs = [r for r in runs if r["load"] == load and r["target"] == target]
        medians[(load, target)] = statistics.median(r["deliveries_per_s"] for r in rs)
        print(f"| {load} | {target} | {cell([r['deliveries_per_s'] for r in rs], '{:,.0f}')} | "
              f"{cell([r['loadgen_cpu_percent'] for r in rs], '{:.0f}%')} | {cell([r['server_cpu_percent'] for r in rs], '{:.0f}%')} | "
              f"{cell([r['loadgen_cpu_ns_per_delivery'] for r in rs], '{:,.0f}')} | {cell([r['server_cpu_ns_per_delivery'] for r in rs], '{:,.0f}')} | "
              f"{sum(r['lost'] + r['errors'] for r in rs)} |")
print()
print("| load | sink / hub deliveries/s (medians) |")
print("| --- | ---: |")
for load in dict.fromkeys(r["load"] for r in runs):
    print(f"| {load} | {medians[(load, 'sink')] / medians[(load, 'hub')]:.2f}x |")
PY
rm -rf "$work"
