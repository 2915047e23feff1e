#!/usr/bin/env bash
# The standard comparison: relayhub vs nats-server vs redis-server.
#
# Every server runs pinned to one core (SERVER_CORE, default 0), the loadgen
# to another (LOADGEN_CORE, default 1), one at a time against the same
# workload. Writes tables, .hgrm, JSON and SVG under OUT (docs/reports).
# The loadgen's own sink (relayhub-loadgen --sink-listen, pinned like a
# server) gets every traffic row's load too, right after the row (named
# headroom-64b, headroom-64b-deep and headroom-1mib for the first rows that
# had one, headroom-<row> for the others; idle and storm have none): how
# fast the loadgen alone can drive traffic, i.e. its headroom over the
# servers (headroom.md).
#
#   benches/compare.sh                  # everything, 10 s per run
#   DURATION=3s benches/compare.sh      # quicker
#   SKIP_RELAYHUB=1 benches/compare.sh  # NATS vs Redis only
#   SKIP_SINK=1 benches/compare.sh      # no headroom runs
#   MIB_CLIENTS=8 MIB_WINDOW=4          # the 1 MiB run's pipeline (default)
#   ONLY="relay-64b-closed relay-1mib headroom-64b" benches/compare.sh  # some rows
#                                       # (a row brings its sink run; a headroom-*
#                                       # name alone runs just the sink run)
#   ROUNDS=3 benches/compare.sh         # the selected rows 3 times, interleaved
#                                       # (round 1 of every row, then round 2, ...):
#                                       # files NAME-rN.*, medians in rounds.md
#   HUB2_PORT=17879                     # shards2-open20k's second hub (--shards 2)
#   PRIORITY=1 benches/compare.sh       # on a shared machine: run in a session
#                                       # of its own at autogroup nice -20 (root)
#
# Needs: nats-server and redis-server on PATH (apt-get install -y
# nats-server redis-server), python3 (benches/medians.py writes headroom.md
# and rounds.md from the runs' JSON).
# Everything it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=compare.sh
source benches/lib.sh
bench_priority "$@"

OUT=${OUT:-docs/reports}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
HUB_PORT=${HUB_PORT:-17878}
NATS_PORT=${NATS_PORT:-14222}
REDIS_PORT=${REDIS_PORT:-16379}
SINK_PORT=${SINK_PORT:-17880}
# shards2-open20k: a second hub, two shards, both on the server core.
HUB2_PORT=${HUB2_PORT:-17879}
ROUNDS=${ROUNDS:-1}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: ROUNDS must be a positive number, not $ROUNDS" >&2; exit 1; }
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


# ONLY="relay-64b-closed relay-1mib": run just these rows (and their sink
# runs, named headroom-*), e.g. to re-check rows after a change.
selected() {
    [[ -z ${ONLY:-} ]] && return 0
    local row
    for row in $ONLY; do [[ $row == "$1" ]] && return 0; done
    return 1
}

# The second hub runs only for its row.
hub2=
[[ -z ${SKIP_RELAYHUB:-} && -x $HUB ]] && selected shards2-open20k && hub2=1

port_free "$HUB_PORT" HUB
port_free "$NATS_PORT" NATS
port_free "$REDIS_PORT" REDIS
[[ -n $hub2 ]] && port_free "$HUB2_PORT" HUB2
[[ -z ${SKIP_SINK:-} ]] && port_free "$SINK_PORT" SINK


mkdir -p "$OUT"
targets=()
server_pids=()
# shards2-open20k: the 1-shard hub and the 2-shard one, nothing else.
hub_targets=()
hub_pids=()
if [[ -z ${SKIP_RELAYHUB:-} && -x $HUB ]]; then
    taskset -c "$SERVER_CORE" "$HUB" --listen "127.0.0.1:$HUB_PORT" --shards 1 --pin false --storage memory >"$OUT/relayhub.log" 2>&1 &
    pids+=($!); server_pids+=(--server-pid $!); targets+=(--target "relayhub://127.0.0.1:$HUB_PORT")
    hub_pids+=(--server-pid $!); hub_targets+=(--target "relayhub://127.0.0.1:$HUB_PORT")
    wait_port "$HUB_PORT" $!
    if [[ -n $hub2 ]]; then
        # Both shards on the server core: pinned to both cores they would
        # take the loadgen's.
        taskset -c "$SERVER_CORE" "$HUB" --listen "127.0.0.1:$HUB2_PORT" --shards 2 --pin false --storage memory >"$OUT/relayhub-shards2.log" 2>&1 &
        pids+=($!); hub_pids+=(--server-pid $!); hub_targets+=(--target "relayhub://127.0.0.1:$HUB2_PORT")
        wait_port "$HUB2_PORT" $!
    fi
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
    echo "Servers pinned to core $SERVER_CORE, loadgen to core $LOADGEN_CORE; $DURATION measured after $WARMUP warm-up; $ROUNDS round(s), rows interleaved."
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

