#!/usr/bin/env bash
# Runs bench/client_cost (the C++ client's blocking and async acquire paths) against a fresh
# keylockd: the daemon pinned to CPU 1, the client to CPU 0. Stops what it starts.
#   bench/client_cost.sh [CALLS] [ROUNDS]         BUILD_DIR: default build/release
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build/release}
log=$(mktemp)
taskset -c 1 "$build/src/keylockd" --listen 127.0.0.1:0 --metrics-listen '' 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$log" | head -n 1)
[ -n "$port" ] || { cat "$log" >&2; exit 1; }
echo "client_cost.sh: keylockd on CPU 1, client on CPU 0"
taskset -c 0 "$build/bench/client_cost" "127.0.0.1:$port" "${1:-20000}" "${2:-5}"
