#!/usr/bin/env bash
# Runs keylock-bench's standard matrix against a throwaway keylockd and a throwaway
# redis-server, side by side, and writes bench/RESULTS.md.
#
#   make build            # or make test: builds build/release (this script builds nothing)
#   bench/run-peers.sh
#
# Both servers listen on free loopback ports and are pinned with taskset to SERVER_CPU
# (default 1); the load generator is pinned to GEN_CPU (default 0), so every round trip crosses
# cores the same way for both. Each run is RUN_SECONDS (default 5) per target. Both servers
# are restarted before the memory workloads, so their RSS starts clean. Every process started
# here is stopped by PID on exit. Takes 3 to 8 minutes (waiting for an idle machine).
#
# Environment: BUILD_DIR (default build/release), RUN_SECONDS (5), SERVER_CPU (1), GEN_CPU (0),
# RESULTS (default bench/RESULTS.md), REDIS_SERVER (default redis-server), WAIT_IDLE (60) and
# WAIT_EACH (10): seconds to wait for the machine to fall idle before the first run and before
# each run (other work skews every number; each table reports it as "other processes CPU %");
# MAX_INTERFERENCE (20) and RETRIES (6): a run beside more than that much other work (% of a
# core) is repeated, at most RETRIES times in all.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
tag=run-peers
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$root"

build_dir=${BUILD_DIR:-build/release}
run_seconds=${RUN_SECONDS:-5}
server_cpu=${SERVER_CPU:-1}
gen_cpu=${GEN_CPU:-0}
results=${RESULTS:-$here/RESULTS.md}
redis_bin=${REDIS_SERVER:-redis-server}
wait_idle=${WAIT_IDLE:-60}
wait_each=${WAIT_EACH:-10}
max_interference=${MAX_INTERFERENCE:-20}
retries=${RETRIES:-6}

keylockd="$build_dir/src/keylockd"
bench="$build_dir/bench/keylock-bench"
for bin in "$keylockd" "$bench"; do
  if [ ! -x "$bin" ]; then
    echo "run-peers: $bin not found: run 'make build' (or set BUILD_DIR) first" >&2
    exit 1
  fi
done
for tool in "$redis_bin" taskset; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "run-peers: $tool not found: run scripts/install-deps.sh" >&2
    exit 1
  }
done

# 10,000 idle connections need as many descriptors in the bench and in each server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d "${TMPDIR:-/tmp}/keylock-run-peers.XXXXXX")
kpid=""
rpid=""
stop_servers() {
  for pid in $kpid $rpid; do kill "$pid" 2>/dev/null || true; done
  for pid in $kpid $rpid; do wait "$pid" 2>/dev/null || true; done
  kpid=""
  rpid=""
}
cleanup() {
  stop_servers
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# keylockd's metrics listener (when this build has one) on an ephemeral port: no clash with
# another daemon on the machine.
kargs=(--listen 127.0.0.1:0)
if "$keylockd" --help 2>/dev/null | grep -q -- --metrics-listen; then
  kargs+=(--metrics-listen 127.0.0.1:0)
fi

start_servers() {
  : >"$work/keylockd.log"
  taskset -c "$server_cpu" "$keylockd" "${kargs[@]}" 2>"$work/keylockd.log" &
  kpid=$!
  kport=""
  for _ in $(seq 200); do
    kport=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$work/keylockd.log" | head -n 1)
    [ -n "$kport" ] && break
    kill -0 "$kpid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$kport" ] || { cat "$work/keylockd.log" >&2; echo "run-peers: keylockd did not start" >&2; exit 1; }

  rport=""
  for _ in 1 2 3; do
    local p
    p=$(free_port)
    : >"$work/redis.log"
    taskset -c "$server_cpu" "$redis_bin" --port "$p" --bind 127.0.0.1 --save '' \
      --appendonly no --daemonize no --maxclients 20000 --logfile "$work/redis.log" \
      --dir "$work" >/dev/null 2>&1 &
    rpid=$!
    if redis_ready "$rpid" "$work/redis.log"; then
      rport=$p
      break
    fi
    kill "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
    rpid=""
  done
  [ -n "$rport" ] || { cat "$work/redis.log" >&2; echo "run-peers: redis-server did not start" >&2; exit 1; }
  echo "run-peers: keylockd pid $kpid on 127.0.0.1:$kport, redis-server pid $rpid on" \
    "127.0.0.1:$rport, both on CPU $server_cpu" >&2
}



