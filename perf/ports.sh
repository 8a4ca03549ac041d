# Helpers shared by the perf scripts (sourced, not run).
#   start_work NAME           sets WORK to a fresh directory /tmp/NAME.XXXXXX and PIDS to an empty
#                             list of processes to stop; on exit every pid in PIDS is killed and
#                             reaped and WORK is removed (kept, and said so, when KEEP_WORK=1)
#   ticks PID                 CPU ticks (user + system) of a process and its threads
#   port_open PORT            true if something accepts on 127.0.0.1:PORT
#   free_port                 sets PORT to a port nothing listens on. Not `$(free_port)`: a subshell
#                             could not advance NEXT_PORT, and every call would return the same port.
#   wait_port PORT PID SECS   true once PORT accepts, false if PID died or time ran out
#   up_or_die NAME PORT PID LOG
#                             wait_port PORT PID 10, or says NAME did not come up, shows the end
#                             of its LOG and exits

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
NEXT_PORT=$((20000 + RANDOM % 20000))
free_port() {
    while port_open "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}
wait_port() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_work() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    PIDS=()
    trap stop_work EXIT
    trap "exit 130" INT TERM
}
stop_work() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "logs and data kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
up_or_die() {
    wait_port "$2" "$3" 10 && return 0
    echo "$1 did not come up (port $2); the end of $4:" >&2
    tail -n 20 "$4" >&2 2>/dev/null || true
    exit 1
}
