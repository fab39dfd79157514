#!/usr/bin/env bash
# `make run-cluster`: a three-member etcd (Debian's `etcd`, data in a temp dir under /dev/shm)
# and three keylockd in cluster mode in front of it, all on loopback. Prints how to reach them
# and stops everything on Ctrl-C (or SIGTERM), by PID.
#
#   keylockd ports   7400, 7410, 7420   (metrics on 7401, 7411, 7421)
#   etcd clients     2379, 2479, 2579   (peers on 2380, 2480, 2580)
#
# KEYLOCKD names the daemon binary (default build/release/src/keylockd). Extra arguments go to
# every keylockd, e.g. scripts/run-cluster.sh --handoff-limit 8 --log-level debug.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
keylockd=${KEYLOCKD:-$root/build/release/src/keylockd}
[[ -x $keylockd ]] || { echo "run-cluster: no keylockd at $keylockd (make build first)" >&2; exit 1; }
command -v etcd >/dev/null || { echo "run-cluster: no etcd (scripts/install-deps.sh installs etcd-server)" >&2; exit 1; }

base=/dev/shm
[[ -d $base && -w $base ]] || base=${TMPDIR:-/tmp}
dir=$(mktemp -d "$base/keylock-cluster-XXXXXX")
pids=()
stopping=""
cleanup() {
  trap - INT TERM EXIT
  stopping=1
  # Daemons first (they revoke their etcd leases), then etcd; SIGKILL what lingers after 5 s.
  local pid i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
  echo "run-cluster: stopped everything"
}
trap cleanup INT TERM EXIT

names=(e0 e1 e2)
client_ports=(2379 2479 2579)
peer_ports=(2380 2480 2580)
initial=""
for i in 0 1 2; do
  initial+="${initial:+,}${names[$i]}=http://127.0.0.1:${peer_ports[$i]}"
done
for i in 0 1 2; do
  etcd --name "${names[$i]}" --data-dir "$dir/${names[$i]}" \
    --listen-client-urls "http://127.0.0.1:${client_ports[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${client_ports[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
    --initial-cluster "$initial" --initial-cluster-state new \
    --initial-cluster-token "$(basename "$dir")" --log-level error \
    >"$dir/${names[$i]}.log" 2>&1 &
  pids+=($!)
done
endpoints="http://127.0.0.1:2379,http://127.0.0.1:2479,http://127.0.0.1:2579"

# Wait (bounded) until etcd has a leader: etcdctl answers a write.
for _ in $(seq 1 100); do
  if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" --command-timeout=1s put /keylock-run-cluster ok >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done

nodes=(node-a node-b node-c)
ports=(7400 7410 7420)
for i in 0 1 2; do
  "$keylockd" --listen "127.0.0.1:${ports[$i]}" --metrics-listen "127.0.0.1:$((ports[$i] + 1))" \
    --etcd-endpoints "$endpoints" --node-name "${nodes[$i]}" "$@" \
    >"$dir/${nodes[$i]}.log" 2>&1 &
  pids+=($!)
done

cat <<MSG
run-cluster: etcd at $endpoints (data and logs in $dir)
run-cluster: keylockd node-a 127.0.0.1:7400, node-b 127.0.0.1:7410, node-c 127.0.0.1:7420
  readiness:   curl -s 127.0.0.1:7401/readyz
  try a lock:  build/release/client/keylock --server 127.0.0.1:7400 run demo -- sleep 5
               build/release/client/keylock --server 127.0.0.1:7410 run demo -- echo waited
  see it:      build/release/client/keylock --server 127.0.0.1:7420 inspect demo
  logs:        tail -f $dir/node-a.log
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
[[ -n $stopping ]] || echo "run-cluster: a process exited; stopping the rest" >&2
