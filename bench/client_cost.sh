#!/usr/bin/env bash
# Runs bench/client_cost (the C++ client's blocking and async acquire paths) against a fresh
# keylockd, and in the same run keylock-bench's `overhead` workload (one client) against that
# keylockd and a fresh redis-server: Redis's with_lock is the yardstick of issue 14. Servers
# pinned to CPU 1, load to CPU 0. Stops what it starts.
#   bench/client_cost.sh [CALLS] [ROUNDS] [PATH]   BUILD_DIR: default build/release
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build/release}
log=$(mktemp)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "$log"
}
trap cleanup EXIT
taskset -c 1 "$build/src/keylockd" --listen 127.0.0.1:0 --metrics-listen '' 2>"$log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$log" | head -n 1)
[ -n "$port" ] || { cat "$log" >&2; exit 1; }

if command -v redis-server >/dev/null; then
  rport=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
    >/dev/null &
  pids+=($!)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && break
    sleep 0.1
  done
  echo "client_cost.sh: with_lock, keylock-bench's own protocol client (one client):"
  "$build/bench/keylock-bench" --target "keylock://127.0.0.1:$port" \
    --target "redis://127.0.0.1:$rport" --compare --cpu 0 --seconds 5 --markdown \
    -w overhead --clients 1 2>/dev/null | grep -E '^\| (target |:--|keylock:|redis://|keylock/redis )'
  echo
fi
echo "client_cost.sh: the client library; keylockd on CPU 1, client on CPU 0"
taskset -c 0 "$build/bench/client_cost" "127.0.0.1:$port" "${1:-20000}" "${2:-5}" ${3:+"$3"}
