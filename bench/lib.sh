# Shell helpers shared by bench/run-peers.sh, bench/tls.sh, bench/tls_smoke.sh and
# tests/bench/smoke.sh: source it.
# Messages go to stderr, prefixed with $tag (set it before sourcing; default "bench").
tag=${tag:-bench}

# A loopback port nobody listens on right now (a connect to it is refused).
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# 0 once the redis-server of pid $1 logs to $2 that it accepts connections (within 10 s);
# 1 if it exits or never does.
redis_ready() {
  local pid=$1 log=$2
  for _ in $(seq 200); do
    grep -q "Ready to accept connections" "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# Percent of all CPUs busy over the next second.
cpu_busy_pct() {
  local u1 n1 s1 i1 w1 q1 sq1 st1 u2 n2 s2 i2 w2 q2 sq2 st2
  read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ </proc/stat
  sleep 1
  read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ </proc/stat
  local busy=$(((u2 + n2 + s2 + q2 + sq2 + st2) - (u1 + n1 + s1 + q1 + sq1 + st1)))
  local idle=$(((i2 + w2) - (i1 + w1)))
  echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}

# Waits up to $1 seconds for the machine to be under 10 % busy (our idle servers use ~0);
# prints the last reading.
wait_for_idle() {
  local cap=$1 waited=0 b
  b=$(cpu_busy_pct)
  while [ "$b" -gt 10 ] && [ "$waited" -lt "$cap" ]; do
    [ "$waited" -eq 0 ] && echo "$tag: machine ${b} % busy; waiting up to ${cap} s for it to fall idle" >&2
    sleep 1
    waited=$((waited + 2))
    b=$(cpu_busy_pct)
  done
  [ "$b" -gt 10 ] && echo "$tag: machine still ${b} % busy; running anyway (see 'other processes CPU %')" >&2
  echo "$b"
}

# A throwaway CA and a server certificate for 127.0.0.1 and localhost signed by it, made by the
# openssl command in directory $1 (ca.pem, ca.key, server.pem, server.key). Keys live only
# there: the caller removes the directory.
make_test_certs() {
  local d=$1
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=keylock $tag throwaway CA" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" >"$d/ext.cnf"
  openssl x509 -req -days 2 -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
    -CAcreateserial -extfile "$d/ext.cnf" -out "$d/server.pem" 2>/dev/null
}
