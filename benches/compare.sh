#!/usr/bin/env bash
# The standard comparison: relayhub vs nats-server vs redis-server.
#
# Every server runs pinned to one core (SERVER_CORE, default 0), the loadgen
# to another (LOADGEN_CORE, default 1), one at a time against the same
# workload. Writes tables, .hgrm, JSON and SVG under OUT (docs/reports).
# The loadgen's own sink (relayhub-loadgen --sink-listen, pinned like a
# server) gets the 64 B and 1 MiB relay loads too: how fast the loadgen
# alone can drive traffic, i.e. its headroom over the servers (headroom.md).
#
#   benches/compare.sh                  # everything, 10 s per run
#   DURATION=3s benches/compare.sh      # quicker
#   SKIP_RELAYHUB=1 benches/compare.sh  # NATS vs Redis only
#   SKIP_SINK=1 benches/compare.sh      # no headroom runs
#   MIB_CLIENTS=8 MIB_WINDOW=4          # the 1 MiB run's pipeline (default)
#   ONLY="relay-64b-closed relay-1mib headroom-64b" benches/compare.sh  # some rows
#   PRIORITY=1 benches/compare.sh       # on a shared machine: run in a session
#                                       # of its own at autogroup nice -20 (root)
#
# Needs: nats-server and redis-server on PATH (apt-get install -y
# nats-server redis-server), python3 (reads the first run's JSON).
# Everything it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# With autogroup scheduling (Linux' default), nice only ranks processes of
# one session; a session of our own with its autogroup at nice -20 takes
# the cores from builds and fuzzers running in other sessions.
if [[ -n ${PRIORITY:-} && -z ${COMPARE_SH_SESSION:-} ]]; then
    export COMPARE_SH_SESSION=1
    exec setsid -w "$0" "$@"
fi
if [[ -n ${PRIORITY:-} ]]; then
    echo -20 >/proc/self/autogroup 2>/dev/null || echo "compare.sh: cannot raise the autogroup priority (needs root)" >&2
fi

OUT=${OUT:-docs/reports}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
HUB_PORT=${HUB_PORT:-17878}
NATS_PORT=${NATS_PORT:-14222}
REDIS_PORT=${REDIS_PORT:-16379}
SINK_PORT=${SINK_PORT:-17880}
# 1 MiB: 8 clients x window 4 = 32 MiB in flight, 4 MiB queued per receiver
# at most (the hub drops a receiver past 8 MiB, --outbound-bytes-max). Every
# server is at 95% of its core or more with this; deeper pipelines are
# slower for all of them (the working set leaves the caches).
MIB_CLIENTS=${MIB_CLIENTS:-8}
MIB_WINDOW=${MIB_WINDOW:-4}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-4000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
LOADGEN=$TARGET_DIR/release/relayhub-loadgen
HUB=$TARGET_DIR/release/relayhub

if [[ -z ${NO_BUILD:-} ]]; then
    packages=(-p relayhub-loadgen)
    [[ -z ${SKIP_RELAYHUB:-} && -d server ]] && packages+=(-p relayhub-server)
    cargo build --release "${packages[@]}"
fi
for program in nats-server redis-server python3 taskset; do
    command -v "$program" >/dev/null || { echo "compare.sh: $program not found (apt-get install -y nats-server redis-server)" >&2; exit 1; }
done

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        echo "compare.sh: port $1 is already in use: stop that server or set ${2}_PORT" >&2
        exit 1
    fi
}
port_free "$HUB_PORT" HUB
port_free "$NATS_PORT" NATS
port_free "$REDIS_PORT" REDIS
[[ -z ${SKIP_SINK:-} ]] && port_free "$SINK_PORT" SINK

# wait_port PORT PID: until PORT accepts, failing if PID died.
wait_port() {
    for _ in $(seq 200); do
        kill -0 "$2" 2>/dev/null || { echo "compare.sh: the server for port $1 exited (see $OUT/*.log)" >&2; exit 1; }
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "compare.sh: nothing listens on port $1" >&2
    exit 1
}

