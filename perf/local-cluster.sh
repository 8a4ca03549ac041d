#!/usr/bin/env bash
# `make run`: a local kumofs cluster in the foreground, the seed's "Run all daemons on the one server"
# HowTo: 1 manager, 3 servers (data under ./run/), and a gateway speaking memcached text on
# 127.0.0.1:11211 (binary on 11511, async binary on 11611). Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RUN=${RUN:-run}
HOST=127.0.0.1
MGR=$HOST:19700
mkdir -p "$RUN"

for b in kumo-manager kumo-server kumo-gateway kumoctl; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run 'make release' first" >&2; exit 1; }
done

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped"
}
trap stop INT TERM EXIT

start() { # name, args...
  local name=$1; shift
  "$@" >"$RUN/$name.log" 2>&1 &
  pids+=($!)
  echo "started $name (pid $!): $*"
}

wait_port() { # host port
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1:$2; see $RUN/*.log" >&2
  exit 1
}

start manager "$BIN/kumo-manager" -v -l "$MGR" -s "$RUN"
wait_port $HOST 19700
for i in 1 2 3; do
  start "server$i" "$BIN/kumo-server" -v -m "$MGR" -l "$HOST:1980$i" -L "1990$i" -s "$RUN/database$i"
done
for i in 1 2 3; do wait_port $HOST "1980$i"; done

# Attach once the manager has seen all three servers (new ones are listed as not attached; after a
# restart on the same run/ directory they are still attached, and active once they sent a keepalive).
for _ in $(seq 1 300); do
  status=$("$BIN/kumoctl" "$MGR" status 2>/dev/null || true)
  if [ "$(sed -n '/^not attached node:/,$p' <<<"$status" | grep -c ':198')" -ge 3 ] ||
     [ "$(grep -c ':198.*(active)' <<<"$status")" -ge 3 ]; then break; fi
  sleep 0.1
done
"$BIN/kumoctl" "$MGR" attach
start gateway "$BIN/kumo-gateway" -v -m "$MGR" -t "$HOST:11211" -b "$HOST:11511" -c "$HOST:11611"
wait_port $HOST 11211
"$BIN/kumoctl" "$MGR" status
echo
echo "kumofs is running: memcached text on $HOST:11211, binary on $HOST:11511. Logs in $RUN/. Ctrl-C stops it."
wait
