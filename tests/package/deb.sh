#!/usr/bin/env bash
# Checks the two Debian packages that `cpack --preset package` built (issue 16), then uses them
# unpacked, without installing anything on this machine:
#
#   deb.sh BUILD_DIR SOURCE_DIR        (BUILD_DIR: the package preset's, holding the .deb files)
#
# 1. contents (dpkg-deb -c) and control fields (dpkg-deb -f, the conffiles, the maintainer
#    scripts) of keylockd and libkeylock-dev;
# 2. both unpacked (dpkg -x) into a scratch root; the unpacked keylockd runs with the packaged
#    config and the unpacked keylock CLI runs a command under a lock through it;
# 3. tests/consumer built against the unpacked libkeylock-dev, with find_package and with
#    pkg-config, and run against the unpacked keylockd;
# 4. lintian on both packages: any error or warning fails.
set -euo pipefail
pkgdir=$1 src=$2
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$pkgdir/CMakeCache.txt")
[ -n "$version" ] || { echo "deb.sh: no project version in $pkgdir/CMakeCache.txt" >&2; exit 1; }
work=$(mktemp -d /tmp/keylock-deb.XXXXXX)
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
cleanup() {
  stop_keylockd
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "deb.sh: $*" >&2; exit 1; }

arch=$(dpkg --print-architecture)
daemon_deb=$pkgdir/keylockd_${version}-1_${arch}.deb
dev_deb=$pkgdir/libkeylock-dev_${version}-1_${arch}.deb
for deb in "$daemon_deb" "$dev_deb"; do [ -f "$deb" ] || fail "no $deb"; done

# 1. What each package holds.
expect_contents() {
  local deb=$1; shift
  dpkg-deb -c "$deb" | awk '{print $1, $2, $NF}' > "$work/contents"
  echo "== dpkg-deb -c $(basename "$deb")"
  dpkg-deb -c "$deb"
  for path in "$@"; do
    grep -q " \./${path#/}\$" "$work/contents" || fail "$(basename "$deb") lacks $path"
  done
  # Everything belongs to root in the archive; postinst hands the state directory over.
  if awk '$2 != "root/root"' "$work/contents" | grep -q .; then fail "$(basename "$deb"): a file not owned by root/root"; fi
}
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
expect_contents "$daemon_deb" /usr/bin/keylockd /usr/bin/keylock /etc/keylock/keylockd.json \
  /lib/systemd/system/keylockd.service /var/lib/keylock/ /usr/share/doc/keylockd/copyright \
  /usr/share/doc/keylockd/changelog.Debian.gz /usr/share/doc/keylockd/PROTOCOL.md \
  /usr/share/man/man1/keylockd.1.gz /usr/share/man/man1/keylock.1.gz
expect_contents "$dev_deb" /usr/include/keylock/client.hpp \
  "/usr/lib/$multiarch/libkeylock_client.a" "/usr/lib/$multiarch/libkeylock_proto.a" \
  "/usr/lib/$multiarch/cmake/keylock/keylockConfig.cmake" \
  "/usr/lib/$multiarch/cmake/keylock/keylockConfigVersion.cmake" \
  "/usr/lib/$multiarch/cmake/keylock/keylockTargets.cmake" \
  "/usr/lib/$multiarch/pkgconfig/keylock.pc" /usr/share/doc/libkeylock-dev/copyright
# The daemon's package holds no development files, the -dev package no programs.
if dpkg-deb -c "$daemon_deb" | grep -q '/include/\|\.a$'; then fail "keylockd holds development files"; fi
if dpkg-deb -c "$dev_deb" | grep -q '/bin/'; then fail "libkeylock-dev holds programs"; fi

echo "== control fields"
dpkg-deb -f "$daemon_deb"
dpkg-deb -f "$dev_deb"
[ "$(dpkg-deb -f "$daemon_deb" Version)" = "${version}-1" ] || fail "keylockd's version is not ${version}-1"
depends=$(dpkg-deb -f "$daemon_deb" Depends)
for dep in adduser libssl3 libsystemd0; do
  [[ $depends == *"$dep"* ]] || fail "keylockd does not depend on $dep: $depends"
done
dev_depends=$(dpkg-deb -f "$dev_deb" Depends)
for dep in libboost-dev libssl-dev nlohmann-json3-dev; do
  [[ $dev_depends == *"$dep"* ]] || fail "libkeylock-dev does not depend on $dep: $dev_depends"
