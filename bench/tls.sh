#!/usr/bin/env bash
# Issue 15's TLS figures: keylockd and redis-server, each over TLS and in plain text, side by
# side, and writes bench/TLS.md (run-peers.sh appends it to RESULTS.md).
#
#   make build            # or make test: builds build/release (this script builds nothing)
#   bench/tls.sh
#
# Makes a throwaway CA and a server certificate (EC P-256, for IP 127.0.0.1 and localhost) with
# the openssl command in a temporary directory (removed on exit: no key outlives the run), starts
# one keylockd (--listen and --listen-tls) and one redis-server (--port and --tls-port, no client
# certificates asked for) on free loopback ports, both pinned with taskset to SERVER_CPU
# (default 1), and runs keylock-bench pinned to GEN_CPU (default 0):
#
#   - uncontended acquire + release, 32 clients and 1 client: keylock vs redis, plain and TLS;
#   - handshakes (connect, TLS handshake, one ping, close), 8 clients: TLS and plain.
#
# Over TLS the client forces one TLS 1.3 suite on both servers (--tls-ciphersuites CIPHERSUITE,
# default TLS_AES_128_GCM_SHA256), and every table prints what was negotiated with each. Every
# process started here is stopped by PID on exit. About 2 minutes (waiting for an idle machine).
#
# Environment: BUILD_DIR (default build/release), RUN_SECONDS (5), SERVER_CPU (1), GEN_CPU (0),
# CIPHERSUITE (TLS_AES_128_GCM_SHA256), HANDSHAKE_CLIENTS (8), OUT (default bench/TLS.md;
# empty: print only), REDIS_SERVER (redis-server), WAIT_IDLE (60) and WAIT_EACH (10): seconds to
# wait for the machine to fall idle first and before each run; MAX_INTERFERENCE (20) and
# RETRIES (4): a run beside more than that much other work (% of a core) is repeated, at most
# RETRIES times in all.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tag=tls
# shellcheck source=lib.sh
. "$here/lib.sh"
root=$(cd "$here/.." && pwd)
cd "$root"

build_dir=${BUILD_DIR:-build/release}
run_seconds=${RUN_SECONDS:-5}
server_cpu=${SERVER_CPU:-1}
gen_cpu=${GEN_CPU:-0}
suite=${CIPHERSUITE:-TLS_AES_128_GCM_SHA256}
hs_clients=${HANDSHAKE_CLIENTS:-8}
out=${OUT-$here/TLS.md}
redis_bin=${REDIS_SERVER:-redis-server}
wait_idle=${WAIT_IDLE:-60}
wait_each=${WAIT_EACH:-10}
max_interference=${MAX_INTERFERENCE:-20}
retries=${RETRIES:-4}
retries_at_start=$retries

keylockd="$build_dir/src/keylockd"
bench="$build_dir/bench/keylock-bench"
for bin in "$keylockd" "$bench"; do
  if [ ! -x "$bin" ]; then
    echo "tls: $bin not found: run 'make build' (or set BUILD_DIR) first" >&2
    exit 1
  fi
done
for tool in "$redis_bin" taskset openssl; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "tls: $tool not found: run scripts/install-deps.sh" >&2
    exit 1
  }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/keylock-tls.XXXXXX")
