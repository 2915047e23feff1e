#!/usr/bin/env bash
# The durable comparison: relayhub protocol v2 (durable sessions, Stored,
# acks; in the hub's memory) against its own at-most-once rate and against
# JetStream (memory stream by default), then the same with 20% of the
# receivers dropping their connection every ~2 s. docs/loadgen.md
# ("Durable mode") says exactly what each side does, acks and keeps.
#
# Servers pinned to SERVER_CORE (default 0), the loadgen to LOADGEN_CORE
# (default 1), one at a time, as benches/compare.sh does. nats-server runs
# with -js and its store directory in a fresh temporary directory (removed
# on exit). Writes tables, .hgrm, JSON and SVG under OUT.
#
#   benches/durable.sh                      # 10 s per run
#   DURATION=3s benches/durable.sh          # quicker
#   FILE=1 benches/durable.sh               # also JetStream with a file stream
#   FANOUT=1 benches/durable.sh             # also 1 KiB fan-out to 16
#   REDIS=1 benches/durable.sh              # also Redis Streams (memory only) in the
#                                           # durable runs
#   DISK=1 benches/durable.sh               # also a hub on disk (ROUNDS rounds, --storage disk,
#                                           # --fsync $FSYNC, default always) vs
#                                           # JetStream's file stream; with REDIS=1
#                                           # also redis-server with appendonly yes,
#                                           # appendfsync always (Streams)
#   POLICIES=1 benches/durable.sh           # disk hubs with --fsync always,
#                                           # interval:$INTERVAL_MS (default 10) and
#                                           # never against the in-memory durable hub,
#                                           # ROUNDS rounds (default 3) interleaved
#   DEDUP=1 benches/durable.sh              # the cost of retry dedup, content dedup
#                                           # and receipts on the durable 64 B rate:
#                                           # hubs with --dedup-window-ms 0, the default,
#                                           # --content-dedup-window-ms 5000, and the
#                                           # default with --receipts, ROUNDS rounds
#   ONLY=dedup benches/durable.sh           # only the named sections: base (the three
#                                           # standard rows), file, fanout, disk,
#                                           # policies, dedup
#   RECONNECT_SHARE=0.2 RECONNECT_EVERY=2s  # the reconnect runs (default)
#   PRIORITY=1 benches/durable.sh           # own session, autogroup nice -20 (root)
#
# Needs nats-server (apt-get install -y nats-server) and taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=durable.sh
source benches/lib.sh
bench_priority "$@"

OUT=${OUT:-docs/reports/durable}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
DRAIN=${DRAIN:-5s}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
HUB_PORT=${HUB_PORT:-18878}
DISK_HUB_PORT=${DISK_HUB_PORT:-18879}
NATS_PORT=${NATS_PORT:-15222}
REDIS_PORT=${REDIS_PORT:-16380}
FSYNC=${FSYNC:-always}
CLIENTS=${CLIENTS:-64}
WINDOW=${WINDOW:-16}
RECONNECT_SHARE=${RECONNECT_SHARE:-0.2}
RECONNECT_EVERY=${RECONNECT_EVERY:-2s}
ROUNDS=${ROUNDS:-3}
INTERVAL_MS=${INTERVAL_MS:-10}
# Ports of the extra hubs (POLICIES, DEDUP): BASE_PORT, BASE_PORT+1, ...
EXTRA_HUB_PORT=${EXTRA_HUB_PORT:-18890}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
LOADGEN=$TARGET_DIR/release/relayhub-loadgen
HUB=$TARGET_DIR/release/relayhub

if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release -p relayhub-loadgen -p relayhub-server
fi
programs=(nats-server taskset)
[[ -n ${REDIS:-} ]] && programs+=(redis-server)
for program in "${programs[@]}"; do
    command -v "$program" >/dev/null || { echo "durable.sh: $program not found (apt-get install -y nats-server)" >&2; exit 1; }
done

store=$(mktemp -d -t relayhub-durable-js.XXXXXX)
data=$(mktemp -d -t relayhub-durable-hub.XXXXXX)
scratch_dirs+=("$store" "$data")

port_free "$NATS_PORT" NATS
[[ -n ${REDIS:-} ]] && port_free "$REDIS_PORT" REDIS


# ONLY="dedup policies": run just these sections.
section() {
    if [[ -n ${ONLY:-} ]]; then
        local name
        for name in $ONLY; do [[ $name == "$1" ]] && return 0; done
        return 1
    fi
    case $1 in
        base) return 0 ;;
        file) [[ -n ${FILE:-} ]] ;;
        fanout) [[ -n ${FANOUT:-} ]] ;;
        disk) [[ -n ${DISK:-} ]] ;;
        policies) [[ -n ${POLICIES:-} ]] ;;
        dedup) [[ -n ${DEDUP:-} ]] ;;
        *) return 1 ;;
    esac
}

