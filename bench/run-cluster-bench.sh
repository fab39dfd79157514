#!/usr/bin/env bash
# Cluster mode against etcd's own lock, on one machine, in one run:
#   three etcd members (data under /dev/shm) and three keylockd in cluster mode in front of
#   them, plus one standalone keylockd; every server pinned to CPU 1 (taskset), the load
#   generator to CPU 0 (--cpu 0).
# Workloads: one key with 32 clients (contended), each client its own key (overhead, and
# uncontended for keylock), with etcd://, the three daemons as one keylock:// target, and the
# standalone daemon.
#
#   bench/run-cluster-bench.sh [SECONDS] [extra keylockd flags...]     default 5 s per run
# BUILD_DIR (default build/release) names the build. Prints keylock-bench's tables; everything
# it starts it stops, by PID.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build/release}
seconds=${1:-5}
shift || true
keylockd=$build/src/keylockd
bench=$build/bench/keylock-bench
server_cpu=${SERVER_CPU:-1}
bench_cpu=${BENCH_CPU:-0}

dir=$(mktemp -d /dev/shm/keylock-cluster-bench-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

initial="" eps="" etcd_targets=""
declare -a cports pports
for i in 0 1 2; do
  cports[$i]=$(free_port)
  pports[$i]=$(free_port)
  initial+="${initial:+,}e$i=http://127.0.0.1:${pports[$i]}"
  eps+="${eps:+,}http://127.0.0.1:${cports[$i]}"
  etcd_targets+="${etcd_targets:+,}127.0.0.1:${cports[$i]}"
done
for i in 0 1 2; do
  taskset -c "$server_cpu" etcd --name "e$i" --data-dir "$dir/e$i" \
    --listen-client-urls "http://127.0.0.1:${cports[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${cports[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${pports[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}" \
    --initial-cluster "$initial" --initial-cluster-state new \
    --initial-cluster-token "$(basename "$dir")" --log-level error >"$dir/e$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$eps" --command-timeout=1s put /bench ok >/dev/null 2>&1 && break
  sleep 0.2
done

wait_ready() {  # metrics port
  for _ in $(seq 300); do
    /usr/bin/python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$1/readyz', timeout=1).status == 200 else 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run-cluster-bench: a daemon did not become ready" >&2
  exit 1
}

cluster_targets=""
for name in a b c; do
  port=$(free_port)
  mport=$(free_port)
  taskset -c "$server_cpu" "$keylockd" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    --etcd-endpoints "$eps" --node-name "node-$name" "$@" >"$dir/node-$name.log" 2>&1 &
  pids+=($!)
  wait_ready "$mport"
  cluster_targets+="${cluster_targets:+,}127.0.0.1:$port"
done
sport=$(free_port)
smport=$(free_port)
taskset -c "$server_cpu" "$keylockd" --listen "127.0.0.1:$sport" --metrics-listen "127.0.0.1:$smport" \
  >"$dir/standalone.log" 2>&1 &
pids+=($!)
wait_ready "$smport"

echo "run-cluster-bench: etcd 3 members, keylockd cluster node-a,b,c and a standalone keylockd, all on CPU $server_cpu; generator on CPU $bench_cpu; $seconds s per run"
common=(--cpu "$bench_cpu" -s "$seconds" -q)
"$bench" -t "etcd://$etcd_targets" -t "keylock://$cluster_targets" -t "keylock://127.0.0.1:$sport" \
  -w contended -c 32 "${common[@]}"
"$bench" -t "etcd://$etcd_targets" -t "keylock://$cluster_targets" -t "keylock://127.0.0.1:$sport" \
  -w overhead -c 32 "${common[@]}"
"$bench" -t "keylock://$cluster_targets" -t "keylock://127.0.0.1:$sport" -w uncontended -c 32 \
  "${common[@]}"
for name in a b c; do
  echo "== node-$name: $(grep -c 'etcd lease' "$dir/node-$name.log") etcd lease lines"
done
