#!/usr/bin/env bash
# Long chaos run of the mutual-exclusion checker (tests/chaos/README.md).
#
#   scripts/chaos.sh [MINUTES] [WORKERS] [KEYS]      defaults: 5 minutes, 12 workers, 4 keys
#
# Builds keylockd and chaos_worker (Release) into build/chaos unless KEYLOCKD and CHAOS_WORKER
# name binaries, runs tests/chaos/chaos.py for MINUTES, keeps the logs in build/chaos/run-<seed>
# and exits non-zero on any anomaly. SEED=n repeats a run's fault schedule.
#
# CLUSTER=1 runs cluster mode instead: 3 etcd members (Debian's etcd, data under /dev/shm),
# 3 keylockd in front of them, workers spread over the daemons; daemon and etcd faults too, in
# cycles of 40 s of faults and 15 s without (README.md, "Cluster mode"), ending with a quiet one.
#   CLUSTER=1 scripts/chaos.sh 20 12 4
set -euo pipefail
minutes=${1:-5}
workers=${2:-12}
keys=${3:-4}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build/chaos
if [[ -z ${KEYLOCKD:-} || -z ${CHAOS_WORKER:-} ]]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKEYLOCK_BUILD_BENCH=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target keylockd chaos_worker >/dev/null
  KEYLOCKD=$build/src/keylockd
  CHAOS_WORKER=$build/tests/chaos/chaos_worker
fi
seed=${SEED:-$(date +%s)}
seconds=$(awk -v m="$minutes" 'BEGIN { print m * 60 }')
mode=()
name=run
if [[ -n ${CLUSTER:-} && ${CLUSTER} != 0 ]]; then
  mode=(--cluster)
  name=cluster-run
fi
echo "chaos${mode:+ (cluster)}: $minutes min, $workers workers, $keys keys, seed $seed"
exec python3 "$root/tests/chaos/chaos.py" run "${mode[@]}" --keylockd "$KEYLOCKD" \
  --worker "$CHAOS_WORKER" --seconds "$seconds" --workers "$workers" --keys "$keys" \
  --seed "$seed" --out "$build/$name-$seed" --keep
