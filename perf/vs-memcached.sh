#!/usr/bin/env bash
# Compares kumofs with memcached -t 1 on one host, in one run, in two configurations:
#   gateway   one kumo-server and a separate kumo-gateway process (the classic kumofs layout);
#   embedded  one kumo-server serving the memcached protocols itself (`kumo-server -t/-b`).
#
# Every server-side process is pinned to CPU 0 (taskset; kumofs daemons also with --cpus 0), the
# load generator (kumo-bench, or memtier_benchmark when it is on PATH) to CPU 1. Three scenarios, each
# with 50 connections, get:set 10:1, 32-byte values and 100k prefilled keys: text pipeline 1, text
# pipeline 16, binary pipeline 16. Each scenario runs RUNS times for TIME seconds; the best ops/s is
# kept (the machine is noisy).
#
# usage: perf/vs-memcached.sh [--time SECS] [--runs N] [--no-build] [--no-kumofs] [--profile NAME]
#                             [--only gateway|embedded] [--out FILE]
#   --profile NAME  cargo profile whose binaries run (default release; `perf` builds quicker)
# env:   KUMO_BENCH_TIME, KUMO_BENCH_RUNS (defaults 20 and 3), SERVER_CPU (0), LOADGEN_CPU (1)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TIME=${KUMO_BENCH_TIME:-20}
RUNS=${KUMO_BENCH_RUNS:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
BUILD=1
KUMOFS=1
PROFILE=release
MODES=(gateway embedded)
OUT="perf/results/vs-memcached-$(date -u +%Y-%m-%d).md"
COMMAND="$0 $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --time) TIME=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-kumofs) KUMOFS=0; shift ;;
        --profile) PROFILE=$2; shift 2 ;;
        --only) MODES=("$2"); shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

REL=target/$PROFILE
. "$ROOT/perf/ports.sh"
start_work kumo-vs-memcached

log() { echo "== $*" >&2; }

if ! command -v memcached >/dev/null; then
    echo "memcached is missing: apt-get install -y memcached libmemcached-tools" >&2
    exit 1
fi
if [ "$BUILD" = 1 ]; then
    log "building $PROFILE binaries"
    cargo build --profile "$PROFILE" --workspace >&2
fi


# The load generator: memtier_benchmark if installed, else ours. Prints "ops p50_us p99_us".
# memtier's Totals line is: Totals ops/s hits/s misses/s avg p50 p99 p99.9 KB/s, latencies in ms
# (memtier is not installable on our machines, so that branch is untested here).
loadgen() { # PORT PROTOCOL PIPELINE
    local port=$1 proto=$2 pipeline=$3 out
    if command -v memtier_benchmark >/dev/null; then
        out=$(taskset -c "$LOADGEN_CPU" memtier_benchmark -s 127.0.0.1 -p "$port" \
            --protocol="memcache_$proto" -t 1 -c 50 --pipeline="$pipeline" --ratio=1:10 \
            --key-maximum=100000 -d 32 --test-time="$TIME" --hide-histogram 2>/dev/null |
            awk '$1 == "Totals" { printf "%s %.1f %.1f\n", $2, $(NF-3) * 1000, $(NF-2) * 1000 }')
        [ -n "$out" ] && echo "$out"
        return
    fi
    out=$(taskset -c "$LOADGEN_CPU" "$REL/kumo-bench" -s 127.0.0.1 -p "$port" --protocol "$proto" \
        --clients 50 --pipeline "$pipeline" --ratio 1:10 --key-maximum 100000 --data-size 32 \
        --test-time "$TIME" --cpu "$LOADGEN_CPU" 2>&1 | grep '^RESULT') || return 1
    echo "$TARGET $proto pipeline $pipeline: $out" >>"$WORK/raw.log"
    echo "$out" | sed -E 's/.*ops_per_sec=([0-9.]+).*p50_us=([0-9.]+).*p99_us=([0-9.]+).*/\1 \2 \3/'
}

prefill() { # PORT
    taskset -c "$LOADGEN_CPU" "$REL/kumo-bench" -s 127.0.0.1 -p "$1" --prefill --requests 1 \
        --key-maximum 100000 --data-size 32 --cpu "$LOADGEN_CPU" >/dev/null
}

SCENARIOS=("text 1" "text 16" "binary 16")

