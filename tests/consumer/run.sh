#!/usr/bin/env bash
# Builds tests/consumer against keylock one way and runs it against a throwaway keylockd.
#
#   run.sh MODE BUILD_DIR SOURCE_DIR KEYLOCKD
#
# MODE: package (cmake --install BUILD_DIR into a scratch prefix, then find_package),
# pkg-config (the same prefix, compiled with g++ and `pkg-config --cflags --libs keylock` only),
# subdirectory (the consumer's build adds SOURCE_DIR with add_subdirectory). Everything goes to
# a temporary directory, removed at the end with the daemon it started.
#
# With KEYLOCK_CONSUMER_PREFIX set (tests/package/deb.sh: an unpacked libkeylock-dev), the
# package and pkg-config modes build against that prefix instead of installing BUILD_DIR.
set -euo pipefail
mode=$1 build=$2 src=$3 keylockd=$4
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/keylock-consumer.XXXXXX)
# shellcheck source=../lib.sh
. "$here/../lib.sh"
cleanup() {
  stop_keylockd
  rm -rf "$work"
}
trap cleanup EXIT

prefix=${KEYLOCK_CONSUMER_PREFIX:-}
install_prefix() {
  if [ -z "$prefix" ]; then
    prefix=$work/prefix
    cmake --install "$build" --prefix "$prefix" --component dev > "$work/install.log"
  fi
}

case $mode in
  package)
    install_prefix
    cmake -S "$here" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" > "$work/configure.log"
    cmake --build "$work/build" -j 2 > "$work/build.log"
    consumer=$work/build/consumer
    ;;
  pkg-config)
    install_prefix
    pc=$(find "$prefix" -name keylock.pc)
    flags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs keylock)
    # shellcheck disable=SC2086 # the flags are words
    g++ -std=c++20 "$here/main.cpp" -o "$work/consumer" $flags
    consumer=$work/consumer
    ;;
  subdirectory)
    cmake -S "$here" -B "$work/build" -DKEYLOCK_CONSUMER_MODE=subdirectory \
          -DKEYLOCK_SOURCE_DIR="$src" > "$work/configure.log"
    # The subproject must not have forced a build type or built the daemon, tests or bench.
    if grep -q '^KEYLOCK_BUILD_DAEMON:BOOL=ON' "$work/build/CMakeCache.txt"; then
      echo "run.sh: as a subdirectory keylock turned its daemon on" >&2; exit 1
    fi
    if grep -q '^CMAKE_BUILD_TYPE:STRING=Release' "$work/build/CMakeCache.txt"; then
      echo "run.sh: as a subdirectory keylock forced CMAKE_BUILD_TYPE" >&2; exit 1
    fi
    cmake --build "$work/build" -j 2 > "$work/build.log"
    consumer=$work/build/consumer
    ;;
  *) echo "run.sh: unknown mode $mode" >&2; exit 2 ;;
esac

start_keylockd "$work/keylockd.log" "$keylockd" --listen 127.0.0.1:0 --metrics-listen ''
"$consumer" "127.0.0.1:$keylockd_port"
