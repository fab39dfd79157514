#!/usr/bin/env bash
# Soak and scale run of keylockd with keylock-bench, sampling the daemon's RSS.
#
#   scripts/soak.sh [MIXED_SECONDS] [SAMPLE_SECONDS] [LEASES] [CONNECTIONS]
#       defaults: 3600 s of mixed load, an RSS sample every 60 s, 1000000 leases, 10000 connections
#
# Phases, each against one keylockd (build/release/src/keylockd, or $KEYLOCKD):
#   1. warm-up: 10 s of the mixed workload; RSS afterwards is the baseline;
#   2. hold-many: LEASES leases held at once (then dropped with their connections);
#   3. connections: CONNECTIONS idle connections (needs ulimit -n above it; raised if allowed);
#   4. mixed: zipf over 10000 keys (25 % semaphores) with 16 clients, waiting acquires, for
#      MIXED_SECONDS, RSS sampled every SAMPLE_SECONDS;
#   5. idle: RSS after the load has ended (and leases run out).
# Passes when RSS after the mixed phase is within 10 % + 16 MiB of the RSS before it (no leak
# over the long phase), and after everything within the same bound of the post-scale RSS.
# Writes the samples to build/soak/rss.tsv and the bench output to build/soak/bench.txt.
set -euo pipefail
mixed=${1:-3600}
sample=${2:-60}
leases=${3:-1000000}
conns=${4:-10000}
root=$(cd "$(dirname "$0")/.." && pwd)
KEYLOCKD=${KEYLOCKD:-$root/build/release/src/keylockd}
BENCH=${BENCH:-$root/build/release/bench/keylock-bench}
out=$root/build/soak
mkdir -p "$out"
for b in "$KEYLOCKD" "$BENCH"; do
  [[ -x $b ]] || { echo "soak: $b not built (make release)" >&2; exit 2; }
done

want_fds=$((conns + 512))
if (( $(ulimit -n) < want_fds )); then
  ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
if (( $(ulimit -n) < want_fds )); then
  conns=$(( $(ulimit -n) - 512 ))
  echo "soak: open files limited to $(ulimit -n); using $conns connections" >&2
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KEYLOCKD" --listen "127.0.0.1:$port" --metrics-listen "" --log-level warn \
  --max-connections $((conns + 256)) --max-keys $((leases + 65536)) 2>"$out/keylockd.log" &
pid=$!
sampler=
cleanup() {
  [[ -n $sampler ]] && kill "$sampler" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
start=$(date +%s)
: >"$out/rss.tsv"
mark() { printf '%s\t%s\t%s\n' "$(( $(date +%s) - start ))" "$1" "$(rss_kib)" | tee -a "$out/rss.tsv"; }
bench() {
  "$BENCH" -t "keylock://127.0.0.1:$port" --server-pid "$pid" -q "$@" | tee -a "$out/bench.txt"
}
: >"$out/bench.txt"
echo "seconds	phase	rss_kib"
mark start
mixed_load() {
  bench -w zipf -s "$1" -c 16 --keys 10000 --semaphore-pct 25 --limit 4 --ttl-ms 5000
}
mixed_load 10 >/dev/null
mark baseline
base=$(rss_kib)
bench -w hold-many --leases "$leases" -p 64 -s 1 >/dev/null
mark after-hold-many
sleep 3  # its connection closed: let the daemon free those leases before the next phase
mark hold-many-released
bench -w connections --connections "$conns" -s 1 >/dev/null
mark after-connections
# Leases of hold-many outlive nothing: their connections closed, so they are gone already.
sleep 2
mark before-mixed
before=$(rss_kib)
( while sleep "$sample"; do mark mixed; done ) &
sampler=$!
mixed_load "$mixed" >/dev/null
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=
mark after-mixed
sleep 6  # past the mixed workload's ttl: anything left would be a leak
mark idle
after=$(rss_kib)
grep -E "RSS|bytes per|acquires/s|ops/s" "$out/bench.txt" | head -20 || true
bound=$(( before + before / 10 + 16384 ))
echo "soak: baseline ${base} KiB, before mixed ${before} KiB, idle after ${after} KiB (bound ${bound} KiB)"
if (( after > bound )); then
  echo "soak: FAIL: RSS did not return near its level before the mixed load" >&2
  exit 1
fi
echo "soak: PASS"
