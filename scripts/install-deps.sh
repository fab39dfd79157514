#!/usr/bin/env bash
# Installs the Debian 12 packages keylock needs to build, test and benchmark.
# As root it runs apt-get; otherwise it prints the exact command and stops (exit 1).
# Idempotent and quiet when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config        # toolchain (g++ 12, CMake 3.25)
  libboost-dev                            # Boost.Asio / Beast 1.74 (header-only parts)
  libspdlog-dev libfmt-dev                # logging
  libcli11-dev                            # command lines
  nlohmann-json3-dev                      # JSON
  catch2                                  # tests (Catch2 v2)
  libssl-dev                              # libcrypto: MD5, constant-time compare; libssl: TLS
  libsystemd-dev                          # sd_notify: readiness and watchdog under systemd
  openssl                                 # the TLS tests make their certificates with it
  libhiredis-dev redis-server             # keylock-bench's Redis target and its peer server
  util-linux procps                       # taskset, ps/pgrep for scripts
  clang libclang-rt-14-dev python3        # libFuzzer targets (scripts/fuzz.sh); chaos driver
  python3-pytest python3-django python3-django-redis python3-redis uwsgi uwsgi-plugin-python3 wrk  # Python client tests, Django example and bench (issue 6)
  python3-build python3-venv python3-setuptools python3-wheel  # the Python sdist and wheel, tested in a venv (issue 16)
  dpkg-dev lintian help2man               # the Debian packages: dpkg-shlibdeps for Depends, lintian, man pages (issue 16)
  # Cluster mode (issue 13): etcd's v3 gRPC API generated at build time from the protos Debian
  # ships, the gRPC C++ runtime, and etcd itself for the tests.
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  golang-etcd-server-dev golang-github-gogo-protobuf-dev golang-github-gogo-googleapis-dev
  etcd-server etcd-client
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "keylock needs these Debian packages: ${missing[*]}" >&2
  echo "Run as root:  $cmd" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
