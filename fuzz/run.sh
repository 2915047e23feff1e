#!/usr/bin/env bash
# Runs every relayhub fuzz target for a while; fails on any crash.
#
#   bash fuzz/run.sh [SECONDS]        # per target, default 30 (CI: 30)
#
# Needs rustup with a nightly toolchain (RELAYHUB_FUZZ_TOOLCHAIN overrides
# "nightly"); installs cargo-fuzz when missing. Generates the seeds (the
# committed small ones are in fuzz/corpus/, the 1 MiB ones are written to
# fuzz/target/seeds/), then runs the targets one after the other, one
# libFuzzer process each (-jobs=1 -workers=1: CI machines are small).
# New corpus entries go to fuzz/target/corpus/<target>/, logs to
# fuzz/target/logs/<target>/, crashes to fuzz/artifacts/<target>/.
# See docs/fuzzing.md.
set -euo pipefail

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: bash fuzz/run.sh [SECONDS]" >&2
    exit 2
fi
fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
toolchain="${RELAYHUB_FUZZ_TOOLCHAIN:-nightly}"

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    echo "== installing the $toolchain toolchain"
    rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (a few minutes)"
    cargo install cargo-fuzz --locked
fi

# Largest input per target: decode_stream must hold a 1 MiB frame and some
# more; the others parse structured input, for which 64 KiB is plenty.
max_len_of() {
    case "$1" in
        decode_stream) echo 1100000 ;;
        *) echo 65536 ;;
    esac
}

echo "== building the fuzz targets"
cargo "+$toolchain" fuzz build --fuzz-dir "$fuzz_dir"
host="$(rustc "+$toolchain" -vV | sed -n 's/^host: //p')"
echo "== writing the seeds (1 MiB bodies included) to fuzz/target/seeds"
"$fuzz_dir/target/$host/release/seed" --large "$fuzz_dir/target/seeds"

failed=()
for target in $(cargo "+$toolchain" fuzz list --fuzz-dir "$fuzz_dir"); do
    work="$fuzz_dir/target/corpus/$target"
    logs="$fuzz_dir/target/logs/$target"
    mkdir -p "$work" "$logs" "$fuzz_dir/corpus/$target" "$fuzz_dir/target/seeds/$target"
    rm -f "$logs"/fuzz-*.log
    echo "== fuzzing $target for ${seconds}s"
    status=0
    # libFuzzer writes fuzz-0.log into the current directory under -jobs.
    (
        cd "$logs"
        timeout --signal=INT --kill-after=60 "$((seconds + 600))" \
            cargo "+$toolchain" fuzz run --fuzz-dir "$fuzz_dir" "$target" \
            "$work" "$fuzz_dir/corpus/$target" "$fuzz_dir/target/seeds/$target" -- \
            -jobs=1 -workers=1 -max_total_time="$seconds" -timeout=60 \
            -max_len="$(max_len_of "$target")" -dict="$fuzz_dir/relayhub.dict" \
            -print_final_stats=1
    ) >"$logs/run.log" 2>&1 || status=$?
    log="$logs/fuzz-0.log"
    [ -f "$log" ] || log="$logs/run.log"
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs|^stat::number_of_executed_units|^stat::peak_rss_mb' "$log" || true
    if [ "$status" -ne 0 ] || grep -qE '^SUMMARY: |panicked at|==ERROR: ' "$log"; then
        echo "!! $target FAILED (exit $status); last lines of $log:"
        tail -n 60 "$log"
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "!! crashes in: ${failed[*]}; inputs in fuzz/artifacts/<target>/."
    echo "!! reproduce: cargo +$toolchain fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<file>"
    exit 1
fi
echo "== all fuzz targets ran ${seconds}s without a crash"
