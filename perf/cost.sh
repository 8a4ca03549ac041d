#!/usr/bin/env bash
# CPU cost per operation of the server side, a figure that stays meaningful on a busy machine (unlike
# ops/s): starts one configuration pinned to CPU 0, drives it with kumo-bench on CPU 1, and prints
# the CPU time (user + system, from /proc/PID/stat) the server-side processes used, divided by the
# operations done, next to ops/s.
#
# usage: perf/cost.sh [--profile DIR] [--time SECS] [--pipeline N] [--protocol text|binary]
#                     [--target memcached|gateway|embedded]... [--keep-running]
#   --profile DIR  the cargo profile directory of the binaries (default release; `perf` for the
#                  quicker-to-build profile)
#   --target       may repeat; default: memcached gateway embedded
# env: SERVER_CPU (0), LOADGEN_CPU (1), SERVER_ARGS (more kumo-server arguments)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROFILE=release
TIME=5
PIPELINE=1
PROTO=text
TARGETS=()
KEEP=0
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE=$2; shift 2 ;;
        --time) TIME=$2; shift 2 ;;
        --pipeline) PIPELINE=$2; shift 2 ;;
        --protocol) PROTO=$2; shift 2 ;;
        --target) TARGETS+=("$2"); shift 2 ;;
        --keep-running) KEEP=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(memcached gateway embedded)
BIN=target/$PROFILE
. "$ROOT/perf/ports.sh"
start_work kumo-cost


# start_kumofs MODE: sets DATA_PORT (and the pids to account in COST_PIDS).
start_kumofs() {
    local mode=$1 mgr srv gw
    free_port; mgr=$PORT; free_port; srv=$PORT
    mkdir -p "$WORK/data-$mode"
    taskset -c "$SERVER_CPU" "$BIN/kumo-manager" -l "127.0.0.1:$mgr" -s "$WORK" >"$WORK/manager-$mode.log" 2>&1 &
    PIDS+=($!)
    wait_port "$mgr" $! 10 || { echo "manager did not start: $(head -c 300 "$WORK/manager-$mode.log")" >&2; return 1; }
    local extra=()
    if [ "$mode" = embedded ]; then
        free_port; gw=$PORT
        if [ "$PROTO" = binary ]; then extra=(-b "127.0.0.1:$gw"); else extra=(-t "127.0.0.1:$gw"); fi
    fi
    taskset -c "$SERVER_CPU" "$BIN/kumo-server" -l "127.0.0.1:$srv" -m "127.0.0.1:$mgr" \
        -s "$WORK/data-$mode" --cpus 0 "${extra[@]}" ${SERVER_ARGS:-} >"$WORK/server-$mode.log" 2>&1 &
    local server_pid=$!
    PIDS+=($server_pid)
    wait_port "$srv" $server_pid 10 || { echo "server did not start: $(cat "$WORK/server-$mode.log")" >&2; return 1; }
    local i
    for ((i = 0; i < 50; i++)); do
        "$BIN/kumoctl" "127.0.0.1:$mgr" attach >/dev/null 2>&1 || true
        local status
        status=$("$BIN/kumoctl" "127.0.0.1:$mgr" status 2>/dev/null || true)
        grep -q "127.0.0.1:$srv.*(active)" <<<"$status" && break
        sleep 0.2
    done
    COST_PIDS=($server_pid)
    if [ "$mode" = gateway ]; then
        free_port; gw=$PORT
        local flag=-t
        [ "$PROTO" = binary ] && flag=-b
        taskset -c "$SERVER_CPU" "$BIN/kumo-gateway" -m "127.0.0.1:$mgr" "$flag" "127.0.0.1:$gw" \
            --cpus 0 >"$WORK/gateway.log" 2>&1 &
        PIDS+=($!)
        COST_PIDS+=($!)
        wait_port "$gw" $! 10 || { echo "gateway did not start" >&2; return 1; }
    else
        wait_port "$gw" $server_pid 10 || { echo "embedded gateway did not start" >&2; return 1; }
    fi
    DATA_PORT=$gw
    # Routing reaches the gateway within a poll (keepalive) interval: wait until a get is answered.
    for ((i = 0; i < 50; i++)); do
        [ "$(printf 'get x\r\n' | timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$gw; cat >&3; head -c 5 <&3" 2>/dev/null)" = "END"$'\r' ] && break
        sleep 0.2
    done
}