mkdir -p "$OUT"
# start_hub NAME PORT HUB-FLAGS...: a hub on SERVER_CORE, one shard, its log
# in OUT/NAME.log; sets started_pid.
start_hub() {
    local name=$1 port=$2
    shift 2
    port_free "$port" "$(echo "$name" | tr 'a-z-' 'A-Z_')"
    taskset -c "$SERVER_CORE" "$HUB" --listen "127.0.0.1:$port" --shards 1 --pin false "$@" >"$OUT/$name.log" 2>&1 &
    started_pid=$!; pids+=($started_pid)
    wait_port "$port" "$started_pid"
}
# Memory storage: the comparison is memory vs memory (the hub's default is
# --storage disk; DISK=1 below runs that).
start_hub relayhub "$HUB_PORT" --storage memory
hub_pid=$started_pid
taskset -c "$SERVER_CORE" nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$store" >"$OUT/nats.log" 2>&1 &
nats_pid=$!; pids+=($nats_pid)
wait_port "$NATS_PORT" $nats_pid
hub=(--target "relayhub://127.0.0.1:$HUB_PORT" --server-pid "$hub_pid")
both=(--target "relayhub://127.0.0.1:$HUB_PORT" --target "nats://127.0.0.1:$NATS_PORT" --server-pid "$hub_pid" --server-pid "$nats_pid")
if [[ -n ${REDIS:-} ]]; then
    taskset -c "$SERVER_CORE" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
    redis_pid=$!; pids+=($redis_pid)
    wait_port "$REDIS_PORT" $redis_pid
    both+=(--target "redis://127.0.0.1:$REDIS_PORT" --server-pid "$redis_pid")
fi

summary=$OUT/summary.md
{
    echo "# Durable comparison ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), kernel $(uname -r)."
    echo "Load average at start: $(cut -d" " -f1-3 /proc/loadavg)."
    echo "Servers pinned to core $SERVER_CORE, loadgen to core $LOADGEN_CORE; $DURATION measured after $WARMUP warm-up, drain $DRAIN."
    echo "relayhub: $(git log -1 --format='%h %s' -- server 2>/dev/null || echo unknown); $(nats-server --version 2>/dev/null) with -js, store in a temporary directory."
    echo "relayhub durable = protocol v2 in the hub's memory (--storage memory); JetStream memory stream unless named -file (docs/loadgen.md, Durable mode)."
    section disk && echo "DISK: the disk hub runs --storage disk --fsync $FSYNC."
    echo
    echo '```'
    ps -eo pcpu,comm --sort=-pcpu | head -6
    echo '```'
    echo
} >"$summary"

run() {
    local name=$1
    shift
    local load
    load=$(cut -d" " -f1-3 /proc/loadavg)
    echo "== $name: $*" >&2
    taskset -c "$LOADGEN_CORE" "$LOADGEN" --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" -q \
        --json "$OUT/$name.json" --hgrm "$OUT/$name.hgrm" --svg "$OUT/$name.svg" --markdown "$OUT/$name.md" "$@" \
        || echo "durable.sh: $name failed" >&2
    { echo "## $name"; echo; echo "Load average before: $load."; echo; cat "$OUT/$name.md" 2>/dev/null; echo; echo "![$name]($name.svg)"; echo; } >>"$summary"
}

# medians TITLE BASELINE-LABEL FILE-GLOB...: the median (and range) over
# rounds of each target's deliveries/s and server CPU per delivery, and the
# ratio of the medians to the baseline's, appended to the summary.
medians() {
    local title=$1 baseline=$2
    shift 2
    { echo "## $title: medians of $ROUNDS rounds"; echo; python3 benches/medians.py "$baseline" "$@"; echo; } >>"$summary"
}

load=(--scenario relay --clients "$CLIENTS" --window "$WINDOW" --body-bytes 64)
if section base; then
    # The hub's own at-most-once rate on the same load (protocol v1).
    run at-most-once-64b "${hub[@]}" "${load[@]}"
    # Durable: relayhub v2 vs JetStream (memory stream).
    run durable-64b --compare "${both[@]}" "${load[@]}" --durable
    # The same with receivers dropping their connection and resuming.
    run durable-64b-reconnect --compare "${both[@]}" "${load[@]}" --durable \
        --reconnect-share "$RECONNECT_SHARE" --reconnect-every "$RECONNECT_EVERY"
fi
if section file; then
    run durable-64b-jetstream-file --target "nats://127.0.0.1:$NATS_PORT" --server-pid "$nats_pid" \
        "${load[@]}" --durable --jetstream-storage file
