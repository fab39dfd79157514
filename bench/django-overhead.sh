#!/usr/bin/env bash
# The cost of a lock decorator on a Django view, served by uWSGI and loaded by wrk:
#   none     a trivial view with no lock
#   keylock  the same view under keylock.django's lock_decorator, one shared key
#   redis    the same view under the classic django-redis cache.lock decorator, one shared key
#   keylock-own, redis-own   the same two decorators with a key of its own per request
#            (uncontended: the seed's common case), and the latency each adds over no lock
#   floor-own  the floor of any keylockd client: a key per request, one round trip and a
#            noreply release over the thread's own connection, nothing else (not a lock to use)
# (examples/django_site: /bench/none, /bench/keylock, /bench/redis, /bench/*-own.)
#
# Starts and stops its own keylockd and redis-server (both pinned to CPU 1) and uWSGI
# (4 processes x 4 threads, unpinned); wrk runs pinned to CPU 0 with the same threads,
# connections and duration for every view; then none, keylock-own, floor-own and redis-own again
# with one connection (wrk -t 1 -c 1): the latency a lock adds to a request that does not queue
# for a CPU. Writes the tables, the exact commands, the date and the machine to bench/DJANGO.md
# (OUT=... to change) and prints it.
#
# Environment: KEYLOCKD (default build/release/src/keylockd, built if missing), ROUNDS (3: each
# runs every view once; the report gives medians), DURATION (10 s), WARMUP (2 s),
# WRK_THREADS (4), WRK_CONNECTIONS (16), UWSGI_PROCESSES (4), UWSGI_THREADS (4).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SITE=$REPO/examples/django_site
OUT=${OUT:-$REPO/bench/DJANGO.md}
PY=/usr/bin/python3  # Debian's: it has python3-django, python3-django-redis, python3-redis
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
WRK_THREADS=${WRK_THREADS:-4}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-16}
UWSGI_PROCESSES=${UWSGI_PROCESSES:-4}
UWSGI_THREADS=${UWSGI_THREADS:-4}

die() { echo "django-overhead: $*" >&2; exit 1; }
for tool in wrk uwsgi redis-server taskset; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh as root"
done
$PY -c 'import django, django_redis, redis' 2>/dev/null ||
  die "python3-django, python3-django-redis or python3-redis is missing: run scripts/install-deps.sh"

KEYLOCKD=${KEYLOCKD:-$REPO/build/release/src/keylockd}
if [ ! -x "$KEYLOCKD" ]; then
  echo "django-overhead: building keylockd (release preset)" >&2
  (cd "$REPO" && cmake --preset release >/dev/null && cmake --build --preset release --target keylockd -j "$(nproc)" >/dev/null)
fi
[ -x "$KEYLOCKD" ] || die "no keylockd at $KEYLOCKD"

TMP=$(mktemp -d /tmp/keylock-django-bench.XXXXXX)
KEYLOCKD_PID= REDIS_PID= UWSGI_PID=
stop() {  # pid: TERM, wait up to 10 s, then KILL
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  if [ -n "$UWSGI_PID" ]; then
    stop "$UWSGI_PID"
    kill -KILL -- "-$UWSGI_PID" 2>/dev/null || true  # its own session: any worker left
  fi
  stop "$REDIS_PID"
  stop "$KEYLOCKD_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_until() {  # description, command...: poll for up to 30 s
  local what=$1 i; shift
  for i in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out waiting for $what"
}

# --- servers ---------------------------------------------------------------------------------
KEYLOCKD_CMD=(taskset -c 1 "$KEYLOCKD" --listen 127.0.0.1:0 --metrics-listen '')
"${KEYLOCKD_CMD[@]}" 2>"$TMP/keylockd.log" &
KEYLOCKD_PID=$!
wait_until "keylockd" grep -q "listening on 127.0.0.1:" "$TMP/keylockd.log"
KEYLOCK_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/keylockd.log" | head -1)

REDIS_PORT=$(free_port)
REDIS_CMD=(taskset -c 1 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no)
"${REDIS_CMD[@]}" >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!
wait_until "redis-server" grep -q "Ready to accept connections" "$TMP/redis.log"

export KEYLOCK_SERVER=127.0.0.1:$KEYLOCK_PORT
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export KEYLOCK_SITE_DB=$TMP/site.sqlite3
export DJANGO_SETTINGS_MODULE=keylock_site.settings
export PYTHONDONTWRITEBYTECODE=1
$PY "$SITE/manage.py" migrate --noinput >"$TMP/migrate.log" 2>&1 || { cat "$TMP/migrate.log" >&2; die "migrate failed"; }

