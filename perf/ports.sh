# Port helpers shared by the perf scripts (sourced, not run).
#   port_open PORT            true if something accepts on 127.0.0.1:PORT
#   free_port                 sets PORT to a port nothing listens on. Not `$(free_port)`: a subshell
#                             could not advance NEXT_PORT, and every call would return the same port.
#   wait_port PORT PID SECS   true once PORT accepts, false if PID died or time ran out

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