# loadgen_run FILE SVG ARGS...: one loadgen run (ARGS: targets, server
# pids, load), its files named FILE.*, its table appended to the summary
# (with its latency plot when SVG is 1).
loadgen_run() {
    local file=$1 svg=$2
    shift 2
    local load plot=()
    load=$(cut -d" " -f1-3 /proc/loadavg)
    if [[ $svg == 1 ]]; then plot=(--svg "$OUT/$file.svg"); fi
    echo "== $file: $*" >&2
    taskset -c "$LOADGEN_CORE" "$LOADGEN" "$@" \
        --duration "$DURATION" --warmup "$WARMUP" -q \
        --json "$OUT/$file.json" --hgrm "$OUT/$file.hgrm" "${plot[@]}" --markdown "$OUT/$file.md" \
        || echo "compare.sh: $file failed" >&2
    {
        echo "## $file"; echo; echo "Load average before: $load."; echo; cat "$OUT/$file.md" 2>/dev/null; echo
        if [[ $svg == 1 ]]; then echo "![$file]($file.svg)"; echo; fi
    } >>"$summary"
}

# The rows run, as ROW:SINK (either empty when not run), for medians.py.
entries=()
round=1

# row_on TARGETS PIDS NAME SINK ARGS...: the load ARGS against the servers
# in the arrays named TARGETS and PIDS (one --compare run), then against the
# sink as SINK ("-": none, for the connection scenarios).
row_on() {
    local -n row_targets=$1 row_pids=$2
    local name=$3 sink=$4
    shift 4
    local suffix='' ran_row='' ran_sink=''
    if ((ROUNDS > 1)); then suffix=-r$round; fi
    if selected "$name" && ((${#row_targets[@]} > 0)); then
        ran_row=$name
        loadgen_run "$name$suffix" 1 --compare "${row_targets[@]}" "${row_pids[@]}" "$@"
    fi
    if [[ $sink != - && -n $sink_pid ]] && { selected "$name" || selected "$sink"; }; then
        ran_sink=$sink
        loadgen_run "$sink$suffix" 0 --target "sink://127.0.0.1:$SINK_PORT" --server-pid "$sink_pid" "$@"
    fi
    if ((round == 1)) && [[ -n $ran_row$ran_sink ]]; then
        entries+=("$ran_row:$ran_sink")
    fi
}

# row NAME SINK ARGS...: a row against every server.
row() {
    row_on targets server_pids "$@"
}

rows() {
    row relay-64b-closed headroom-64b --scenario relay --clients 64 --window 16 --body-bytes 64
    # The same with 4x the pipeline: each server's plateau, not the window's.
    row relay-64b-deep headroom-64b-deep --scenario relay --clients 64 --window 64 --body-bytes 64
    # Open loop at a fixed rate. The 64 senders' schedules are spread evenly,
    # so each message travels alone (one send, one wake-up of the receiver):
    # on this 2-core VM that costs the loadgen and each server ~5-20 us per
    # message whatever the server, and from ~190,000/s up the loadgen itself
    # falls behind its schedule (see the send lag column). 50,000/s keeps the
    # loadgen on schedule; the servers still use most of a core for it.
    row relay-64b-open headroom-relay-64b-open --scenario relay --clients 64 --rate "${OPEN_RATE:-50000}" --body-bytes 64
    # A rate every server holds with room to spare: the cost per lone message.
    row relay-64b-open20k headroom-relay-64b-open20k --scenario relay --clients 64 --rate 20000 --body-bytes 64
    row relay-1mib headroom-1mib --scenario relay --clients "$MIB_CLIENTS" --window "$MIB_WINDOW" --body-bytes 1048576
    # Each message to a receiver drawn for it, as users do: every receiver
    # gets from every sender, in no fixed turn.
    row relay-1mib-random headroom-relay-1mib-random --scenario relay --clients "$MIB_CLIENTS" --window "$MIB_WINDOW" --body-bytes 1048576 --pick random
    row fanout16-1kib headroom-fanout16-1kib --scenario fanout --fanout 16 --clients 64 --window 4 --body-bytes 1024
    row fanout16-1kib-32 headroom-fanout16-1kib-32 --scenario fanout --fanout 16 --clients 32 --window 4 --body-bytes 1024
    row fanout255-1kib headroom-fanout255-1kib --scenario fanout --fanout 255 --clients 256 --window 1 --body-bytes 1024
    row echo-64b headroom-echo-64b --scenario echo --clients 64 --window 16 --body-bytes 64
    # One hub's shards on one core: what a second shard costs or gains at
    # 20,000 lone messages/s, against the 1-shard hub in the same run.
    row_on hub_targets hub_pids shards2-open20k headroom-shards2-open20k --scenario relay --clients 64 --rate 20000 --body-bytes 64
    row idle - --scenario idle --clients "$IDLE_CONNECTIONS"
    row storm - --scenario storm --clients "$IDLE_CONNECTIONS"
}

for ((round = 1; round <= ROUNDS; round++)); do
    if ((ROUNDS > 1)); then echo "== round $round of $ROUNDS" >&2; fi
    rows
done

if ((ROUNDS > 1 && ${#entries[@]} > 0)); then
    python3 benches/medians.py --rounds "$OUT" "$ROUNDS" "${entries[@]}" >"$OUT/rounds.md"
    { echo "## medians of $ROUNDS rounds"; echo; cat "$OUT/rounds.md"; echo; } >>"$summary"
fi
if [[ -n $sink_pid && ${#entries[@]} -gt 0 ]]; then
    python3 benches/medians.py --headroom "$OUT" "$ROUNDS" "${entries[@]}" >"$OUT/headroom.md"
    { echo "## headroom: the loadgen alone (sink) vs each server"; echo; cat "$OUT/headroom.md"; echo; } >>"$summary"
fi
echo "compare.sh: results in $summary" >&2
