#!/usr/bin/env bash
# Profiles keylockd under one keylock-bench workload: starts a throwaway keylockd pinned to
# SERVER_CPU (1), drives it from GEN_CPU (0), records the daemon with `perf record -g` for
# PROFILE_SECONDS (8) in the middle of the run, prints where its CPU time goes, and stops it.
#
#   bench/profile.sh -w uncontended --clients 4 --pipeline 64
#   bench/profile.sh -w uncontended --clients 32
#
# For whole call stacks use a daemon built with frame pointers, e.g.
#   cmake -S . -B build/prof -DCMAKE_BUILD_TYPE=Release -DKEYLOCK_BUILD_CLIENT=OFF \
#         -DKEYLOCK_BUILD_TESTS=OFF "-DCMAKE_CXX_FLAGS=-g -fno-omit-frame-pointer"
#   cmake --build build/prof --target keylockd keylock-bench
#   BUILD_DIR=build/prof bench/profile.sh ...
# (libcrypto and libc have no frame pointers: their callers show as unknown frames, but their
# own cost is right.)
#
# Environment: BUILD_DIR (build/release), BENCH (keylock-bench; default BUILD_DIR's),
# SERVER_CPU (1), GEN_CPU (0), PROFILE_SECONDS (8), PERF_DATA (default: a temporary file).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
build_dir=${BUILD_DIR:-build/release}
keylockd="$build_dir/src/keylockd"
bench=${BENCH:-$build_dir/bench/keylock-bench}
server_cpu=${SERVER_CPU:-1}
gen_cpu=${GEN_CPU:-0}
secs=${PROFILE_SECONDS:-8}
for bin in "$keylockd" "$bench"; do
  [ -x "$bin" ] || { echo "profile: $bin not found (BUILD_DIR, BENCH)" >&2; exit 1; }
done
command -v perf >/dev/null || { echo "profile: perf not found (Debian: linux-perf)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/keylock-profile.XXXXXX")
data=${PERF_DATA:-$work/perf.data}
kpid=""
bpid=""
cleanup() {
  for pid in $bpid $kpid; do kill "$pid" 2>/dev/null || true; done
  for pid in $bpid $kpid; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

kargs=(--listen 127.0.0.1:0)
if "$keylockd" --help 2>/dev/null | grep -q -- --metrics-listen; then
  kargs+=(--metrics-listen 127.0.0.1:0)  # no clash with another daemon's metrics port
fi
taskset -c "$server_cpu" "$keylockd" "${kargs[@]}" 2>"$work/keylockd.log" &
kpid=$!
port=""
for _ in $(seq 200); do
  port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$work/keylockd.log" | head -n 1)
  [ -n "$port" ] && break
  kill -0 "$kpid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$port" ] || { cat "$work/keylockd.log" >&2; exit 1; }

cmd=("$bench" --target "keylock://127.0.0.1:$port" --cpu "$gen_cpu" --seconds "$((secs + 4))"
  --quiet "$@")
echo "profile: keylockd pid $kpid on CPU $server_cpu; ${cmd[*]}" >&2
"${cmd[@]}" >"$work/bench.out" &
bpid=$!
sleep 2
perf record -F 1999 -g -p "$kpid" -o "$data" -- sleep "$secs" 2>"$work/perf.log" >/dev/null
wait "$bpid" || true
bpid=""

set +o pipefail  # `| head` closes perf report's output early; that is not a failure
echo "## keylock-bench"
echo
sed -n '1,/^$/p' "$work/bench.out"
grep -E "server CPU|generator CPU" "$work/bench.out" || true
echo
report() { perf report -i "$data" --stdio "$@" 2>/dev/null | grep -E '^ +[0-9]' | sed 's/ \{4,\}[-.]*$//; s/ \{4,\}- .*$//' | cut -c1-140; }
echo "## CPU by object (self)"
report --no-children --sort dso | head -8
echo "(libcrypto is the MD5 of keys; its block function has no exported symbol, so it shows"
echo "below as bare addresses)"
echo
echo "## Top functions (self)"
report --no-children --sort dso,symbol | head -30
echo
echo "## Inclusive (children), >= 2 %"
report --children --sort symbol -g none --percent-limit 2 | head -60