done
dpkg-deb -e "$daemon_deb" "$work/control"
[ "$(cat "$work/control/conffiles")" = /etc/keylock/keylockd.json ] || fail "conffiles: $(cat "$work/control/conffiles")"
for script in postinst prerm postrm; do
  [ -x "$work/control/$script" ] || fail "keylockd has no executable $script"
  sh -n "$work/control/$script" || fail "$script: syntax error"
done

# The maintainer scripts run against stand-ins that log their arguments instead of touching
# this machine: a first install creates the user, hands it the state directory and enables the
# unit; an upgrade with the user there creates nobody; purge removes the state directory.
stubs=$work/stubs
mkdir "$stubs"
for cmd in adduser chown chmod deb-systemd-helper deb-systemd-invoke systemctl rm; do
  printf '#!/bin/sh\necho "%s $*" >> "%s"\n' "$cmd" "$work/calls" > "$stubs/$cmd"
done
printf '#!/bin/sh\n[ -n "$KEYLOCK_STUB_USER" ]\n' > "$stubs/getent"
chmod +x "$stubs"/*
run_script() { : > "$work/calls"; env PATH="$stubs:/usr/bin:/bin" "$@"; }
expect_call() { grep -qx -- "$1" "$work/calls" || { cat "$work/calls" >&2; fail "$2"; }; }
run_script "$work/control/postinst" configure
expect_call 'adduser --system --group --quiet --home /var/lib/keylock --no-create-home --gecos keylock lock server keylock' \
  "postinst did not create the keylock system user"
expect_call 'chown keylock:keylock /var/lib/keylock' "postinst did not give keylock the state directory"
expect_call 'deb-systemd-helper enable keylockd.service' "postinst did not enable the unit"
KEYLOCK_STUB_USER=1 run_script "$work/control/postinst" configure 0.0.9-1
if grep -q '^adduser' "$work/calls"; then fail "postinst created the user again on upgrade"; fi
run_script "$work/control/postrm" purge
expect_call 'rm -rf /var/lib/keylock' "postrm purge left the state directory"

# 2. Unpacked, the daemon runs with the packaged config, and the CLI through it.
root=$work/root
dpkg -x "$daemon_deb" "$root"
dpkg -x "$dev_deb" "$root"
unit=$root/lib/systemd/system/keylockd.service
grep -qx 'ExecStart=/usr/bin/keylockd --config /etc/keylock/keylockd.json --state-dir /var/lib/keylock' "$unit" \
  || fail "the unit's ExecStart is not the packaged paths"
grep -qx 'User=keylock' "$unit" || fail "the unit does not run as keylock"
[ "$(zcat "$root/usr/share/doc/keylockd/changelog.Debian.gz" | sed -n '1s/.*(\(.*\)).*/\1/p')" = "${version}-1" ] \
  || fail "changelog.Debian's latest entry is not ${version}-1"
"$root/usr/bin/keylockd" --version
"$root/usr/bin/keylock" --version

mkdir "$work/state"
start_keylockd "$work/keylockd.log" "$root/usr/bin/keylockd" \
  --config "$root/etc/keylock/keylockd.json" --listen 127.0.0.1:0 --metrics-listen '' \
  --state-dir "$work/state" || fail "the unpacked keylockd did not listen"
port=$keylockd_port
out=$("$root/usr/bin/keylock" --server "127.0.0.1:$port" run deb-smoke --wait 10s -- echo held-by-the-package)
[ "$out" = held-by-the-package ] || fail "keylock run printed: $out"
"$root/usr/bin/keylock" --server "127.0.0.1:$port" stats | grep -q . || fail "keylock stats printed nothing"

# 3. The consumer, against the unpacked -dev package, two ways.
for mode in package pkg-config; do
  echo "== consumer ($mode) against the unpacked libkeylock-dev"
  KEYLOCK_CONSUMER_PREFIX=$root/usr "$src/tests/consumer/run.sh" "$mode" - "$src" "$root/usr/bin/keylockd"
done

# 4. lintian: no error or warning (the one tag left is overridden in the package, with its
# reason), and the programs carry Debian's hardening (the package preset's flags).
echo "== lintian"
lintian --fail-on error,warning --info "$daemon_deb" "$dev_deb"
if lintian -I "$daemon_deb" | grep 'hardening-no'; then fail "keylockd's programs lack Debian's hardening"; fi
echo "deb.sh: both packages check out"