# best_of PORT PROTOCOL PIPELINE: the run with the highest ops/s, as "ops p50 p99".
best_of() {
    local best="" r line
    for ((r = 1; r <= RUNS; r++)); do
        line=$(loadgen "$@") || { log "run $r failed"; continue; }
        log "  run $r: $line"
        if [ -z "$best" ] || awk -v a="${line%% *}" -v b="${best%% *}" 'BEGIN { exit !(a > b) }'; then
            best=$line
        fi
    done
    echo "${best:-0 - -}"
}

declare -A MC KF
log "memcached -t 1 on CPU $SERVER_CPU"
free_port; MC_PORT=$PORT
taskset -c "$SERVER_CPU" memcached -u root -p "$MC_PORT" -U 0 -l 127.0.0.1 -t 1 -m 1024 &
MC_PID=$!
PIDS+=("$MC_PID")
wait_port "$MC_PORT" "$MC_PID" 10 || { echo "memcached did not come up" >&2; exit 1; }
prefill "$MC_PORT"
TARGET=memcached
for s in "${SCENARIOS[@]}"; do
    log "memcached: $s"
    MC[$s]=$(best_of "$MC_PORT" $s)
done
kill "$MC_PID" 2>/dev/null || true

declare -A NOTE
# start_kumofs MODE: a manager and one attached server, plus a gateway (MODE gateway) or the
# server's own memcached ports (MODE embedded). Sets GW_TEXT and GW_BIN, or NOTE[MODE] on failure.
start_kumofs() {
    local mode=$1 mgr srv srv_stream gw_text gw_bin
    for b in kumo-manager kumo-server kumo-gateway kumoctl; do
        [ -x "$REL/$b" ] || { NOTE[$mode]="$REL/$b is not built"; return 1; }
    done
    free_port; mgr=$PORT; free_port; srv=$PORT; free_port; srv_stream=$PORT
    free_port; gw_text=$PORT; free_port; gw_bin=$PORT
    mkdir -p "$WORK/data-$mode"
    taskset -c "$SERVER_CPU" "$REL/kumo-manager" -l "127.0.0.1:$mgr" -s "$WORK/data-$mode" >"$WORK/manager-$mode.log" 2>&1 &
    PIDS+=($!)
    wait_port "$mgr" $! 10 || { NOTE[$mode]="kumo-manager did not come up: $(head -c 200 "$WORK/manager-$mode.log")"; return 1; }
    local ports=()
    [ "$mode" = embedded ] && ports=(-t "127.0.0.1:$gw_text" -b "127.0.0.1:$gw_bin")
    taskset -c "$SERVER_CPU" "$REL/kumo-server" -l "127.0.0.1:$srv" -L "$srv_stream" -m "127.0.0.1:$mgr" \
        -s "$WORK/data-$mode" --cpus 0 "${ports[@]}" >"$WORK/server-$mode.log" 2>&1 &
    local server_pid=$!
    PIDS+=($server_pid)
    wait_port "$srv" $server_pid 10 || { NOTE[$mode]="kumo-server did not come up: $(head -c 200 "$WORK/server-$mode.log")"; return 1; }
    local i attached=0
    for ((i = 0; i < 50; i++)); do
        "$REL/kumoctl" "127.0.0.1:$mgr" attach >/dev/null 2>&1 || true
        # Capture first: `grep -q` exits early, and under pipefail kumoctl's SIGPIPE fails the test.
        local status
        status=$("$REL/kumoctl" "127.0.0.1:$mgr" status 2>/dev/null || true)
        if grep -q "127.0.0.1:$srv.*(active)" <<<"$status"; then
            attached=1
            break
        fi
        sleep 0.2
    done
    [ "$attached" = 1 ] || { NOTE[$mode]="kumoctl attach did not attach the server: $("$REL/kumoctl" "127.0.0.1:$mgr" status 2>&1 | tr "\n" " ") server log: $(head -c 300 "$WORK/server-$mode.log")"; return 1; }
    if [ "$mode" = gateway ]; then
        taskset -c "$SERVER_CPU" "$REL/kumo-gateway" -m "127.0.0.1:$mgr" -t "127.0.0.1:$gw_text" \
            -b "127.0.0.1:$gw_bin" --cpus 0 >"$WORK/gateway.log" 2>&1 &
        PIDS+=($!)
        wait_port "$gw_text" $! 10 && wait_port "$gw_bin" $! 10 ||
            { NOTE[$mode]="kumo-gateway did not come up: $(head -c 200 "$WORK/gateway.log")"; return 1; }
    else
        wait_port "$gw_text" $server_pid 10 && wait_port "$gw_bin" $server_pid 10 ||
            { NOTE[$mode]="the server's memcached ports did not come up: $(head -c 200 "$WORK/server-$mode.log")"; return 1; }
    fi
    # The gateway polls the routing every 500 ms: wait until a get is answered by the server.
    for ((i = 0; i < 50; i++)); do
        [ "$(printf 'get x\r\n' | timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$gw_text; cat >&3; head -c 5 <&3" 2>/dev/null)" = "END"$'\r' ] && break
        sleep 0.2
    done
    GW_TEXT=$gw_text
    GW_BIN=$gw_bin
}