HTTP_PORT=$(free_port)
UWSGI_CMD=(uwsgi --plugins python3 --http11-socket "127.0.0.1:$HTTP_PORT" --chdir "$SITE"
  --module keylock_site.wsgi:application --master --processes "$UWSGI_PROCESSES"
  --threads "$UWSGI_THREADS" --enable-threads --need-app --die-on-term --disable-logging
  --listen 128)
setsid "${UWSGI_CMD[@]}" >"$TMP/uwsgi.log" 2>&1 &
UWSGI_PID=$!
wait_until "uWSGI" curl -sf "http://127.0.0.1:$HTTP_PORT/bench/none"
for variant in keylock redis keylock-own floor-own redis-own; do  # each worker connects on first use
  curl -sf "http://127.0.0.1:$HTTP_PORT/bench/$variant" >/dev/null || die "/bench/$variant fails: $(tail -20 "$TMP/uwsgi.log")"
done

# --- runs ------------------------------------------------------------------------------------
cpu_busy() {  # % of all CPUs busy over half a second (our idle servers included)
  local a b
  a=$(awk '/^cpu / {print $2+$3+$4+$6+$7+$8, $5}' /proc/stat); sleep 0.5
  b=$(awk '/^cpu / {print $2+$3+$4+$6+$7+$8, $5}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%.0f", (busy + idle) ? 100 * busy / (busy + idle) : 0 }'
}
wait_idle() {  # up to IDLE_WAIT s (30) for the machine to be below 25 % busy; prints the last %
  local i busy
  for i in $(seq $((${IDLE_WAIT:-30} * 2))); do
    busy=$(cpu_busy)
    [ "$busy" -lt 25 ] && break
  done
  echo "$busy"
}
us() {  # wrk's "812.00us", "1.23ms", "2.01s" -> microseconds
  awk -v t="$1" 'BEGIN { n = t + 0; if (t ~ /us$/) m = 1; else if (t ~ /ms$/) m = 1000;
    else if (t ~ /s$/) m = 1000000; else m = 1; printf "%.0f", n * m }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# Per run, keyed "name round": requests/s, p50 and p99 (µs), requests, errors, busy before.
declare -A RPS P50 P99 REQS ERRS NON2XX BUSY
WRK_BASE=(taskset -c 0 wrk -t "$WRK_THREADS" -c "$WRK_CONNECTIONS" --latency --timeout 30s)
WRK_ONE=(taskset -c 0 wrk -t 1 -c 1 --latency --timeout 30s)
run_view() {  # name (the results' key), view, round, wrk command...
  local name=$1 variant=$2 round=$3 url out; shift 3
  url="http://127.0.0.1:$HTTP_PORT/bench/$variant"
  out=$TMP/wrk-$name.txt  # the last round's is kept for the report
  BUSY[$name $round]=$(wait_idle)
  "$@" -d "${WARMUP}s" "$url" >/dev/null
  "$@" -d "${DURATION}s" "$url" >"$out"
  RPS[$name $round]=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  P50[$name $round]=$(us "$(awk '/Latency Distribution/ {d=1} d && $1=="50%" {print $2; exit}' "$out")")
  P99[$name $round]=$(us "$(awk '/Latency Distribution/ {d=1} d && $1=="99%" {print $2; exit}' "$out")")
  REQS[$name $round]=$(awk '/requests in/ {print $1; exit}' "$out")
  ERRS[$name $round]=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10; exit}' "$out")
  NON2XX[$name $round]=$(awk '/Non-2xx/ {print $NF; exit}' "$out")
  echo "django-overhead: round $round: $name: ${RPS[$name $round]} requests/s, p50 ${P50[$name $round]} µs, p99 ${P99[$name $round]} µs" >&2
}
VARIANTS=(none keylock redis keylock-own floor-own redis-own)
# The same uncontended views, one request at a time: the latency a lock adds to a request
# when no request queues for a CPU behind another.
ONE_VARIANTS=(none keylock-own floor-own redis-own)
# Rounds, each running every view once, so that a slow spell of the machine lands on all
# views alike; the report gives medians over rounds.
for round in $(seq "$ROUNDS"); do
  for variant in "${VARIANTS[@]}"; do
    run_view "$variant" "$variant" "$round" "${WRK_BASE[@]}"
  done
  for variant in "${ONE_VARIANTS[@]}"; do
    run_view "one-$variant" "$variant" "$round" "${WRK_ONE[@]}"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------------------
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f %%", 100 * a / b }'; }
over_rounds() {  # how (median, sum, max), array name, result name: that over the rounds
  local how=$1 name=$3 r vals=()
  local -n arr=$2
  for r in $(seq "$ROUNDS"); do vals+=("${arr[$name $r]:-0}"); done
  case $how in
    median) median "${vals[@]}" ;;
    sum) printf '%s\n' "${vals[@]}" | awk '{s += $1} END {print s}' ;;
    max) printf '%s\n' "${vals[@]}" | sort -g | tail -1 ;;
  esac
}
# The p50 a view adds over no lock, per round (µs), for result names view and none.
added_per_round() {
  local view=$1 none=$2 r out=()
  for r in $(seq "$ROUNDS"); do out+=($(( ${P50[$view $r]} - ${P50[$none $r]} ))); done
  echo "${out[@]}"
}
row() {  # label, result name, with "vs no lock" (1) or not (0)
  local label=$1 name=$2 rps vs=
  rps=$(over_rounds median RPS "$name")
  [ "$3" = 1 ] && vs=" $(pct "$rps" "$(over_rounds median RPS none)") |"
  echo "| $label | $rps |$vs $(over_rounds median P50 "$name") µs | $(over_rounds median P99 "$name") µs | $(over_rounds sum REQS "$name") | $(over_rounds sum ERRS "$name") | $(over_rounds sum NON2XX "$name") | $(over_rounds max BUSY "$name") % |"
}
ratios() {  # per round: a's added p50 over b's, "0.61 0.58 0.66"
  local a b i out=()
  read -r -a a <<<"$1"
  read -r -a b <<<"$2"
  for i in "${!a[@]}"; do out+=("$(awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN { printf "%.2f", (y > 0) ? x / y : 0 }')"); done
  echo "${out[@]}"
}
added_line() {  # keylock view, floor view, redis view, none: medians and every round's values
  local k f r kr fr
  k=$(added_per_round "$1" "$4"); f=$(added_per_round "$2" "$4"); r=$(added_per_round "$3" "$4")
  kr=$(ratios "$k" "$r"); fr=$(ratios "$f" "$r")
  # shellcheck disable=SC2086
  echo "keylock $(median $k) µs, the floor $(median $f) µs, django-redis $(median $r) µs (median"
  echo "of $ROUNDS rounds; per round: keylock ${k// / / } µs, the floor ${f// / / } µs, django-redis"
  echo "${r// / / } µs). Over django-redis's, per round: keylock ${kr// / / }×, the floor"
  # shellcheck disable=SC2086
  echo "${fr// / / }× (medians $(median $kr)× and $(median $fr)×)."
}
CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
DJANGO_V=$($PY -c 'import django; print(django.get_version())')
DJREDIS_V=$($PY -c 'import django_redis; print(".".join(map(str, django_redis.VERSION)))')
REDISPY_V=$($PY -c 'import redis; print(redis.__version__)')