busy=$(wait_for_idle "$wait_idle")

tsv="$work/metrics.tsv"
body="$work/body.md"
: >"$tsv"
: >"$body"

# run LABEL TITLE ARGS...: one keylock-bench invocation, both targets, its tables into the body.
# A run during which other processes used more than MAX_INTERFERENCE % of a core is repeated
# after waiting for the machine to fall idle, while the RETRIES budget lasts; the last attempt
# is kept either way, and its table shows the interference.
run() {
  local label=$1 title=$2
  shift 2
  local run_tsv="$work/$label.tsv" attempt=1 rc other
  local cmd=("$bench" --target "keylock://127.0.0.1:$kport" --target "redis://127.0.0.1:$rport"
    --compare --cpu "$gen_cpu" --seconds "$run_seconds" --markdown --tsv "$run_tsv" --label "$label"
    "$@")
  while :; do
    wait_for_idle "$wait_each" >/dev/null
    echo "run-peers: $label: ${cmd[*]}" >&2
    : >"$run_tsv"
    rc=0
    "${cmd[@]}" >"$work/$label.md" || rc=$?
    other=$(awk -F'\t' '$4 == "other_cpu_pct" && $5 > m { m = $5 } END { printf "%d", m + 0 }' \
      "$run_tsv")
    if [ "$other" -le "$max_interference" ] || [ "$retries" -le 0 ]; then break; fi
    retries=$((retries - 1))
    attempt=$((attempt + 1))
    echo "run-peers: $label: other processes used ${other} % of a core; repeating" >&2
  done
  cat "$run_tsv" >>"$tsv"
  {
    echo "### $title"
    echo
    echo '```'
    echo "${cmd[*]}"
    echo '```'
    echo
    cat "$work/$label.md"
    if [ "$attempt" -gt 1 ]; then
      echo "(attempt $attempt: earlier attempts ran beside other work)"
      echo
    fi
    if [ "$rc" -ne 0 ]; then
      echo "**keylock-bench exited $rc (a run failed or saw a mutual-exclusion violation).**"
      echo
    fi
  } >>"$body"
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(date +%s)

start_servers
run rtt-1 "Ping, 1 client" -w rtt --clients 1
run rtt-32 "Ping, 32 clients" -w rtt --clients 32
run rtt-pipe "Ping, pipelined: 4 connections × 64 in flight" -w rtt --clients 4 --pipeline 64
run uncontended-1 "Uncontended acquire + release, 1 client" -w uncontended --clients 1
run uncontended-32 "Uncontended acquire + release, 32 clients" -w uncontended --clients 32
run uncontended-32-reply "Uncontended acquire + release, 32 clients, keylock release waiting for its reply" \
  -w uncontended --clients 32 --keylock-release reply
run uncontended-pipe "Uncontended acquire + release, pipelined: 4 connections × 64" \
  -w uncontended --clients 4 --pipeline 64
run contended-0 "One key, 32 clients, hold 0 (redis-py's 100 ms poll)" \
  -w contended --clients 32
run contended-0-poll1 "One key, 32 clients, hold 0, Redis polling every 1 ms" \
  -w contended --clients 32 --poll-ms 1
run contended-think "One key, 32 clients, 1 ms think time (100 ms poll)" \
  -w contended --clients 32 --think-us 1000
run contended-think-poll1 "One key, 32 clients, 1 ms think time, Redis polling every 1 ms" \
  -w contended --clients 32 --think-us 1000 --poll-ms 1
run contended-hold "One key, 32 clients, held 300 µs (a few round trips), Redis polling every 1 ms" \
  -w contended --clients 32 --hold-us 300 --poll-ms 1
run overhead "The cost of a lock around a trivial call (with_lock), 1 client" \
  -w overhead --clients 1
run overhead-reply "with_lock, 1 client, keylock release waiting for its reply" \
  -w overhead --clients 1 --keylock-release reply
run zipf "Zipf keys: 32 clients, 1,000 keys, s = 0.99, 25 % semaphores of limit 4, hold 100 µs, Redis polling every 1 ms" \
  -w zipf --clients 32 --keys 1000 --zipf-s 0.99 --limit 4 --semaphore-pct 25 --hold-us 100 \
  --poll-ms 1
# Issue 12: read-write locks (keylock only: redis-py's Lock has no shared mode) and key sets.
run rw "One key as a read-write lock: 32 clients, 90 % shared, held 1 ms; then the same clients all exclusive (keylock only)" \
  -w rw --clients 32 --shared-pct 90 --hold-us 1000
run multi "Four distinct keys of 1,000 per cycle, 32 clients, held 100 µs: keylock keys in one request vs one key at a time (keylock, Redis polling every 1 ms)" \
  -w multi --clients 32 --keys 1000 --set-size 4 --hold-us 100 --poll-ms 1
stop_servers

start_servers
# 16 connections: keylockd holds at most max_leases_per_connection (65,536) leases per
# connection by default, so a million leases need at least 16.
run hold-many "One million held leases on distinct keys, 16 connections (fresh servers)" \
  -w hold-many --leases 1000000 --clients 16 --pipeline 64
stop_servers

start_servers
run connections "10,000 idle connections (fresh servers)" -w connections --connections 10000
stop_servers
elapsed=$(($(date +%s) - t0))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- The summary: the issue's targets, from the TSV lines of the runs above.
val() {  # val LABEL KIND METRIC
  awk -F'\t' -v l="$1" -v k="$2" -v m="$3" '$1 == l && $3 == k && $4 == m { print $5; exit }' "$tsv"
}
calc() {
  awk "BEGIN { v = $1; a = v < 0 ? -v : v
    if (a >= 100 || v == int(v)) printf \"%.0f\", v; else printf \"%.3g\", v }"
}
yes_no() { awk "BEGIN { print (($1) ? \"yes\" : \"**no**\") }"; }
# The most CPU other processes used during the runs with these labels (% of one core).
interference() {
  [ $# -gt 0 ] || return 0
  awk -F'\t' -v labels=" $* " '$4 == "other_cpu_pct" && index(labels, " " $1 " ") {
    if ($5 > m) m = $5 } END { printf "%.0f", m + 0 }' "$tsv"
}
row() {  # row GOAL MEASURED CONDITION LABELS (an empty CONDITION: a figure, not a target)
  local met="—"
  [ -z "$3" ] || met=$(yes_no "$3" 2>/dev/null || echo "?")
  echo "| $1 | $2 | $met | $(interference ${4:-}) |"
}
num() { local v; v=$(val "$@"); echo "${v:-0}"; }

uk=$(num uncontended-32 keylock ops_per_s); ur=$(num uncontended-32 redis ops_per_s)
fair=$(num contended-0-poll1 keylock fairness_min_over_max)
w99k=$(num contended-0-poll1 keylock p99_us); w99r=$(num contended-0-poll1 redis p99_us)
hk=$(num contended-0-poll1 keylock handoff_p50_us); rtt=$(num rtt-1 keylock p50_us)
g0k=$(num contended-0 keylock ops_per_s); g0r=$(num contended-0 redis ops_per_s)
gtk=$(num contended-think keylock ops_per_s); gtr=$(num contended-think redis ops_per_s)
ppk=$(num rtt-pipe keylock requests_per_s); upk=$(num uncontended-pipe keylock requests_per_s)
ok_=$(num overhead keylock added_p50_us); or_=$(num overhead redis added_p50_us)
mk=$(num hold-many keylock rss_mib); mr=$(num hold-many redis rss_mib)
ck=$(num connections keylock rss_mib)
rwk=$(num rw keylock ops_per_s); rwx=$(num rw keylock all_exclusive_grants_per_s)
rws=$(num rw keylock shared_grants_per_s); rwe=$(num rw keylock exclusive_grants_per_s)
rwsp=$(num rw keylock shared_wait_p99_us); rwep=$(num rw keylock exclusive_wait_p99_us)
rwxp=$(num rw keylock all_exclusive_wait_p99_us); rwm=$(num rw keylock shared_holders_mean)
mk_=$(num multi keylock:keys ops_per_s); mr_=$(num multi redis:one-at-a-time ops_per_s)
ms_=$(num multi keylock:one-at-a-time ops_per_s)
mrt=$(num multi keylock:keys round_trips_per_cycle)
msrt=$(num multi keylock:one-at-a-time round_trips_per_cycle)
mrrt=$(num multi redis:one-at-a-time round_trips_per_cycle)
mk99=$(num multi keylock:keys p99_us); mr99=$(num multi redis:one-at-a-time p99_us)
viol=$(awk -F'\t' '$4 == "violations" { s += $5 } END { print s + 0 }' "$tsv")
errs=$(awk -F'\t' '$4 == "errors" { s += $5 } END { print s + 0 }' "$tsv")

{
  echo "# keylock-bench results: keylockd vs Redis"
  echo
  echo "Written by \`bench/run-peers.sh\` — do not edit by hand; rerun it. Reproduce with:"
  echo
  echo '```'
  echo "make build && bench/run-peers.sh"
  echo '```'
  echo
  echo "## Setup"
  echo
  echo "- Date: $started (took ${elapsed} s)"
  echo "- Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) CPUs," \
    "$(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)," \
    "Linux $(uname -r)$(lscpu | sed -n 's/^Hypervisor vendor: */, hypervisor /p' | head -n 1)"
  echo "- Other work on the machine: ${busy} % of all CPUs busy just before the runs (load" \
    "average $load_before before, $load_after after, our own threads included). Each run" \
    "waits up to ${wait_each} s for the machine to be idle; anything else running skews the" \
    "numbers, and each table reports it as \"other processes CPU %\" (CPU time of the whole" \
    "machine minus the server's and the generator's, in % of one core). Runs beside more than" \
    "$max_interference % were repeated: $((${RETRIES:-6} - retries)) repeats this time."
  echo "- keylockd: $("$keylockd" --version | head -n 1), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet -- src include 2>/dev/null || echo ' (src/ or include/ modified)'), build dir $build_dir"
  echo "- Redis: $("$redis_bin" --version | head -n 1), no persistence (\`--save '' --appendonly no\`), \`--maxclients 20000\`"
  echo "- Redis lock: redis-py's algorithm through hiredis (SET key token NX PX ttl;" \
    "a waiting acquire retries after --poll-ms; release = EVALSHA of the compare-and-delete" \
    "script). See bench/README.md."
  echo "- **Placement: both servers pinned to CPU $server_cpu with \`taskset -c $server_cpu\`;" \
    "the load generator pinned to CPU $gen_cpu (\`--cpu $gen_cpu\`)**, one thread per client." \
    "Each table states it again."
  echo "- Each run: $run_seconds s per target, keylock first, then Redis; ops that complete" \
    "after the window are not counted. Latencies in µs on CLOCK_MONOTONIC."
  echo
  echo "## Targets of issue 4"
  echo
  echo "| target | measured (keylock vs redis) | met | other CPU % |"
  echo "|:--|:--|:--|--:|"
  row "uncontended cycles/s, 32 clients: keylock ≥ 2× Redis" \
    "$(calc "$uk") vs $(calc "$ur") = $(calc "$ur > 0 ? $uk / $ur : 0")×" "$uk >= 2 * $ur" uncontended-32
  row "one key, 32 clients: grants per client min/max ≥ 0.9" "$(calc "$fair")" "$fair >= 0.9" contended-0-poll1
  row "one key: acquire wait p99 ≤ 1/10 of Redis's at 1 ms polling" \
    "$(calc "$w99k") µs vs $(calc "$w99r") µs" "$w99k * 10 <= $w99r" contended-0-poll1
  row "one key: handoff p50 ≤ 1.5× ping round trip (1 client p50)" \
    "$(calc "$hk") µs vs $(calc "$rtt") µs" "$hk <= 1.5 * $rtt" "contended-0-poll1 rtt-1"
  row "one key, hold 0: grants/s ahead of Redis (100 ms poll)" \
    "$(calc "$g0k") vs $(calc "$g0r")" "$g0k > $g0r" contended-0
  row "one key, 1 ms think: grants/s ≥ 3× Redis (100 ms poll)" \
    "$(calc "$gtk") vs $(calc "$gtr") = $(calc "$gtr > 0 ? $gtk / $gtr : 0")×" "$gtk >= 3 * $gtr" contended-think
  row "pipelined ping, 4 × 64: ≥ 1 M requests/s" "$(calc "$ppk")" "$ppk >= 1000000" rtt-pipe
  row "pipelined acquire/release, 4 × 64: ≥ 1 M requests/s" "$(calc "$upk")" "$upk >= 1000000" uncontended-pipe
  row "with_lock cost p50 ≤ half of Redis's" "$(calc "$ok_") µs vs $(calc "$or_") µs" \
    "$ok_ * 2 <= $or_" overhead
  row "1 M held leases: RSS ≤ Redis's with 1 M keys" "$(calc "$mk") MiB vs $(calc "$mr") MiB" \
    "$mk > 0 && $mk <= $mr" hold-many
  row "10,000 idle connections: RSS < 100 MiB" "$(calc "$ck") MiB" "$ck > 0 && $ck < 100" connections
  row "mutual-exclusion violations, every run: 0" "$viol" "$viol == 0"
  row "errors, every run: 0" "$errs" "$errs == 0"
  echo
  echo "## Targets of issue 12"
  echo
  echo "Read-write locks (\`rw\`, keylock only) and several keys at once (\`multi\`). With FIFO"
  echo "queues and a share p of shared acquires, the readers between two writers go in together,"
  echo "so with holds much longer than a round trip the ideal gain of the mixed run over the same"
  echo "clients all exclusive is 1 / (2 (1 − p)): 5× at 90 % shared."
  echo
  echo "| target | measured | met | other CPU % |"
  echo "|:--|:--|:--|--:|"
  row "rw, 90 % shared, held 1 ms: grants/s above the same clients all exclusive (ideal 5×)" \
    "$(calc "$rwk") vs $(calc "$rwx") = $(calc "$rwx > 0 ? $rwk / $rwx : 0")× ($(calc "$rws") shared + $(calc "$rwe") exclusive grants/s; $(calc "$rwm") readers at once on average)" \
    "$rwk > $rwx" rw
  row "rw: acquire wait p99, shared / exclusive / all exclusive" \
    "$(calc "$rwsp") µs / $(calc "$rwep") µs / $(calc "$rwxp") µs" "" rw
  row "multi, 4 keys of 1,000: keylock \`keys\` cycles/s ≥ 3× Redis's (one key at a time, 1 ms poll)" \
    "$(calc "$mk_") vs $(calc "$mr_") = $(calc "$mr_ > 0 ? $mk_ / $mr_ : 0")× (keylock one key at a time: $(calc "$ms_"))" \
    "$mk_ >= 3 * $mr_" multi
  row "multi: keylock \`keys\` at most one round trip per cycle" \
    "$(calc "$mrt") (one at a time: keylock $(calc "$msrt"), Redis $(calc "$mrrt"))" \
    "$mrt > 0 && $mrt <= 1" multi
  row "multi: cycle p99, keylock \`keys\` vs Redis" "$(calc "$mk99") µs vs $(calc "$mr99") µs" \
    "$mk99 <= $mr99" multi
  echo
  echo "## Runs"
  echo
  echo "Each table: one row per target, then keylock/redis (for ops/s higher is better for"
  echo "keylock, for latencies lower is). The extras below it are specific to the workload."
  echo
  cat "$body"
  if [ -f "$here/PROFILE.md" ]; then
    echo
    cat "$here/PROFILE.md"
  fi
  # The Django overhead table comes from bench/django-overhead.sh (a separate, slower run).
  if [ -f "$here/DJANGO.md" ]; then
    echo
    cat "$here/DJANGO.md"
  fi
  # Cluster mode against etcd's own lock comes from bench/run-cluster-bench.sh (its own run).
  if [ -f "$here/CLUSTER.md" ]; then
    echo
    cat "$here/CLUSTER.md"
  fi
  # TLS against plain text and Redis over TLS comes from bench/tls.sh (its own run).
  if [ -f "$here/TLS.md" ]; then
    echo
    cat "$here/TLS.md"
  fi
} >"$results"

echo "run-peers: wrote $results in ${elapsed} s" >&2
