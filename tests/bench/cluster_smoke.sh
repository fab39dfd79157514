#!/usr/bin/env bash
# Smoke test of keylock-bench's cluster targets: one etcd member and two keylockd in cluster
# mode on free loopback ports; runs `contended` and `overhead` against etcd's own lock
# (etcd://) and against the two daemons as one target (keylock://A,B) for a fraction of a
# second, and checks that every row ran without errors or mutual-exclusion violations and that
# the cluster row reports fairness across daemons and cross-host handoffs. Stops everything it
# started, by PID. Never asserts speed.
#
# usage: cluster_smoke.sh KEYLOCKD KEYLOCK_BENCH
set -euo pipefail
keylockd=$1
bench=$2
command -v etcd >/dev/null || { echo "cluster_smoke: no etcd (scripts/install-deps.sh)" >&2; exit 1; }

base=/dev/shm
[[ -d $base && -w $base ]] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/keylock-bench-cluster.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "cluster_smoke: FAIL: $*" >&2
  for f in "$work"/*.log "$work"/*.err; do [[ -f $f ]] && { echo "== $f" >&2; tail -20 "$f" >&2; }; done
  exit 1
}
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cport=$(free_port)
pport=$(free_port)
etcd --name s --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cport" \
  --advertise-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "s=http://127.0.0.1:$pport" --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)

ports=()
for name in a b; do
  port=$(free_port)
  mport=$(free_port)
  "$keylockd" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    --etcd-endpoints "http://127.0.0.1:$cport" --node-name "$name" --etcd-lease-ttl-ms 3000 \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
  ports+=("$port")
  ready=""
  for _ in $(seq 300); do
    if /usr/bin/python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$mport/readyz', timeout=1).status == 200 else 1)" 2>/dev/null; then
      ready=1
      break
    fi
    sleep 0.1
  done
  [[ -n $ready ]] || fail "keylockd $name not ready"
done

"$bench" -t "etcd://127.0.0.1:$cport" -t "keylock://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}" \
  -w contended,overhead -c 4 -s 0.3 -q --json >"$work/out.json" 2>"$work/out.err" ||
  fail "keylock-bench failed"

/usr/bin/python3 - "$work/out.json" <<'PY' || fail "bad results"
import json, sys
doc = json.load(open(sys.argv[1]))
rows = doc["results"]
assert len(rows) == 4, "expected 4 rows, got %d" % len(rows)
for r in rows:
    where = "%s %s" % (r["workload"], r["target"])
    assert r["errors"] == 0, where + ": errors: " + str(r.get("first_error"))
    assert r["violations"] == 0, where + ": violations"
    assert r["ops"] > 0, where + ": no ops"
cluster = [r for r in rows if r["workload"] == "contended" and r["target"].startswith("keylock://")][0]
extras = cluster["extras"]
for key in ("fairness_servers_jain", "handoff_cross_p50_us", "fairness_clients_jain"):
    assert key in extras, "contended on the cluster: no " + key
PY
echo "cluster_smoke: ok"
