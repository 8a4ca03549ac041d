#!/usr/bin/env bash
# CPU cost per operation of every process of a 3-server cluster with 3 copies under set-only load
# (the write part of perf/cluster-bench.sh, with the cost split by process instead of ops/s alone):
# manager, 3 servers (one shard each) and a gateway pinned to CPU 0, kumo-bench (text, 50
# connections, pipeline 16, 32-byte values, 100k keys) on CPU 1. Each server coordinates a third
# of the sets and applies the other two thirds as a replica, so its figure covers both sides.
# Per run it prints ops/s and the CPU microseconds (user + system, /proc/PID/stat) each process
# spent per set. Microseconds per op stay comparable on a machine that is busy with other work,
# ops/s much less so.
#
# usage: perf/cluster-cost.sh [--bin DIR] [--runs N] [--time SECS] [--perf FILE]
#   --bin DIR    where the binaries are (default target/release; kumo-bench, kumoctl and
#                kumostat too)
#   --perf FILE  perf record (dwarf call graphs) server 1 during the last run into FILE
# env: SERVER_CPU (0), LOADGEN_CPU (1), PERF_FREQ (sampling Hz for --perf, default 999)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=target/release
RUNS=2
TIME=8
PERF_OUT=
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --time) TIME=$2; shift 2 ;;
        --perf) PERF_OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
for b in kumo-manager kumo-server kumo-gateway kumoctl kumostat kumo-bench; do
    [ -x "$BIN/$b" ] || { echo "$BIN/$b is not built" >&2; exit 1; }
done

. "$ROOT/perf/ports.sh"
start_work kumo-cluster-cost

HZ=$(getconf CLK_TCK)
bench() { # SECS: prints the RESULT line
    taskset -c "$LOADGEN_CPU" "$BIN/kumo-bench" -s 127.0.0.1 -p "$GW" --protocol text --clients 50 \
        --pipeline 16 --ratio 1:0 --key-maximum 100000 --data-size 32 --test-time "$1" \
        --cpu "$LOADGEN_CPU" 2>&1 | grep '^RESULT'
}

free_port; MGR="127.0.0.1:$PORT"
mkdir -p "$WORK/manager"
taskset -c "$SERVER_CPU" "$BIN/kumo-manager" -v -l "$MGR" -s "$WORK/manager" >"$WORK/manager.log" 2>&1 &
MGR_PID=$!; PIDS+=($MGR_PID)
up_or_die manager "${MGR##*:}" $MGR_PID "$WORK/manager.log"
SERVER_PIDS=()
for n in 1 2 3; do
    free_port; port=$PORT; free_port; stream=$PORT
    taskset -c "$SERVER_CPU" "$BIN/kumo-server" -v -l "127.0.0.1:$port" -L "$stream" -m "$MGR" \
        -s "$WORK/server$n" --cpus "$SERVER_CPU" >"$WORK/server$n.log" 2>&1 &
    PIDS+=($!); SERVER_PIDS+=($!)
    up_or_die "server $n" "$port" $! "$WORK/server$n.log"
done
for ((i = 0; i < 100; i++)); do
    [ "$("$BIN/kumoctl" "$MGR" status 2>/dev/null | grep -c '  127.0.0.1:')" -ge 3 ] && break
    sleep 0.1
done
"$BIN/kumoctl" "$MGR" attach >/dev/null
settled() {
    local stats
    stats=$("$BIN/kumostat" -m "$MGR" stats 2>/dev/null || true)
    [ "$(grep -c ': STAT replstat ready$' <<<"$stats")" -ge 3 ] || return 1
    [ "$(grep -c ': STAT rebalance none$' <<<"$stats")" -ge 3 ] || return 1
    ! grep -q ': STAT hscheck false$' <<<"$stats"
}
for ((i = 0; i < 600; i++)); do settled && break; sleep 0.05; done
settled || { echo "the cluster did not settle" >&2; exit 1; }
free_port; GW=$PORT
taskset -c "$SERVER_CPU" "$BIN/kumo-gateway" -m "$MGR" -t "127.0.0.1:$GW" --cpus "$SERVER_CPU" \
    >"$WORK/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=($GW_PID)
up_or_die gateway "$GW" $GW_PID "$WORK/gateway.log"
bench 2 >/dev/null # every key written once, connections warm

ALL=("${SERVER_PIDS[@]}" "$GW_PID" "$MGR_PID")
NAMES=(server1 server2 server3 gateway manager)
for ((r = 1; r <= RUNS; r++)); do
    before=()
    for pid in "${ALL[@]}"; do before+=("$(ticks "$pid")"); done
    PERF_PID=
    if [ -n "$PERF_OUT" ] && [ "$r" = "$RUNS" ]; then
        perf record -g --call-graph dwarf,16384 -F "${PERF_FREQ:-999}" -o "$PERF_OUT" \
            -p "${SERVER_PIDS[0]}" -- sleep $((TIME - 1)) >/dev/null 2>&1 &
        PERF_PID=$!
    fi
    line=$(bench "$TIME")
    after=()
    for pid in "${ALL[@]}"; do after+=("$(ticks "$pid")"); done
    [ -n "$PERF_PID" ] && { wait "$PERF_PID" || true; }
    ops=$(sed -E 's/.*[ ]ops=([0-9]+).*/\1/' <<<"$line")
    rate=$(sed -E 's/.*[ ]ops_per_sec=([0-9.]+).*/\1/' <<<"$line")
    out="run $r: $rate ops/s, CPU us per set:"
    sum=0
    for i in "${!ALL[@]}"; do
        d=$((after[i] - before[i]))
        sum=$((sum + d))
        out+=" ${NAMES[$i]} $(awk -v d="$d" -v hz="$HZ" -v n="$ops" 'BEGIN { printf "%.3f", d * 1e6 / hz / n }')"
    done
    out+=" total $(awk -v d="$sum" -v hz="$HZ" -v n="$ops" 'BEGIN { printf "%.3f", d * 1e6 / hz / n }')"
    echo "$out"
done