{
  echo "# Django overhead of the lock decorator: no lock vs keylock vs django-redis"
  echo
  echo "Written by \`bench/django-overhead.sh\` — rerun it rather than editing by hand."
  echo
  echo "The view is trivial (it returns \"ok\"), so what is measured is what a lock on one key"
  echo "shared by every request costs: acquire and release around each request, all"
  echo "$((UWSGI_PROCESSES * UWSGI_THREADS)) uWSGI worker threads contending for the same key. keylock's"
  echo "decorator waits in the daemon's FIFO queue and is pushed the grant; django-redis's"
  echo "\`cache.lock\` (redis-py's Lock) retries \`SET NX\` every 0.1 s while the key is taken."
  echo
  echo "$ROUNDS rounds, each running every view once (in the order of the tables): requests/s and"
  echo "latencies are medians over the rounds, requests and errors their sums, \"CPUs busy before\""
  echo "the highest."
  echo
  echo "| view | requests/s | vs no lock | latency p50 | latency p99 | requests | socket errors | non-2xx | CPUs busy before |"
  echo "|:--|--:|--:|--:|--:|--:|--:|--:|--:|"
  for variant in "${VARIANTS[@]}"; do
    case $variant in
      none) label="no lock (\`/bench/none\`)" ;;
      keylock) label="keylock \`lock_decorator\`, one key (\`/bench/keylock\`)" ;;
      redis) label="django-redis \`cache.lock\`, one key (\`/bench/redis\`)" ;;
      keylock-own) label="keylock \`lock_decorator\`, a key per request (\`/bench/keylock-own\`)" ;;
      floor-own) label="the floor: one round trip, a key per request (\`/bench/floor-own\`)" ;;
      redis-own) label="django-redis \`cache.lock\`, a key per request (\`/bench/redis-own\`)" ;;
    esac
    row "$label" "$variant" 1
  done
  echo
  echo "A key per request (uncontended, the seed's common case): latency p50 added over no lock,"
  added_line keylock-own floor-own redis-own none
  echo
  echo "How to read it: with one key shared by every worker thread, keylockd grants waiters in"
  echo "arrival order, so a request typically waits for the others queued ahead of it (p50 of a"
  echo "few lock cycles, p99 close to it). redis-py's Lock lets whichever request retries \`SET NX\`"
  echo "at the right moment win: a request that finds the key free goes at once (a low p50), one"
  echo "that found it taken sleeps 0.1 s per retry (a p99 of hundreds of milliseconds)."
  echo
  echo "The same views one request at a time (\`wrk -t 1 -c 1\`, same duration):"
  echo
  echo "| view, one connection | requests/s | latency p50 | latency p99 | requests | socket errors | non-2xx | CPUs busy before |"
  echo "|:--|--:|--:|--:|--:|--:|--:|--:|"
  for variant in "${ONE_VARIANTS[@]}"; do
    name=one-$variant
    row "\`/bench/$variant\`" "$name" 0
  done
  echo
  echo "A key per request, one connection: latency p50 added over no lock,"
  added_line one-keylock-own one-floor-own one-redis-own one-none
  echo
  echo "Which to quote: with $WRK_CONNECTIONS connections on $(nproc) CPUs every request queues for a CPU, so"
  echo "the p50 a lock adds there is mostly the CPU it costs per request (its own, the server's"
  echo "and the kernel's), multiplied by the queue; one request at a time, it is the latency the"
  echo "lock adds to a request."
  echo
  echo "The floor (\`/bench/floor-own\`) is the least work any client of keylockd can do per"
  echo "request: the acquire's round trip and a noreply release over the thread's own connection,"
  echo "with no renewal, reconnect, interrupt or outage handling. It is not a lock to use. With"
  echo "$WRK_CONNECTIONS connections it shows how much of a lock's cost is the round trip itself on this machine."
  echo "One request at a time keylock's client can beat it: it spins for a fast answer (Client's"
  echo "\`spin\`) where the floor sleeps in read(2) and is woken."
  echo
  echo "## Setup"
  echo
  echo "- Date: $START; git $GIT$DIRTY"
  echo "- Machine: $CPU, $(nproc) CPUs, $MEM RAM, Linux $(uname -r)"
  echo "- **Shared machine**: other engineers' builds, tests and benchmarks share these $(nproc)"
  echo "  CPUs and may have run at any time, so absolute numbers are noisy; compare the rows with"
  echo "  each other, and rerun before quoting them. Load average $LOAD_BEFORE before the runs, $LOAD_AFTER after (ours included)."
  echo "  Each view's run waited up to ${IDLE_WAIT:-30} s for the machine to be below 25 % busy; \"CPUs busy"
  echo "  before\" is what it measured last (all CPUs, half a second, idle servers included)."
  echo "- Software: $("$KEYLOCKD" --version), $(redis-server --version | cut -d' ' -f1-3), uWSGI $(uwsgi --version),"
  echo "  Django $DJANGO_V, django-redis $DJREDIS_V, redis-py $REDISPY_V, Python $($PY -c 'import platform; print(platform.python_version())'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
  echo "- Placement: keylockd and redis-server pinned to CPU 1, wrk to CPU 0, uWSGI unpinned."
  echo "- uWSGI: $UWSGI_PROCESSES processes x $UWSGI_THREADS threads, HTTP/1.1 keep-alive socket, request logging off;"
  echo "  SQLite is configured but these views do not touch it."
  echo "- wrk: $WRK_THREADS threads and $WRK_CONNECTIONS connections (one-connection runs: 1 and 1), ${WARMUP} s warm-up"
  echo "  then ${DURATION} s measured per view and round."
  echo
  echo "## Commands"
  echo
  echo '```'
  echo "${KEYLOCKD_CMD[*]}" | sed "s#$REPO/##; s#--metrics-listen #--metrics-listen ''#"
  echo "${REDIS_CMD[*]}" | sed "s#--save  #--save '' #"
  echo "KEYLOCK_SERVER=$KEYLOCK_SERVER REDIS_URL=$REDIS_URL KEYLOCK_SITE_DB=\$TMP/site.sqlite3 \\"
  echo "  $PY examples/django_site/manage.py migrate --noinput"
  echo "${UWSGI_CMD[*]}" | sed "s#$REPO/##"
  for variant in "${VARIANTS[@]}"; do
    echo "${WRK_BASE[*]} -d ${DURATION}s http://127.0.0.1:$HTTP_PORT/bench/$variant"
  done
  for variant in "${ONE_VARIANTS[@]}"; do
    echo "${WRK_ONE[*]} -d ${DURATION}s http://127.0.0.1:$HTTP_PORT/bench/$variant"
  done
  echo '```'
  echo
  echo "## wrk output"
  for variant in "${VARIANTS[@]}" "${ONE_VARIANTS[@]/#/one-}"; do
    echo
    echo "### $variant"
    echo
    echo '```'
    cat "$TMP/wrk-$variant.txt"
    echo '```'
  done
} >"$OUT"

cat "$OUT"
echo "django-overhead: wrote $OUT" >&2
