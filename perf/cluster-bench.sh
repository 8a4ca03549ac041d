#!/usr/bin/env bash
# The cluster benchmark: 3 servers with 3 copies on one host against memcached, then attaching a
# 4th server to a cluster holding 1 million keys.
#
# 1. Writes: set-only, 50 connections, pipeline 16, 32-byte values, 100k keys, with kumo-bench
#    (text and binary protocol). memcached -t 1 and the whole kumofs cluster (manager, 3 servers
#    with one shard each, gateway) are pinned to CPU 0, the load generator to CPU 1: the same CPU
#    budget on both sides. Best of RUNS runs of TIME seconds; the ratio is kumofs / memcached.
# 2. Rebalance: 1,000,000 keys are set through the gateway, a 4th server is started and attached,
#    and the script measures the time until the rebalance is over (every server `ready`, read and
#    write tables equal), the records and bytes the senders copied (their `copy_records` and
#    `copy_bytes` stats: key + value + 40 bytes of framing per record), and the records moved as a
#    fraction of all stored records, against the ideal 1/N (N = 4). A light client load
#    (get:set 10:1, pipeline 1, 10 connections) runs before and during the attach to show what
#    the paced copy (--copy-rate, default 32 MiB/s per server) leaves to clients.
#
# usage: perf/cluster-bench.sh [--time SECS] [--runs N] [--keys N] [--no-build] [--out FILE]
#                              [--keep (keep logs and data)] [--skip-writes (part 2 only)]
# env:   SERVER_CPU (0), LOADGEN_CPU (1), COPY_RATE (MiB/s per server, default: the server's)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TIME=${KUMO_BENCH_TIME:-10}
RUNS=${KUMO_BENCH_RUNS:-3}
KEYS=1000000
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
BUILD=1
KEEP_WORK=0
SKIP_WRITES=0
OUT="perf/results/cluster-$(date -u +%Y-%m-%d).md"
COMMAND="$0 $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --time) TIME=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --keys) KEYS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP_WORK=1; shift ;;
        --skip-writes) SKIP_WRITES=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

REL=target/release
. "$ROOT/perf/ports.sh"
start_work kumo-cluster-bench

log() { echo "== $*" >&2; }

