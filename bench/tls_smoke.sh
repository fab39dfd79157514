#!/usr/bin/env bash
# Smoke test of keylock-bench's TLS targets (ctest bench_tls_smoke): makes a throwaway CA and
# server certificate, starts a keylockd with a TLS listener (and, when installed, a redis-server
# with a TLS port) on loopback, runs uncontended and handshakes over TLS for a fraction of a
# second, and checks that each row did something (a non-zero rate, no errors) and names the
# negotiated protocol and cipher. Stops everything it started. Never asserts speed.
#
# usage: tls_smoke.sh KEYLOCKD KEYLOCK_BENCH
set -euo pipefail

keylockd=$1
bench=$2
tag=tls_smoke
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/keylock-tls-smoke.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "tls_smoke: FAIL: $*" >&2
  exit 1
}

command -v openssl >/dev/null 2>&1 || fail "the openssl command is needed to make certificates"
make_test_certs "$work"


kargs=(--listen 127.0.0.1:0 --listen-tls 127.0.0.1:0 --tls-cert-file "$work/server.pem"
  --tls-key-file "$work/server.key" --log-level info)
if "$keylockd" --help 2>/dev/null | grep -q -- --metrics-listen; then
  kargs+=(--metrics-listen 127.0.0.1:0)
fi
# Created first: the sed below may run before the background shell opens it.
: >"$work/keylockd.log"
"$keylockd" "${kargs[@]}" 2>"$work/keylockd.log" &
kpid=$!
pids+=("$kpid")
ktport=""
for _ in $(seq 200); do
  ktport=$(sed -n 's/.*TLS on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$work/keylockd.log" | head -n 1)
  [ -n "$ktport" ] && break
  kill -0 "$kpid" 2>/dev/null || { cat "$work/keylockd.log" >&2; fail "keylockd exited"; }
  sleep 0.05
done
[ -n "$ktport" ] || fail "keylockd did not log its TLS port"
targets=(--target "keylocks://127.0.0.1:$ktport")
kinds=(keylocks)

# redis-server with TLS, when installed.
if command -v redis-server >/dev/null 2>&1; then
  for _ in 1 2 3; do
    p=$(free_port) || fail "no free port for redis-server"
    : >"$work/redis.log"
    redis-server --port 0 --tls-port "$p" --bind 127.0.0.1 --tls-cert-file "$work/server.pem" \
      --tls-key-file "$work/server.key" --tls-ca-cert-file "$work/ca.pem" \
      --tls-auth-clients no --save '' --appendonly no --daemonize no \
      --logfile "$work/redis.log" --dir "$work" >/dev/null 2>&1 &
    rpid=$!
    pids+=("$rpid")
    if redis_ready "$rpid" "$work/redis.log"; then
      targets+=(--target "rediss://127.0.0.1:$p")
      kinds+=(rediss)
      break
    fi
  done
  # A redis-server built without TLS does not start: keylock is tested alone then.
  [ ${#kinds[@]} -gt 1 ] || echo "tls_smoke: redis-server did not start with TLS; keylock only" >&2
fi

tsv="$work/out.tsv"
"$bench" "${targets[@]}" --tls-ca "$work/ca.pem" -w uncontended,handshakes --clients 2 \
  --seconds 0.3 -q --tsv "$tsv" --label smoke >"$work/out.txt" 2>"$work/err.txt" ||
  { cat "$work/out.txt" "$work/err.txt" >&2; fail "keylock-bench exited non-zero"; }

for kind in "${kinds[@]}"; do
  for w in uncontended handshakes; do
    rate=$(awk -F'\t' -v w="$w" -v k="$kind" '$2 == w && $3 == k && $4 == "ops_per_s" { print $5 }' "$tsv")
    errors=$(awk -F'\t' -v w="$w" -v k="$kind" '$2 == w && $3 == k && $4 == "errors" { print $5 }' "$tsv")
    awk "BEGIN { exit !(${rate:-0} > 0) }" || { cat "$work/out.txt" >&2; fail "$w on $kind: no ops"; }
    [ "${errors:-1}" = 0 ] || { cat "$work/out.txt" >&2; fail "$w on $kind: $errors errors"; }
  done
  grep -q "^tls ($kind): TLSv1\.[23], " "$work/out.txt" ||
    { cat "$work/out.txt" >&2; fail "$kind: no negotiated protocol and cipher printed"; }
done

# A server whose certificate the given CA did not sign is refused, not measured.
if "$bench" --target "keylocks://127.0.0.1:$ktport" --tls-ca "$work/server.pem" -w rtt \
  --seconds 0.1 -q >"$work/bad.txt" 2>&1; then
  fail "a server not signed by --tls-ca was accepted"
fi
grep -q "certificate" "$work/bad.txt" || { cat "$work/bad.txt" >&2; fail "no certificate error"; }

echo "tls_smoke: ok (${kinds[*]})"