stop_kumofs() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}

declare -A RESULT_OF
for mode in "${MODES[@]}"; do
    if [ "$KUMOFS" = 0 ]; then
        NOTE[$mode]="skipped (--no-kumofs)"
        continue
    fi
    if start_kumofs "$mode"; then
        prefill "$GW_TEXT"
        TARGET="kumofs-$mode"
        for s in "${SCENARIOS[@]}"; do
            log "kumofs ($mode): $s"
            set -- $s
            port=$GW_TEXT
            [ "$1" = binary ] && port=$GW_BIN
            RESULT_OF[$mode,$s]=$(best_of "$port" $s)
        done
    else
        log "kumofs ($mode) skipped: ${NOTE[$mode]}"
    fi
    stop_kumofs
done

table() {
    printf '| scenario | memcached ops/s | p50 us | p99 us |'
    for mode in "${MODES[@]}"; do printf ' kumofs %s ops/s | p50 us | p99 us | ratio |' "$mode"; done
    printf '\n|---|---:|---:|---:|'
    for mode in "${MODES[@]}"; do printf -- '---:|---:|---:|---:|'; done
    printf '\n'
    for s in "${SCENARIOS[@]}"; do
        read -r mo m50 m99 <<<"${MC[$s]}"
        set -- $s
        printf '| %s pipeline %s | %.0f | %s | %s |' "$1" "$2" "$mo" "$m50" "$m99"
        for mode in "${MODES[@]}"; do
            read -r ko k50 k99 <<<"${RESULT_OF[$mode,$s]:-- - -}"
            ratio=$(awk -v k="$ko" -v m="$mo" 'BEGIN { if (k+0 > 0 && m+0 > 0) printf "%.2f", k / m; else print "-" }')
            printf ' %s | %s | %s | %s |' "$ko" "$k50" "$k99" "$ratio"
        done
        printf '\n'
    done
}

RESULT=$(table)
echo "$RESULT"
for mode in "${MODES[@]}"; do
    [ -n "${NOTE[$mode]:-}" ] && echo "kumofs $mode: ${NOTE[$mode]}"
done

mkdir -p "$(dirname "$OUT")"
GEN="kumo-bench"
command -v memtier_benchmark >/dev/null && GEN="memtier_benchmark"
{
    echo "# kumofs vs memcached, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- command: \`$COMMAND\` (time ${TIME}s per run, best of $RUNS, $PROFILE binaries)"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "- machine: $(uname -srm), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "- load average at the end (other work on the machine skews results): $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- memcached: $(memcached -V 2>/dev/null) with -t 1 on CPU $SERVER_CPU; load generator $GEN on CPU $LOADGEN_CPU"
    echo "- kumofs gateway: kumo-server --cpus 0 and kumo-gateway --cpus 0, both on CPU $SERVER_CPU"
    echo "- kumofs embedded: kumo-server --cpus 0 -t PORT -b PORT on CPU $SERVER_CPU (no gateway process)"
    echo "- load: 50 connections, get:set 10:1, 32-byte values, 100000 prefilled keys"
    echo
    echo "$RESULT"
    for mode in "${MODES[@]}"; do
        [ -n "${NOTE[$mode]:-}" ] && { echo; echo "kumofs $mode: ${NOTE[$mode]}"; }
    done
    if [ -s "$WORK/raw.log" ]; then
        echo
        echo "Raw RESULT lines, in run order:"
        echo
        echo '```'
        cat "$WORK/raw.log"
        echo '```'
    fi
} >"$OUT"
log "written to $OUT"
