# Shell helpers of the tests that run keylockd from a script (tests/consumer/run.sh,
# tests/package/deb.sh): source it. Each test stops what it starts: call stop_keylockd from its
# EXIT trap.

# start_keylockd LOG COMMAND...: starts COMMAND (a keylockd with --listen 127.0.0.1:0), its
# stderr to LOG; sets $keylockd_pid, and $keylockd_port once it listens (within 10 s). Returns 1,
# with the log on stderr, if it does not.
start_keylockd() {
  local log=$1
  shift
  "$@" 2> "$log" &
  keylockd_pid=$!
  keylockd_port=
  for _ in $(seq 100); do
    keylockd_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$keylockd_port" ] && return 0
    sleep 0.1
  done
  cat "$log" >&2
  return 1
}

stop_keylockd() {
  if [ -n "${keylockd_pid:-}" ]; then
    kill "$keylockd_pid" 2>/dev/null || true
    wait "$keylockd_pid" 2>/dev/null || true
    keylockd_pid=
  fi
}
