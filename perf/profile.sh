#!/usr/bin/env bash
# Records a call-graph profile (perf record -g) of a running process while a load runs, then prints
# the top entries of `perf report --stdio`.
#
# usage: perf/profile.sh TARGET [SECONDS] [-- KUMO-BENCH-ARGS...]
#   TARGET    a pid, or a process name (kumo-server, kumo-gateway, memcached...): the newest such process
#   SECONDS   how long to record (default 10)
#   after --, arguments for target/release/kumo-bench, started pinned to CPU 1 for the recording, e.g.
#   perf/profile.sh kumo-gateway 10 -- -p 11211 --pipeline 16 --test-time 12 --cpu 1
# env: PERF_OUT (default /tmp/kumo-profile-NAME-DATE.data), PERF_TOP (lines printed, default 60),
#      PROFILE_DIR (cargo profile of the kumo-bench binary, default release)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,12p' "$0"
    exit 2
fi
TARGET=$1
shift
SECONDS_TO_RECORD=10
if [ $# -gt 0 ] && [ "$1" != -- ]; then
    SECONDS_TO_RECORD=$1
    shift
fi
[ $# -gt 0 ] && [ "$1" = -- ] && shift
LOAD_ARGS=("$@")

if ! command -v perf >/dev/null; then
    echo "perf is missing: apt-get install -y linux-perf" >&2
    exit 1
fi
if [[ "$TARGET" =~ ^[0-9]+$ ]]; then
    PID=$TARGET
else
    PID=$(pgrep -n -x "$TARGET" || true)
fi
if [ -z "${PID:-}" ] || ! kill -0 "$PID" 2>/dev/null; then
    echo "no running process $TARGET" >&2
    exit 1
fi
NAME=$(cat "/proc/$PID/comm")
OUT=${PERF_OUT:-${TMPDIR:-/tmp}/kumo-profile-$NAME-$(date -u +%Y%m%d-%H%M%S).data}
mkdir -p "$(dirname "$OUT")"

LOAD_PID=""
if [ ${#LOAD_ARGS[@]} -gt 0 ]; then
    taskset -c "${LOADGEN_CPU:-1}" "$ROOT/target/${PROFILE_DIR:-release}/kumo-bench" "${LOAD_ARGS[@]}" >"$OUT.load.txt" 2>&1 &
    LOAD_PID=$!
    trap '[ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true' EXIT
    sleep 1 # let the connections come up before recording
fi

echo "== recording $NAME (pid $PID) for ${SECONDS_TO_RECORD}s into $OUT" >&2
perf record -g -p "$PID" -o "$OUT" -- sleep "$SECONDS_TO_RECORD" 2>&1 | grep -v '^\[ perf record: Woken' >&2 || true
if [ -n "$LOAD_PID" ]; then
    wait "$LOAD_PID" 2>/dev/null || true
    LOAD_PID=""
    grep '^RESULT' "$OUT.load.txt" >&2 || true
fi
echo "== top entries (self time)" >&2
perf report --stdio --no-children --percent-limit 0.5 -g none -i "$OUT" 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -n "${PERF_TOP:-60}"
echo "== full report: perf report -i $OUT" >&2
