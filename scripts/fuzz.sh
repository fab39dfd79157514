#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan) into build/fuzz/ and runs
# each for SECONDS (default 60) on a copy of its seed corpus, printing the executions done.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     TARGET: decode_request, lock_table, framer
#                                             (default: all three)
#
# Needs Debian's clang and libclang-rt-14-dev. A crash leaves its input in build/fuzz/ (the
# script exits non-zero); copy it into tests/fuzz/corpus/<target>/ to keep it as a regression
# test once fixed. New coverage found is written to build/fuzz/corpus/<target>/ (merge it into
# the seed corpus by hand with -merge=1 when it is worth keeping).
set -euo pipefail

seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(decode_request lock_table framer)

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build/fuzz
mkdir -p "$out"
CXX=${FUZZ_CXX:-clang++}
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -I"$root/include" -I"$root/src")

build() {
  local t=$1
  case $t in
    decode_request) srcs=("$root/src/codec.cpp" "$root/src/protocol.cpp"); libs=() ;;
    lock_table) srcs=("$root/src/lock_table.cpp" "$root/src/metrics.cpp" "$root/src/protocol.cpp")
                libs=(-lcrypto) ;;
    framer) srcs=(); libs=() ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  local bin=$out/fuzz_$t
  # Rebuild only when a source is newer than the binary.
  local newest
  newest=$(ls -t "$root/tests/fuzz/fuzz_$t.cpp" "${srcs[@]}" "$root"/src/*.hpp "$root"/include/keylock/*.hpp | head -1)
  if [[ ! -x $bin || $newest -nt $bin ]]; then
    echo "building $bin" >&2
    "$CXX" "${flags[@]}" "$root/tests/fuzz/fuzz_$t.cpp" "${srcs[@]}" "${libs[@]}" -o "$bin"
  fi
}

status=0
for t in "${targets[@]}"; do
  build "$t"
  work=$out/corpus/$t
  mkdir -p "$work"
  log=$out/fuzz_$t.log
  echo "== fuzz_$t for ${seconds}s"
  # -rss_limit_mb keeps one input from eating the shared machine; artifacts go to build/fuzz/.
  if ! (cd "$out" && "./fuzz_$t" -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
          -print_final_stats=1 -artifact_prefix="$out/crash-$t-" \
          "$work" "$root/tests/fuzz/corpus/$t" >"$log" 2>&1); then
    status=1
    echo "fuzz_$t FAILED; see $log" >&2
    grep -E "ERROR|SUMMARY|fuzz_|Test unit written" "$log" | head -20 >&2 || true
  fi
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -E '#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/')
  echo "fuzz_$t: executions=${execs:-?} coverage=${cov:-?} corpus=$(ls "$work" | wc -l)"
done
exit $status
