#!/usr/bin/env bash
# Smoke test of keylock-bench: starts a throwaway keylockd (and, when installed, a throwaway
# redis-server) on free loopback ports, runs every workload for a fraction of a second, checks
# that the output parses and that no run saw a mutual-exclusion violation or an error, and
# stops everything it started. Never asserts speed.
#
# usage: smoke.sh KEYLOCKD KEYLOCK_BENCH BENCH_JSON_CHECK
set -euo pipefail

keylockd=$1
bench=$2
check=$3

work=$(mktemp -d "${TMPDIR:-/tmp}/keylock-bench-smoke.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "smoke: FAIL: $*" >&2
  exit 1
}

# free_port (a loopback port nobody listens on right now) and redis_ready.
tag=smoke
# shellcheck source=../../bench/lib.sh
source "$(dirname "$0")/../../bench/lib.sh"

# --- keylockd on an ephemeral port: its log line says which. Its metrics listener (when this
# build has one) goes to an ephemeral port too, so that it cannot clash with another daemon.
kargs=(--listen 127.0.0.1:0 --log-level info)
if "$keylockd" --help 2>/dev/null | grep -q -- --metrics-listen; then
  kargs+=(--metrics-listen 127.0.0.1:0)
fi
"$keylockd" "${kargs[@]}" 2>"$work/keylockd.log" &
kpid=$!
pids+=("$kpid")
kport=""
for _ in $(seq 200); do
  kport=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$work/keylockd.log" | head -n 1)
  [ -n "$kport" ] && break
  kill -0 "$kpid" 2>/dev/null || { cat "$work/keylockd.log" >&2; fail "keylockd exited"; }
  sleep 0.05
done
[ -n "$kport" ] || fail "keylockd did not log its port"
targets=(--target "keylock://127.0.0.1:$kport")
compare=()
ratios=()
expected=1

# --- redis-server, when installed, on a free port without persistence.
if command -v redis-server >/dev/null 2>&1; then
  rport=""
  for attempt in 1 2 3; do
    p=$(free_port) || fail "no free port for redis-server"
    : >"$work/redis.log"
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
      --logfile "$work/redis.log" --dir "$work" >/dev/null 2>&1 &
    rpid=$!
    pids+=("$rpid")
    if redis_ready "$rpid" "$work/redis.log"; then
      rport=$p
      break
    fi
    echo "smoke: redis-server attempt $attempt on port $p failed" >&2
  done
  [ -n "$rport" ] || { cat "$work/redis.log" >&2; fail "redis-server did not start"; }
  targets+=(--target "redis://127.0.0.1:$rport")
  compare=(--compare)
  ratios=(--ratios)
  expected=2
else
  echo "smoke: redis-server not installed; keylock workloads only" >&2
fi

common=(--quiet --io-timeout-ms 5000 --seconds 0.3)

# run_rows NAME ROWS RATIOS... -- ARGS: one run whose JSON must hold ROWS results.
run_rows() {
  local name=$1 rows=$2
  shift 2
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  if ! "$bench" "${targets[@]}" "${compare[@]}" "${common[@]}" --json "$@" \
      >"$work/$name.json" 2>"$work/$name.err"; then
    cat "$work/$name.err" "$work/$name.json" >&2
    fail "$name: keylock-bench exited non-zero"
  fi
  "$check" "$work/$name.json" "$rows" "${flags[@]}" || fail "$name: bad output"
  echo "smoke: ok $name"
}
run() {
  local name=$1
  shift
  run_rows "$name" "$expected" "${ratios[@]}" -- "$@"
}

run rtt -w rtt --clients 2 --cpu 0
run rtt-pipelined -w rtt --clients 2 --pipeline 8
run uncontended -w uncontended --clients 2 --pipeline 4
run contended -w contended --clients 4 --hold-us 200 --poll-ms 1 --seconds 0.5
run contended-try -w contended --clients 3 --try-once --poll-ms 1
run zipf -w zipf --clients 4 --keys 50 --limit 3 --semaphore-pct 50 --hold-us 50 --poll-ms 1
run overhead -w overhead
run hold-many -w hold-many --leases 2000 --clients 2 --pipeline 16
run connections -w connections --connections 100
# rw runs against keylock only (Redis has no read-write lock): one row, no ratio. multi has two
# keylock rows (keys in one request, one key at a time) beside Redis's.
run_rows rw 1 -- -w rw --clients 6 --shared-pct 80 --hold-us 200
run_rows multi $((expected + 1)) "${ratios[@]}" -- -w multi --clients 4 --keys 20 --set-size 3 \
  --hold-us 50 --poll-ms 1
grep -q '"variant":"keys"' "$work/multi.json" || fail "multi: no keys row"

# Tables for people, Markdown, and the TSV lines for scripts.
"$bench" "${targets[@]}" "${compare[@]}" "${common[@]}" -w rtt,uncontended >"$work/text.out" \
  || fail "text output run"
grep -q "^== rtt — " "$work/text.out" || fail "no rtt table"
grep -q "^== uncontended — " "$work/text.out" || fail "no uncontended table"
grep -q "placement (keylock):" "$work/text.out" || fail "no placement line"
# The servers run on this machine, so the tables give their CPU time per op.
grep -q "^server CPU µs per op " "$work/text.out" || fail "no server CPU per op"
"$bench" "${targets[@]}" "${common[@]}" -w rtt --markdown --tsv "$work/m.tsv" --label smoke \
  >"$work/md.out" || fail "markdown run"
grep -q "^| target" "$work/md.out" || fail "no markdown table"
grep -q "^smoke	rtt	keylock	ops_per_s	" "$work/m.tsv" || fail "no tsv line"

# Usage errors exit 2.
set +e
"$bench" --target "keylock://127.0.0.1:$kport" -w nope >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "unknown workload exited $rc, not 2"

kill -0 "$kpid" 2>/dev/null || fail "keylockd died during the smoke test"
echo "smoke: all ok"