fi
if section fanout; then
    run durable-fanout16-1kib --compare "${both[@]}" --scenario fanout --fanout 16 --clients "$CLIENTS" \
        --window 4 --body-bytes 1024 --durable
fi
if section disk; then
    # A second hub, idle until now like the others, on the same core.
    start_hub relayhub-disk "$DISK_HUB_PORT" --storage disk --data-dir "$data/disk" --fsync "$FSYNC"
    disk_pid=$started_pid
    disk=(--target "relayhub://127.0.0.1:$DISK_HUB_PORT" --target "nats://127.0.0.1:$NATS_PORT"
        --server-pid "$disk_pid" --server-pid "$nats_pid")
    if [[ -n ${REDIS:-} ]]; then
        # Redis as users keep offline messages durable: an append-only file
        # synced before every reply (appendfsync always).
        aof_port=$((REDIS_PORT + 1))
        port_free "$aof_port" REDIS
        mkdir -p "$data/redis"
        taskset -c "$SERVER_CORE" redis-server --bind 127.0.0.1 --port "$aof_port" --save '' \
            --appendonly yes --appendfsync always --dir "$data/redis" >"$OUT/redis-aof.log" 2>&1 &
        aof_pid=$!; pids+=($aof_pid)
        wait_port "$aof_port" $aof_pid
        disk+=(--target "redis://127.0.0.1:$aof_port" --server-pid "$aof_pid")
    fi
    # ROUNDS rounds, the sizes interleaved; medians against the strongest
    # peer (redis AOF with REDIS=1, else JetStream's file stream).
    baseline=nats-$NATS_PORT-jetstream-file
    if [[ -n ${REDIS:-} ]]; then baseline=redis-$aof_port-streams; fi
    for round in $(seq "$ROUNDS"); do
        for size in 64 1024; do
            run "durable-${size}b-disk-r$round" --compare "${disk[@]}" --scenario relay --clients "$CLIENTS" \
                --window "$WINDOW" --body-bytes "$size" --durable --jetstream-storage file
        done
    done
    for size in 64 1024; do
        medians "durable ${size} B on disk (hub --fsync $FSYNC, ratios to $baseline)" \
            "durable-${size}b-disk/$baseline" "$OUT"/durable-"${size}"b-disk-r*.json
    done
fi
if section policies; then
    # Every fsync policy against the in-memory durable hub, interleaved.
    port=$EXTRA_HUB_PORT
    policies=(--target "relayhub://127.0.0.1:$HUB_PORT" --server-pid "$hub_pid")
    for policy in always "interval:$INTERVAL_MS" never; do
        start_hub "relayhub-fsync-${policy%%:*}" "$port" --storage disk --data-dir "$data/fsync-${policy%%:*}" --fsync "$policy"
        policies+=(--target "relayhub://127.0.0.1:$port" --server-pid "$started_pid")
        port=$((port + 1))
    done
    for round in $(seq "$ROUNDS"); do
        run "fsync-policies-r$round" --compare "${policies[@]}" "${load[@]}" --durable
    done
    medians "fsync policies vs the in-memory durable hub (ports: memory $HUB_PORT, always $EXTRA_HUB_PORT, interval:$INTERVAL_MS $((EXTRA_HUB_PORT + 1)), never $((EXTRA_HUB_PORT + 2)))" \
        "fsync-policies/relayhub-$HUB_PORT-durable" "$OUT"/fsync-policies-r*.json
fi
if section dedup; then
    # Retry dedup off, on (the default), content dedup on top; receipts on
    # the default hub. All in memory, so only the dedup work differs.
    port=$((EXTRA_HUB_PORT + 3))
    start_hub relayhub-dedup-off "$port" --storage memory --dedup-window-ms 0
    dedup=(--target "relayhub://127.0.0.1:$port" --server-pid "$started_pid")
    off="dedup/relayhub-$port-durable"
    dedup+=("${hub[@]}")
    start_hub relayhub-content-dedup "$((port + 1))" --storage memory --content-dedup-window-ms 5000
    dedup+=(--target "relayhub://127.0.0.1:$((port + 1))" --server-pid "$started_pid")
    for round in $(seq "$ROUNDS"); do
        run "dedup-r$round" --compare "${dedup[@]}" "${load[@]}" --durable
        run "receipts-r$round" "${hub[@]}" "${load[@]}" --durable --receipts
    done
    medians "dedup and receipts (ports: retry dedup off $port, default $HUB_PORT, content dedup 5000 ms $((port + 1)); receipts-r* = the default hub with --receipts)" \
        "$off" "$OUT"/dedup-r*.json "$OUT"/receipts-r*.json
fi
echo "durable.sh: results in $summary" >&2