kpid=""
rpid=""
cleanup() {
  for pid in $kpid $rpid; do kill "$pid" 2>/dev/null || true; done
  for pid in $kpid $rpid; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- A throwaway CA and a server certificate signed by it, in $work only.
make_test_certs "$work/pki"
ca=$work/pki/ca.pem
cert=$work/pki/server.pem
key=$work/pki/server.key


# --- keylockd: plain and TLS listeners on ephemeral ports, which its log names.
kargs=(--listen 127.0.0.1:0 --listen-tls 127.0.0.1:0 --tls-cert-file "$cert" --tls-key-file "$key")
if "$keylockd" --help 2>/dev/null | grep -q -- --metrics-listen; then
  kargs+=(--metrics-listen 127.0.0.1:0)
fi
# Created first: the sed below may run before the background shell opens it.
: >"$work/keylockd.log"
taskset -c "$server_cpu" "$keylockd" "${kargs[@]}" 2>"$work/keylockd.log" &
kpid=$!
kport="" ktport=""
for _ in $(seq 200); do
  kport=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$work/keylockd.log" | head -n 1)
  ktport=$(sed -n 's/.*TLS on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$work/keylockd.log" | head -n 1)
  [ -n "$kport" ] && [ -n "$ktport" ] && break
  kill -0 "$kpid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$kport" ] && [ -n "$ktport" ] ||
  { cat "$work/keylockd.log" >&2; echo "tls: keylockd did not start" >&2; exit 1; }

# --- redis-server: a plain port and a TLS port, no persistence, no client certificates.
rport="" rtport=""
for _ in 1 2 3; do
  p=$(free_port)
  tp=$(free_port)
  [ "$p" != "$tp" ] || continue
  : >"$work/redis.log"
  taskset -c "$server_cpu" "$redis_bin" --port "$p" --tls-port "$tp" --bind 127.0.0.1 \
    --tls-cert-file "$cert" --tls-key-file "$key" --tls-ca-cert-file "$ca" \
    --tls-auth-clients no --save '' --appendonly no --daemonize no --maxclients 20000 \
    --logfile "$work/redis.log" --dir "$work" >/dev/null 2>&1 &
  rpid=$!
  if redis_ready "$rpid" "$work/redis.log"; then
    rport=$p rtport=$tp
    break
  fi
  kill "$rpid" 2>/dev/null || true
  wait "$rpid" 2>/dev/null || true
  rpid=""
done
[ -n "$rport" ] || { cat "$work/redis.log" >&2; echo "tls: redis-server did not start" >&2; exit 1; }
echo "tls: keylockd pid $kpid on 127.0.0.1:$kport (TLS :$ktport), redis-server pid $rpid on" \
  "127.0.0.1:$rport (TLS :$rtport), both on CPU $server_cpu" >&2



busy=$(wait_for_idle "$wait_idle")
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$(date +%s)

tsv="$work/metrics.tsv"
body="$work/body.md"
: >"$tsv"
: >"$body"
declare -A commands

plain=(--target "keylock://127.0.0.1:$kport" --target "redis://127.0.0.1:$rport"
  --server-pid "$kpid" --server-pid "$rpid")
tls=(--target "keylocks://127.0.0.1:$ktport" --target "rediss://127.0.0.1:$rtport"
  --server-pid "$kpid" --server-pid "$rpid" --tls-ca "$ca" --tls-ciphersuites "$suite")

# run LABEL TITLE ARGS...: one keylock-bench invocation (both targets), its tables into the body.
# A run beside more than MAX_INTERFERENCE % of a core of other work is repeated after waiting
# for the machine to fall idle, while the RETRIES budget lasts.
run() {
  local label=$1 title=$2
  shift 2
  local run_tsv="$work/$label.tsv" attempt=1 rc other
  local cmd=("$bench" --compare --cpu "$gen_cpu" --seconds "$run_seconds" --markdown
    --tsv "$run_tsv" --label "$label" "$@")
  # The command as printed: the throwaway CA stands as CA.pem, the temporary directory as WORK.
  commands[$label]=$(sed -e "s|$ca|CA.pem|g" -e "s|$work/|WORK/|g" <<<"${cmd[*]}")
  while :; do
    wait_for_idle "$wait_each" >/dev/null
    echo "tls: $label: ${commands[$label]}" >&2
    : >"$run_tsv"
    rc=0
    "${cmd[@]}" >"$work/$label.md" || rc=$?
    other=$(awk -F'\t' '$4 == "other_cpu_pct" && $5 > m { m = $5 } END { printf "%d", m + 0 }' \
      "$run_tsv")
    if [ "$other" -le "$max_interference" ] || [ "$retries" -le 0 ]; then break; fi
    retries=$((retries - 1))
    attempt=$((attempt + 1))
    echo "tls: $label: other processes used ${other} % of a core; repeating" >&2
  done
  cat "$run_tsv" >>"$tsv"
  {
    echo "### $title"
    echo
    echo '```'
    echo "${commands[$label]}"
    echo '```'
    echo
    sed -e "s|$ca|CA.pem|g" -e "s|$work/|WORK/|g" "$work/$label.md"
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

run uc32-plain "Uncontended acquire + release, 32 clients, plain" \
  "${plain[@]}" -w uncontended --clients 32
run uc32-tls "Uncontended acquire + release, 32 clients, TLS" \
  "${tls[@]}" -w uncontended --clients 32
run uc1-plain "Uncontended acquire + release, 1 client, plain" \
  "${plain[@]}" -w uncontended --clients 1
run uc1-tls "Uncontended acquire + release, 1 client, TLS" \
  "${tls[@]}" -w uncontended --clients 1
run hs-tls "Handshakes: connect, TLS handshake, ping, close; $hs_clients clients" \
  "${tls[@]}" -w handshakes --clients "$hs_clients"
run hs-plain "Connections without TLS: connect, ping, close; $hs_clients clients (reference)" \
  "${plain[@]}" -w handshakes --clients "$hs_clients"
elapsed=$(($(date +%s) - t0))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- The summary, from the TSV lines of the runs above.
val() {  # val LABEL KIND METRIC
  awk -F'\t' -v l="$1" -v k="$2" -v m="$3" '$1 == l && $3 == k && $4 == m { print $5; exit }' "$tsv"
}
num() { local v; v=$(val "$@"); echo "${v:-0}"; }
calc() {
  awk "BEGIN { v = $1; a = v < 0 ? -v : v
    if (a >= 100 || v == int(v)) printf \"%.0f\", v; else printf \"%.3g\", v }"
}
ratio() { calc "$2 > 0 ? $1 / $2 : 0"; }
other() {  # the most CPU other processes used during a run (% of one core, cut as run() cuts it)
  awk -F'\t' -v l="$1" '$1 == l && $4 == "other_cpu_pct" { if ($5 > m) m = $5 }
    END { printf "%d", m + 0 }' "$tsv"
}
# What each TLS target negotiated, from the tables' "tls (...)" lines.
negotiated() {  # negotiated LABEL KIND
  sed -n "s/^- tls ($2): //p" "$work/$1.md" | head -n 1
}

uk=$(num uc32-plain keylock ops_per_s) ur=$(num uc32-plain redis ops_per_s)
tk=$(num uc32-tls keylocks ops_per_s) tr=$(num uc32-tls rediss ops_per_s)
uk1=$(num uc1-plain keylock ops_per_s) ur1=$(num uc1-plain redis ops_per_s)
tk1=$(num uc1-tls keylocks ops_per_s) tr1=$(num uc1-tls rediss ops_per_s)
hk=$(num hs-tls keylocks ops_per_s) hr=$(num hs-tls rediss ops_per_s)
pk=$(num hs-plain keylock ops_per_s) pr=$(num hs-plain redis ops_per_s)
hkc=$(num hs-tls keylocks server_cpu_us_per_connection) hrc=$(num hs-tls rediss server_cpu_us_per_connection)
pkc=$(num hs-plain keylock server_cpu_us_per_connection) prc=$(num hs-plain redis server_cpu_us_per_connection)
hkg=$(num hs-tls keylocks generator_cpu_pct) hrg=$(num hs-tls rediss generator_cpu_pct)
hk50=$(num hs-tls keylocks p50_us) hr50=$(num hs-tls rediss p50_us)
hk99=$(num hs-tls keylocks p99_us) hr99=$(num hs-tls rediss p99_us)
nk=$(negotiated uc32-tls keylocks) nr=$(negotiated uc32-tls rediss)
met=$(awk "BEGIN { print ($tk >= 1.5 * $tr && $tr > 0) ? \"yes\" : \"**no**\" }")
errs=$(awk -F'\t' '$4 == "errors" { s += $5 } END { print s + 0 }' "$tsv")
viol=$(awk -F'\t' '$4 == "violations" { s += $5 } END { print s + 0 }' "$tsv")

report() {
  echo "# TLS: keylockd and Redis over TLS, and against plain text (issue 15)"
  echo
  echo "Written by \`bench/tls.sh\` — do not edit by hand; rerun it."
  echo
  echo "- Date: $started (took ${elapsed} s); $(nproc) CPUs. Other work: ${busy} % of all CPUs" \
    "busy just before the runs (load average $load_before before, $load_after after); each" \
    "table reports \"other processes CPU %\", and runs beside more than $max_interference %" \
    "were repeated: $((retries_at_start - retries)) repeats this time."
  echo "- **Placement: keylockd and redis-server pinned to CPU $server_cpu (\`taskset -c" \
    "$server_cpu\`), keylock-bench to CPU $gen_cpu (\`--cpu $gen_cpu\`); all figures from the" \
    "same run, the same two server processes.**"
  echo "- TLS: server certificate EC P-256 from a throwaway CA, verified by the client (no client" \
    "certificates). Cipher forced by the client on both: \`--tls-ciphersuites $suite\`." \
    "Negotiated: keylockd **$nk**, Redis **$nr**. Every handshake is a full one (no session" \
    "resumption)."
  echo "- keylockd: $("$keylockd" --version | head -n 1), git $(git rev-parse --short HEAD 2>/dev/null || echo '?');" \
    "Redis: $("$redis_bin" --version | head -n 1 | cut -d' ' -f1-3); $run_seconds s per target."
  echo
  echo "| figure | keylock | redis | keylock/redis | run | other CPU % |"
  echo "|:--|--:|--:|--:|:--|--:|"
  echo "| uncontended cycles/s, 32 clients, plain | $(calc "$uk") | $(calc "$ur") | $(ratio "$uk" "$ur")× | uc32-plain | $(other uc32-plain) |"
  echo "| uncontended cycles/s, 32 clients, TLS | $(calc "$tk") | $(calc "$tr") | $(ratio "$tk" "$tr")× | uc32-tls | $(other uc32-tls) |"
  echo "| TLS / plain, 32 clients | $(ratio "$tk" "$uk")× | $(ratio "$tr" "$ur")× | | | |"
  echo "| uncontended cycles/s, 1 client, plain | $(calc "$uk1") | $(calc "$ur1") | $(ratio "$uk1" "$ur1")× | uc1-plain | $(other uc1-plain) |"
  echo "| uncontended cycles/s, 1 client, TLS | $(calc "$tk1") | $(calc "$tr1") | $(ratio "$tk1" "$tr1")× | uc1-tls | $(other uc1-tls) |"
  echo "| TLS / plain, 1 client | $(ratio "$tk1" "$uk1")× | $(ratio "$tr1" "$ur1")× | | | |"
  echo "| handshakes/s (connect, TLS handshake, ping, close), $hs_clients clients | $(calc "$hk") | $(calc "$hr") | $(ratio "$hk" "$hr")× | hs-tls | $(other hs-tls) |"
  echo "| handshake p50 / p99 µs | $(calc "$hk50") / $(calc "$hk99") | $(calc "$hr50") / $(calc "$hr99") | | hs-tls | |"
  echo "| server CPU µs per TLS connection (lower is better) | $(calc "$hkc") | $(calc "$hrc") | $(ratio "$hkc" "$hrc")× | hs-tls | |"
  echo "| load generator CPU % during handshakes | $(calc "$hkg") | $(calc "$hrg") | | hs-tls | |"
  echo "| connections/s without TLS (connect, ping, close), $hs_clients clients | $(calc "$pk") | $(calc "$pr") | $(ratio "$pk" "$pr")× | hs-plain | $(other hs-plain) |"
  echo "| server CPU µs per connection without TLS | $(calc "$pkc") | $(calc "$prc") | $(ratio "$pkc" "$prc")× | hs-plain | |"
  echo "| TLS / plain, connections/s | $(ratio "$hk" "$pk")× | $(ratio "$hr" "$pr")× | | | |"
  echo
  echo "A handshake costs the client about what it costs the server: when the load generator is" \
    "near 100 % of its core during handshakes, its core set the rate, and the server CPU per" \
    "connection is the figure that compares the servers."
  echo
  echo "Target of issue 15: keylockd over TLS ≥ 1.5× Redis over TLS, uncontended (32 clients):" \
    "$(calc "$tk") vs $(calc "$tr") = $(ratio "$tk" "$tr")× — met: $met. Errors in every run:" \
    "$errs; mutual-exclusion violations: $viol."
  echo
  local noisy="" label
  for label in uc32-plain uc32-tls uc1-plain uc1-tls hs-tls hs-plain; do
    [ "$(other "$label")" -le "$max_interference" ] || noisy+=" $label"
  done
  if [ -n "$noisy" ]; then
    echo "**The machine was not quiet for every run: other processes used more than" \
      "$max_interference % of a core during${noisy} (repeats used up), so those figures are" \
      "skewed; see \"other CPU %\".**"
    echo
  fi
  echo "Commands (CA.pem: the throwaway CA; WORK: the run's temporary directory; ports as in this run):"
  echo
  for label in uc32-plain uc32-tls uc1-plain uc1-tls hs-tls hs-plain; do
    echo "- $label: \`${commands[$label]}\`"
  done
  echo
  echo "## Runs"
  echo
  cat "$body"
}

if [ -n "$out" ]; then
  report >"$out"
  cat "$out"
  echo "tls: wrote $out in ${elapsed} s" >&2
else
  report
fi