mkdir -p "$OUT"
targets=()
server_pids=()
if [[ -z ${SKIP_RELAYHUB:-} && -x $HUB ]]; then
    taskset -c "$SERVER_CORE" "$HUB" --listen "127.0.0.1:$HUB_PORT" --shards 1 --pin false --storage memory >"$OUT/relayhub.log" 2>&1 &
    pids+=($!); server_pids+=(--server-pid $!); targets+=(--target "relayhub://127.0.0.1:$HUB_PORT")
    wait_port "$HUB_PORT" $!
elif [[ -z ${SKIP_RELAYHUB:-} ]]; then
    echo "compare.sh: $HUB not built: comparing NATS and Redis only" >&2
fi
taskset -c "$SERVER_CORE" nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
pids+=($!); server_pids+=(--server-pid $!); targets+=(--target "nats://127.0.0.1:$NATS_PORT")
wait_port "$NATS_PORT" $!
taskset -c "$SERVER_CORE" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --client-output-buffer-limit "pubsub 256mb 64mb 60" >"$OUT/redis.log" 2>&1 &
pids+=($!); server_pids+=(--server-pid $!); targets+=(--target "redis://127.0.0.1:$REDIS_PORT")
wait_port "$REDIS_PORT" $!
sink_pid=
if [[ -z ${SKIP_SINK:-} ]]; then
    taskset -c "$SERVER_CORE" "$LOADGEN" --sink-listen "127.0.0.1:$SINK_PORT" >"$OUT/sink.log" 2>&1 &
    pids+=($!); sink_pid=$!
    wait_port "$SINK_PORT" $!
fi

mkdir -p "$OUT"
summary=$OUT/summary.md
{
    echo "# Standard comparison ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), kernel $(uname -r)."
    echo "Load average at start: $(cut -d" " -f1-3 /proc/loadavg) (other work on the machine skews latency and throughput)."
    echo "Servers pinned to core $SERVER_CORE, loadgen to core $LOADGEN_CORE; $DURATION measured after $WARMUP warm-up."
    echo "Priority: $(cat /proc/self/autogroup 2>/dev/null) (PRIORITY=${PRIORITY:-})."
    echo "relayhub: $(git log -1 --format='%h %s' -- server 2>/dev/null || echo unknown); $(nats-server --version 2>/dev/null); $(redis-server --version 2>/dev/null | cut -d' ' -f1-3)."
    echo
    echo "Busiest other processes at start (%CPU since they started):"
    echo
    echo '```'
    ps -eo pcpu,comm --sort=-pcpu | head -6
    echo '```'
    echo
} >"$summary"

# ONLY="relay-64b-closed relay-1mib": run just these rows (and their sink
# runs, named headroom-*), e.g. to re-check rows after a change.
selected() {
    [[ -z ${ONLY:-} ]] && return 0
    local row
    for row in $ONLY; do [[ $row == "$1" ]] && return 0; done
    return 1
}

run() {
    local name=$1
    shift
    selected "$name" || return 0
    local load
    load=$(cut -d" " -f1-3 /proc/loadavg)
    echo "== $name: $*" >&2
    taskset -c "$LOADGEN_CORE" "$LOADGEN" --compare "${targets[@]}" "${server_pids[@]}" \
        --duration "$DURATION" --warmup "$WARMUP" -q \
        --json "$OUT/$name.json" --hgrm "$OUT/$name.hgrm" --svg "$OUT/$name.svg" --markdown "$OUT/$name.md" "$@" \
        || echo "compare.sh: $name failed" >&2
    { echo "## $name"; echo; echo "Load average before: $load."; echo; cat "$OUT/$name.md" 2>/dev/null; echo; echo "![$name]($name.svg)"; echo; } >>"$summary"
}