HZ=$(getconf CLK_TCK)
for target in "${TARGETS[@]}"; do
    case "$target" in
        memcached)
            free_port; DATA_PORT=$PORT
            taskset -c "$SERVER_CPU" memcached -u root -p "$DATA_PORT" -U 0 -l 127.0.0.1 -t 1 -m 1024 &
            PIDS+=($!)
            COST_PIDS=($!)
            wait_port "$DATA_PORT" $! 10
            ;;
        gateway | embedded) start_kumofs "$target" || continue ;;
        *) echo "unknown target $target" >&2; exit 2 ;;
    esac
    taskset -c "$LOADGEN_CPU" "$BIN/kumo-bench" -s 127.0.0.1 -p "$DATA_PORT" --protocol "$PROTO" \
        --prefill --requests 1 --key-maximum 100000 --data-size 32 --cpu "$LOADGEN_CPU" >/dev/null
    before=0
    for pid in "${COST_PIDS[@]}"; do before=$((before + $(ticks "$pid"))); done
    pidlist=$(IFS=,; echo "${COST_PIDS[*]}")
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_io_uring_enter \
        -e irq_vectors:reschedule_entry -p "$pidlist" -o "$WORK/stat.csv" \
        -- sleep "$TIME" 2>/dev/null &
    STAT_PID=$!
    out=$(taskset -c "$LOADGEN_CPU" "$BIN/kumo-bench" -s 127.0.0.1 -p "$DATA_PORT" --protocol "$PROTO" \
        --clients 50 --pipeline "$PIPELINE" --ratio 1:10 --key-maximum 100000 --data-size 32 \
        --test-time "$TIME" --cpu "$LOADGEN_CPU" 2>&1 | grep '^RESULT')
    wait "$STAT_PID" || true
    syscalls=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 }' "$WORK/stat.csv")
    switches=$(awk -F, '$3 == "context-switches" { print $1 }' "$WORK/stat.csv")
    urings=$(awk -F, '$3 == "syscalls:sys_enter_io_uring_enter" { print $1 }' "$WORK/stat.csv")
    resched=$(awk -F, '$3 == "irq_vectors:reschedule_entry" { print $1 }' "$WORK/stat.csv")
    after=0
    for pid in "${COST_PIDS[@]}"; do after=$((after + $(ticks "$pid"))); done
    ops=$(sed -E 's/.*RESULT ops=([0-9]+).*/\1/' <<<"$out")
    awk -v t="$target" -v p="$PIPELINE" -v pr="$PROTO" -v ticks=$((after - before)) -v hz="$HZ" \
        -v ops="$ops" -v line="$out" -v sc="${syscalls:-0}" -v cs="${switches:-0}" -v ur="${urings:-0}" -v ri="${resched:-0}" 'BEGIN {
        split(line, f, " "); rate = ""; p50 = ""; p99 = ""
        for (i in f) { split(f[i], kv, "="); if (kv[1] == "ops_per_sec") rate = kv[2]; if (kv[1] == "p50_us") p50 = kv[2]; if (kv[1] == "p99_us") p99 = kv[2] }
        printf "%-10s %s p%-3s ops/s %8s p50 %7s p99 %7s  cpu %.2fs  %.2f us/op  %.2f syscalls/op (io_uring_enter %.2f)  %.3f switches/op  %.3f resched IPIs/op\n", t, pr, p, rate, p50, p99, ticks / hz, (ticks / hz) * 1e6 / ops, sc / ops, ur / ops, cs / ops, ri / ops
    }'
    if [ "$KEEP" = 1 ]; then echo "running on port $DATA_PORT, pids $pidlist; Ctrl-C to stop" >&2; wait; fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
done
