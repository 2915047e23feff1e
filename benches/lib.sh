# shellcheck shell=bash
# Shared by the benchmark scripts (compare.sh, durable.sh, headroom.sh,
# sweep.sh): source it from the repository root, after setting NAME (the
# script's name, for messages). The script keeps the PIDs of what it
# starts in `pids` and its scratch directories in `scratch_dirs`; both go
# on exit.

pids=()
scratch_dirs=()

# bench_priority "$@": with PRIORITY set, run the script again in a session
# of its own with its autogroup at nice -20 (root). With autogroup
# scheduling (Linux' default), nice only ranks processes of one session; a
# session of our own at nice -20 takes the cores from builds and fuzzers
# running in other sessions.
bench_priority() {
    if [[ -n ${PRIORITY:-} && -z ${RELAYHUB_BENCH_SESSION:-} ]]; then
        export RELAYHUB_BENCH_SESSION=1
        exec setsid -w "$0" "$@"
    fi
    if [[ -n ${PRIORITY:-} ]]; then
        echo -20 >/proc/self/autogroup 2>/dev/null || echo "$NAME: cannot raise the autogroup priority (needs root)" >&2
    fi
}

# Kills and reaps everything in `pids`, removes `scratch_dirs`.
bench_cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if ((${#scratch_dirs[@]} > 0)); then rm -rf "${scratch_dirs[@]}"; fi
}
trap bench_cleanup EXIT INT TERM

# port_free PORT WHAT: fails when something listens on PORT already
# (WHAT: the variable prefix that moves it, e.g. HUB for HUB_PORT).
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        echo "$NAME: port $1 is already in use: stop that server or set ${2}_PORT" >&2
        exit 1
    fi
}

# wait_port PORT PID: until PORT accepts, failing if PID died.
wait_port() {
    for _ in $(seq 200); do
        kill -0 "$2" 2>/dev/null || { echo "$NAME: the server for port $1 exited (see its log under ${OUT:-the output directory})" >&2; exit 1; }
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$NAME: nothing listens on port $1" >&2
    exit 1
}
