#!/usr/bin/env bash
# Before/after of one keylock-bench workload on two keylockd binaries, in the same run:
#
#   bench/ab.sh OLD_KEYLOCKD NEW_KEYLOCKD [keylock-bench args...]
#   bench/ab.sh /tmp/base/keylockd build/release/src/keylockd -w uncontended --clients 4 --pipeline 64
#
# Each round starts each binary on a free loopback port pinned to CPU $SERVER_CPU (default 1),
# runs keylock-bench pinned to CPU $GEN_CPU (default 0) for $SECONDS_EACH s (default 5), and
# stops the daemon by PID. Rounds alternate old/new ($ROUNDS, default 3) so drift on a shared
# machine hits both alike. Prints one line per run: round, which, ops/s, req/s.
set -euo pipefail
old=$1 new=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH:-$root/build/release/bench/keylock-bench}
rounds=${ROUNDS:-3}
server_cpu=${SERVER_CPU:-1}
gen_cpu=${GEN_CPU:-0}
seconds=${SECONDS_EACH:-5}
[[ $# -gt 0 ]] || set -- -w uncontended --clients 4 --pipeline 64

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "# server on CPU $server_cpu, keylock-bench on CPU $gen_cpu, $seconds s per run: $*"
for ((round = 1; round <= rounds; ++round)); do
  for which in old new; do
    bin=$old
    [[ $which == new ]] && bin=$new
    port=$(free_port)
    taskset -c "$server_cpu" "$bin" --listen "127.0.0.1:$port" --metrics-listen "" \
      --log-level warn &
    pid=$!
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      sleep 0.1
    done
    line=$(taskset -c "$gen_cpu" "$bench" --target "keylock://127.0.0.1:$port" --cpu "$gen_cpu" \
             --seconds "$seconds" -q --server-pid "$pid" "$@" | grep '^keylock:' | head -1 || true)
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo "$round $which $(awk '{print $2, $3}' <<<"$line")"
  done
done