command -v memcached >/dev/null || { echo "memcached is missing" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then
    log "building release binaries"
    cargo build --release --workspace >&2
fi
for b in kumo-manager kumo-server kumo-gateway kumoctl kumostat kumo-bench; do
    [ -x "$REL/$b" ] || { echo "$REL/$b is not built" >&2; exit 1; }
done


# bench PORT PROTOCOL PIPELINE RATIO CLIENTS SECS: prints the RESULT line.
bench() {
    taskset -c "$LOADGEN_CPU" "$REL/kumo-bench" -s 127.0.0.1 -p "$1" --protocol "$2" \
        --clients "$5" --pipeline "$3" --ratio "$4" --key-maximum 100000 --data-size 32 \
        --test-time "$6" --cpu "$LOADGEN_CPU" 2>&1 | grep '^RESULT'
}
field() { sed -E "s/.*[ ]$1=([0-9.]+).*/\1/" <<<"$2"; }

# best PORT PROTOCOL: the best set-only ops/s of RUNS runs.
best() {
    local best=0 r line ops
    for ((r = 1; r <= RUNS; r++)); do
        line=$(bench "$1" "$2" 16 1:0 50 "$TIME") || { log "run $r failed"; continue; }
        echo "$TARGET $2: $line" >>"$WORK/raw.log"
        ops=$(field ops_per_sec "$line")
        log "  run $r: $ops ops/s"
        awk -v a="$ops" -v b="$best" 'BEGIN { exit !(a > b) }' && best=$ops
    done
    echo "$best"
}

# ---- 1. memcached
free_port; MC_PORT=$PORT
taskset -c "$SERVER_CPU" memcached -u root -p "$MC_PORT" -U 0 -l 127.0.0.1 -t 1 -m 1024 &
MC_PID=$!
PIDS+=("$MC_PID")
wait_port "$MC_PORT" "$MC_PID" 10 || { echo "memcached did not come up" >&2; exit 1; }
TARGET=memcached
MC_TEXT=0; MC_BIN=0; KF_TEXT=0; KF_BIN=0
if [ "$SKIP_WRITES" = 0 ]; then
    log "memcached: set-only pipeline 16"
    MC_TEXT=$(best "$MC_PORT" text)
    MC_BIN=$(best "$MC_PORT" binary)
fi
kill "$MC_PID" 2>/dev/null || true

# ---- kumofs: manager, 3 servers, gateway, all on SERVER_CPU
free_port; MGR="127.0.0.1:$PORT"
MGR_ARGS=()
# A manager that keeps a state file (--state-dir) gets its own directory for it.
if "$REL/kumo-manager" --help 2>&1 | grep -q -- --state-dir; then
    mkdir -p "$WORK/manager"
    MGR_ARGS=(-s "$WORK/manager")
fi
taskset -c "$SERVER_CPU" "$REL/kumo-manager" -v -l "$MGR" "${MGR_ARGS[@]}" >"$WORK/manager.log" 2>&1 &
PIDS+=($!)
up_or_die manager "${MGR##*:}" $! "$WORK/manager.log"
SERVERS=()
start_server() { # N
    local port stream
    free_port; port=$PORT; free_port; stream=$PORT
    local extra=()
    [ -n "${COPY_RATE:-}" ] && extra=(--copy-rate "$COPY_RATE")
    taskset -c "$SERVER_CPU" "$REL/kumo-server" -v -l "127.0.0.1:$port" -L "$stream" -m "$MGR" \
        -s "$WORK/server$1" --cpus "$SERVER_CPU" "${extra[@]}" >"$WORK/server$1.log" 2>&1 &
    PIDS+=($!)
    up_or_die "server $1" "$port" $! "$WORK/server$1.log"
    SERVERS+=("127.0.0.1:$port")
}
# settled N: true once N servers are ready, see no rebalance and route with equal tables.
settled() {
    local stats
    stats=$("$REL/kumostat" -m "$MGR" stats 2>/dev/null || true)
    [ "$(grep -c ': STAT replstat ready$' <<<"$stats")" -ge "$1" ] || return 1
    [ "$(grep -c ': STAT rebalance none$' <<<"$stats")" -ge "$1" ] || return 1
    ! grep -q ': STAT hscheck false$' <<<"$stats"
}
# wait_settled N SECONDS
wait_settled() {
    local deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        settled "$1" && return 0
        sleep 0.05
    done
    echo "the cluster did not settle with $1 servers: $("$REL/kumoctl" "$MGR" status 2>&1 | tr '\n' ' ')" >&2
    exit 1
}
for n in 1 2 3; do start_server "$n"; done
# The manager must have seen all three before one attach takes them together.
for ((i = 0; i < 100; i++)); do
    [ "$("$REL/kumoctl" "$MGR" status 2>/dev/null | grep -c '  127.0.0.1:')" -ge 3 ] && break
    sleep 0.1
done
"$REL/kumoctl" "$MGR" attach >/dev/null
wait_settled 3 60
free_port; GW_TEXT=$PORT; free_port; GW_BIN=$PORT
taskset -c "$SERVER_CPU" "$REL/kumo-gateway" -m "$MGR" -t "127.0.0.1:$GW_TEXT" \
    -b "127.0.0.1:$GW_BIN" --cpus "$SERVER_CPU" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
up_or_die gateway "$GW_TEXT" $! "$WORK/gateway.log"
up_or_die gateway "$GW_BIN" $! "$WORK/gateway.log"
TARGET=kumofs
if [ "$SKIP_WRITES" = 0 ]; then
    log "kumofs (3 servers, 3 copies): set-only pipeline 16"
    KF_TEXT=$(best "$GW_TEXT" text)
    KF_BIN=$(best "$GW_BIN" binary)
fi
ratio() { awk -v k="$1" -v m="$2" 'BEGIN { if (m > 0) printf "%.2f", k / m; else print "-" }'; }

# ---- 2. attach a 4th server to KEYS keys
log "setting $KEYS keys"
FILL_START=$(date +%s.%N)
taskset -c "$LOADGEN_CPU" "$REL/kumo-bench" -s 127.0.0.1 -p "$GW_BIN" --protocol binary \
    --prefill --requests 1 --clients 50 --pipeline 16 --key-maximum "$KEYS" --key-prefix k- \
    --data-size 32 --cpu "$LOADGEN_CPU" >/dev/null
FILL_SECS=$(awk -v a="$FILL_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
stat_sum() { # KEY: the sum of a stats key over every active server
    "$REL/kumostat" -m "$MGR" stats 2>/dev/null | awk -v k="$1" '$2 == "STAT" && $3 == k { s += $4 } END { print s + 0 }'
}
ITEMS_BEFORE=$(stat_sum items)
log "$ITEMS_BEFORE records stored; light load before the attach"
QUIET=$(bench "$GW_TEXT" text 1 1:10 10 5)
start_server 4
for ((i = 0; i < 100; i++)); do
    "$REL/kumoctl" "$MGR" status 2>/dev/null | sed -n '/^not attached node:/,$p' | grep -q "${SERVERS[3]}" && break
    sleep 0.1
done
bench "$GW_TEXT" text 1 1:10 10 8 >"$WORK/during.txt" &
LOAD_PID=$!
sleep 1
log "attaching the 4th server"
ATTACH_START=$(date +%s.%N)
"$REL/kumoctl" "$MGR" attach >/dev/null
wait_settled 4 600
ATTACH_SECS=$(awk -v a="$ATTACH_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
wait "$LOAD_PID" || true
DURING=$(cat "$WORK/during.txt")
MOVED=$(stat_sum copy_records)
MOVED_BYTES=$(stat_sum copy_bytes)
ITEMS_AFTER=$(stat_sum items)
NEW_ITEMS=$("$REL/kumostat" "${SERVERS[3]}" items)
FRACTION=$(awk -v m="$MOVED" -v t="$ITEMS_BEFORE" 'BEGIN { printf "%.3f", m / t }')
VS_IDEAL=$(awk -v f="$FRACTION" 'BEGIN { printf "%.2f", f / 0.25 }')

RESULT=$(cat <<EOF
## Writes: 3 servers x 3 copies vs memcached (set-only, pipeline 16, 50 connections, 32 B values)

| protocol | memcached ops/s | kumofs ops/s | ratio (goal >= 0.5) |
|---|---:|---:|---:|
| text | $MC_TEXT | $KF_TEXT | $(ratio "$KF_TEXT" "$MC_TEXT") |
| binary | $MC_BIN | $KF_BIN | $(ratio "$KF_BIN" "$MC_BIN") |

## Attaching a 4th server to $KEYS keys (3 copies: $ITEMS_BEFORE records)

| measure | value |
|---|---:|
| time to set the keys (binary, pipeline 16) | $FILL_SECS s |
| attach to settled (copy, switch, drop) | $ATTACH_SECS s |
| records copied | $MOVED |
| bytes copied (key + value + 40 per record) | $MOVED_BYTES |
| records now on the 4th server | $NEW_ITEMS |
| records stored after (all servers) | $ITEMS_AFTER |
| records moved / records stored | $FRACTION |
| ... against the ideal 1/N = 0.25 | ${VS_IDEAL}x |

Light client load (text, get:set 10:1, pipeline 1, 10 connections):

- before the attach: \`$QUIET\`
- during the attach (8 s from 1 s before it): \`$DURING\`
EOF
)
echo "$RESULT"
mkdir -p "$(dirname "$OUT")"
{
    echo "# kumofs cluster benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- command: \`$COMMAND\` (set-only runs: ${TIME}s each, best of $RUNS)"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "- machine: $(uname -srm), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "- load average at the end (other work on the machine skews results): $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- memcached $(memcached -V 2>/dev/null | cut -d' ' -f2) -t 1 and every kumofs daemon (manager, 3-4 servers with one shard, gateway) on CPU $SERVER_CPU; kumo-bench on CPU $LOADGEN_CPU"
    echo "- copy rate: ${COPY_RATE:-the server default (32)} MiB/s per server"
    echo
    echo "$RESULT"
    echo
    echo "Raw RESULT lines of the set-only runs:"
    echo
    echo '```'
    cat "$WORK/raw.log"
    echo '```'
} >"$OUT"
log "written to $OUT"
