#!/usr/bin/env bash
# The Python package as people install it (issue 16, ctest python_wheel): builds the sdist and
# the wheel with Debian's python3-build (no network: --no-isolation), checks that both carry
# the LICENSE and that the version is the CMake project's, installs the wheel into a fresh
# `python3 -m venv --system-site-packages` (Debian's Django and pytest stay visible), and runs
# the client test suite against the installed package, not the source tree.
#
# usage: wheel.sh SOURCE_DIR KEYLOCKD PROJECT_VERSION
set -euo pipefail
src=$1 keylockd=$2 version=$3
work=$(mktemp -d /tmp/keylock-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "wheel.sh: FAIL: $*" >&2
  exit 1
}

# A copy, so that the build leaves nothing in the tree; -L turns the LICENSE symlink into the
# file it names.
cp -rL "$src/client/python" "$work/src"
rm -rf "$work/src/build" "$work/src"/*.egg-info
/usr/bin/python3 -m build --no-isolation --sdist --wheel --outdir "$work/dist" "$work/src" \
  >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; fail "python3 -m build"; }
wheel=$work/dist/keylock-$version-py3-none-any.whl
sdist=$work/dist/keylock-$version.tar.gz
[ -f "$wheel" ] && [ -f "$sdist" ] ||
  fail "expected keylock $version (CMake's version) but built: $(ls "$work/dist")"
# Listings to files first: grep -q ending a pipe early would fail it under pipefail.
/usr/bin/python3 -m zipfile -l "$wheel" >"$work/wheel.txt"
tar tzf "$sdist" >"$work/sdist.txt"
grep -q "dist-info/LICENSE" "$work/wheel.txt" || fail "the wheel has no LICENSE"
grep -qx "keylock-$version/LICENSE" "$work/sdist.txt" || fail "the sdist has no LICENSE"

/usr/bin/python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-index --no-deps "$wheel"
# From a directory without the sources: nothing but the venv can provide `keylock`.
cp -r "$src/client/python/tests" "$work/tests"
cd "$work"
"$work/venv/bin/python" -c "import keylock, sys; assert keylock.__version__ == '$version'; \
assert keylock.__file__.startswith(sys.prefix), keylock.__file__; print('installed:', keylock.__file__)"
KEYLOCK_TEST_INSTALLED=1 KEYLOCKD=$keylockd "$work/venv/bin/python" -m pytest -q \
  -p no:cacheprovider -c "$work/src/pyproject.toml" --rootdir "$work" "$work/tests"
