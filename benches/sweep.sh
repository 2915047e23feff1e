#!/usr/bin/env bash
# The capacity sweep of this machine (docs/capacity-planning.md reads it):
# relayhub in memory and on disk (--fsync always), nats-server (core, and
# JetStream with a file stream for durable cells) and redis-server
# (pub/sub, and Streams with appendfsync always for durable cells), every
# workload of the matrix, the open-loop rate stepped up under a p99
# objective. Servers pinned to SERVER_CORE, the loadgen to LOADGEN_CORE.
#
#   benches/sweep.sh                          # the standard matrix, ~18 min
#   BUDGET=3m SIZES=64 FANOUTS=1 benches/sweep.sh   # a quick one
#   PRIORITY=1 benches/sweep.sh               # own session, autogroup nice -20 (root)
#
# Writes OUT/sweep.json (read by `relayhub-loadgen plan --sweep`), the
# table OUT/sweep.md and OUT/sweep-<workload>.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=sweep.sh
source benches/lib.sh
bench_priority "$@"

OUT=${OUT:-docs/reports/capacity}
BUDGET=${BUDGET:-18m}
STEP=${STEP:-1500ms}
STEP_FACTOR=${STEP_FACTOR:-4}
P99_MS=${P99_MS:-10}
SIZES=${SIZES:-64,1024,1048576}
FANOUTS=${FANOUTS:-1,16}
MODES=${MODES:-at-most-once,durable}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
BASE_PORT=${BASE_PORT:-19700}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
LOADGEN=$TARGET_DIR/release/relayhub-loadgen
HUB=$TARGET_DIR/release/relayhub

if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release -p relayhub-loadgen -p relayhub-server
fi
for program in nats-server redis-server taskset; do
    command -v "$program" >/dev/null || { echo "sweep.sh: $program not found (apt-get install -y nats-server redis-server)" >&2; exit 1; }
done

scratch=$(mktemp -d -t relayhub-sweep.XXXXXX)
scratch_dirs+=("$scratch")

# serve NAME PORT COMMAND...: a server on SERVER_CORE; sets served_pid.
serve() {
    local name=$1 port=$2
    shift 2
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "sweep.sh: port $port is already in use: set BASE_PORT" >&2
        exit 1
    fi
    taskset -c "$SERVER_CORE" "$@" >"$OUT/$name.log" 2>&1 &
    served_pid=$!; pids+=($served_pid)
    wait_port "$port" "$served_pid"
}

mkdir -p "$OUT"
targets=()
# target URL LABEL STORAGE PID [METRICS]
target() {
    targets+=(--target "$1" --label "$2" --storage "$3" --server-pid "$4" --metrics "${5:--}")
}
port=$BASE_PORT
serve relayhub "$port" "$HUB" --listen "127.0.0.1:$port" --shards 1 --pin false --storage memory
target "relayhub://127.0.0.1:$port" relayhub memory "$served_pid"
port=$((port + 1))
serve relayhub-disk "$port" "$HUB" --listen "127.0.0.1:$port" --shards 1 --pin false \
    --storage disk --data-dir "$scratch/hub" --fsync always --metrics-listen "127.0.0.1:$((port + 100))"
target "relayhub://127.0.0.1:$port" relayhub-disk fsync-always "$served_pid" "127.0.0.1:$((port + 100))"
port=$((port + 1))
# nats-server: core NATS for at-most-once cells; durable cells use
# JetStream (the loadgen's --durable), its file stream under -sd.
serve nats "$port" nats-server -a 127.0.0.1 -p "$port" -js -sd "$scratch/nats"
target "nats://127.0.0.1:$port" nats jetstream-memory "$served_pid"
port=$((port + 1))
# redis-server: pub/sub for at-most-once cells; durable cells use Streams,
# made durable as users do: appendonly yes, appendfsync always.
serve redis "$port" redis-server --bind 127.0.0.1 --port "$port" --save '' \
    --appendonly yes --appendfsync always --dir "$scratch"
target "redis://127.0.0.1:$port" redis aof-always "$served_pid"

echo "sweep.sh: budget $BUDGET, p99 <= $P99_MS ms, sizes $SIZES, fan-outs $FANOUTS, modes $MODES" >&2
taskset -c "$LOADGEN_CORE" "$LOADGEN" sweep "${targets[@]}" --server-cores 1 --server-cores 1 \
    --server-cores 1 --server-cores 1 --sizes "$SIZES" --fanouts "$FANOUTS" --modes "$MODES" \
    --p99-ms "$P99_MS" --budget "$BUDGET" --step-factor "$STEP_FACTOR" --step-duration "$STEP" \
    --step-warmup 300ms --out "$OUT/sweep.json" --svg "$OUT/sweep.svg" \
    | tee "$OUT/sweep.md"
{
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), kernel $(uname -r)."
    echo "Servers pinned to core $SERVER_CORE, the loadgen to core $LOADGEN_CORE; relayhub $(git log -1 --format=%h -- server 2>/dev/null || echo unknown), $(nats-server --version 2>/dev/null), $(redis-server --version 2>/dev/null | cut -d' ' -f1-3)."
} >>"$OUT/sweep.md"
echo "sweep.sh: results in $OUT/sweep.json" >&2
