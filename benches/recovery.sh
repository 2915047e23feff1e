#!/usr/bin/env bash
# Recovery speed: a one-shard data directory with N stored 64-byte messages
# (written by the fill_log example as the hub logs them), then the time the
# hub takes to read it back (its "recovered the log" line: records and ms)
# and its RSS once serving. The hub is pinned to SERVER_CORE (default 0).
#
#   benches/recovery.sh                 # 1 M and 10 M messages
#   COUNTS="1000000" benches/recovery.sh
#   GENERATION=1 benches/recovery.sh    # the log as a compaction leaves it
#   HUB=/other/relayhub benches/recovery.sh  # another build of the hub
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${COUNTS:-"1000000 10000000"}
SESSIONS=${SESSIONS:-1000}
GENERATION=${GENERATION:-0}
SERVER_CORE=${SERVER_CORE:-0}
PORT=${PORT:-17990}
HUB=${HUB:-target/release/relayhub}
cargo build --release -q -p relayhub-server --example fill_log --bin relayhub
work=$(mktemp -d)
trap 'kill "${hub:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
printf '| messages | log bytes | recovery ms | records/s | RSS MiB |\n| ---: | ---: | ---: | ---: | ---: |\n'
for count in $COUNTS; do
    rm -rf "$work/data"
    target/release/examples/fill_log "$work/data" "$count" "$SESSIONS" "$GENERATION" >/dev/null
    bytes=$(stat -c %s "$work/data/shard-0/"log-*.rlog)
    sync
    taskset -c "$SERVER_CORE" "$HUB" --listen "127.0.0.1:$PORT" --shards 1 \
        --storage disk --data-dir "$work/data" --pin false 2>"$work/err" &
    hub=$!
    for _ in $(seq 1 3000); do grep -q "relayhub listening" "$work/err" && break; sleep 0.1; done
    line=$(grep "recovered the log" "$work/err")
    records=$(sed -E 's/.*records=([0-9]+).*/\1/' <<<"$line")
    ms=$(sed -E 's/.*elapsed_ms=([0-9]+).*/\1/' <<<"$line")
    rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$hub/status")
    kill -TERM "$hub"; wait "$hub" || true
    printf '| %s | %s | %s | %s | %s |\n' "$count" "$bytes" "$ms" \
        "$(( records * 1000 / (ms > 0 ? ms : 1) ))" "$rss"
done
