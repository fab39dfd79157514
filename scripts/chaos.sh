#!/usr/bin/env bash
# Long chaos run of the mutual-exclusion checker (tests/chaos/README.md).
#
#   scripts/chaos.sh [MINUTES] [WORKERS] [KEYS]      defaults: 5 minutes, 12 workers, 4 keys
#
# Builds keylockd and chaos_worker (Release) into build/chaos unless KEYLOCKD and CHAOS_WORKER
# name binaries, runs tests/chaos/chaos.py for MINUTES, keeps the logs in build/chaos/run-<seed>
# and exits non-zero on any anomaly. SEED=n repeats a run's fault schedule.
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
echo "chaos: $minutes min, $workers workers, $keys keys, seed $seed"
exec python3 "$root/tests/chaos/chaos.py" run --keylockd "$KEYLOCKD" --worker "$CHAOS_WORKER" \
  --seconds "$seconds" --workers "$workers" --keys "$keys" --seed "$seed" \
  --out "$build/run-$seed" --keep