# run_sink NAME ARGS...: the same load against the sink only.
run_sink() {
    local name=$1
    shift
    [[ -n $sink_pid ]] || return 0
    selected "$name" || return 0
    local load
    load=$(cut -d" " -f1-3 /proc/loadavg)
    echo "== $name (sink): $*" >&2
    taskset -c "$LOADGEN_CORE" "$LOADGEN" --target "sink://127.0.0.1:$SINK_PORT" --server-pid "$sink_pid" \
        --duration "$DURATION" --warmup "$WARMUP" -q \
        --json "$OUT/$name.json" --hgrm "$OUT/$name.hgrm" --markdown "$OUT/$name.md" "$@" \
        || echo "compare.sh: $name failed" >&2
    { echo "## $name"; echo; echo "Load average before: $load."; echo; cat "$OUT/$name.md" 2>/dev/null; echo; } >>"$summary"
}

run relay-64b-closed --scenario relay --clients 64 --window 16 --body-bytes 64
# The same with 4x the pipeline: each server's plateau, not the window's.
run relay-64b-deep --scenario relay --clients 64 --window 64 --body-bytes 64
# Open loop at a fixed rate. The 64 senders' schedules are spread evenly,
# so each message travels alone (one send, one wake-up of the receiver):
# on this 2-core VM that costs the loadgen and each server ~5-20 us per
# message whatever the server, and from ~190,000/s up the loadgen itself
# falls behind its schedule (see the send lag column). 50,000/s keeps the
# loadgen on schedule; the servers still use most of a core for it.
run relay-64b-open --scenario relay --clients 64 --rate "${OPEN_RATE:-50000}" --body-bytes 64
run relay-1mib --scenario relay --clients "$MIB_CLIENTS" --window "$MIB_WINDOW" --body-bytes 1048576
run fanout16-1kib --scenario fanout --fanout 16 --clients 64 --window 4 --body-bytes 1024
run fanout255-1kib --scenario fanout --fanout 255 --clients 256 --window 1 --body-bytes 1024
run echo-64b --scenario echo --clients 64 --window 16 --body-bytes 64
run idle --scenario idle --clients "$IDLE_CONNECTIONS"
run storm --scenario storm --clients "$IDLE_CONNECTIONS"
# Headroom: the loadgen against its sink, same loads as relay-64b-closed
# and relay-1mib.
run_sink headroom-64b --scenario relay --clients 64 --window 16 --body-bytes 64
run_sink headroom-64b-deep --scenario relay --clients 64 --window 64 --body-bytes 64
run_sink headroom-1mib --scenario relay --clients "$MIB_CLIENTS" --window "$MIB_WINDOW" --body-bytes 1048576
if [[ -n $sink_pid ]]; then
    python3 - "$OUT" >"$OUT/headroom.md" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path))["results"] if os.path.exists(path) else []
print("| load | target | deliveries/s | loadgen cpu | server cpu | loadgen ns/delivery | server ns/delivery | sink rate / target rate |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for server_run, sink_run, label in [("relay-64b-closed", "headroom-64b", "1:1 64 B, window 16"), ("relay-64b-deep", "headroom-64b-deep", "1:1 64 B, window 64"), ("relay-1mib", "headroom-1mib", "1:1 1 MiB")]:
    sink = load(sink_run)
    rows = load(server_run) + sink
    sink_rate = sink[0]["deliveries_per_s"] if sink else float("nan")
    for r in rows:
        f = lambda v, fmt: "-" if v is None else fmt.format(v)
        print(f"| {label} | {r['target']} | {r['deliveries_per_s']:,.0f} | {r['loadgen_cpu_percent']:.0f}% | {f(r['server_cpu_percent'], '{:.0f}%')} | "
              f"{f(r.get('loadgen_cpu_ns_per_delivery'), '{:.0f}')} | {f(r.get('server_cpu_ns_per_delivery'), '{:.0f}')} | {sink_rate / r['deliveries_per_s']:.2f}x |")
PY
    { echo "## headroom: the loadgen alone (sink) vs each server"; echo; cat "$OUT/headroom.md"; echo; } >>"$summary"
fi
echo "compare.sh: results in $summary" >&2
