# The two commands of the README: `make run` and `make test`. Both set the machine up first.
JOBS ?= $(shell nproc)
CONFIG ?= config/keylockd.json

.PHONY: deps build run run-cluster test test-asan test-tsan packages test-packages clean

deps:
	./scripts/install-deps.sh

build: deps
	cmake --preset release
	cmake --build --preset release -j $(JOBS)

run: build
	./build/release/src/keylockd --config $(CONFIG)

# Cluster mode on one machine: three etcd members and three keylockd (7400, 7410, 7420).
run-cluster: build
	./scripts/run-cluster.sh

test: build
	ctest --preset release -j $(JOBS)

# AddressSanitizer + UndefinedBehaviorSanitizer build of everything, with every test.
test-asan: deps
	cmake --preset asan
	cmake --build --preset asan -j $(JOBS)
	ctest --preset asan -j $(JOBS)

# ThreadSanitizer build of the client library and its threaded tests (against the daemon).
# The preset passes -Wno-tsan: GCC 12 warns that Asio's atomic_thread_fence is invisible to
# TSan; Asio's fences guard its own handler-memory recycling, not our data, and no suppression
# of TSan reports is used.
test-tsan: deps
	cmake --preset tsan
	cmake --build --preset tsan -j $(JOBS)
	ctest --preset tsan -j $(JOBS)

# The Debian packages keylockd and libkeylock-dev (build/package/*.deb), from their own Release
# build with prefix /usr; then their contents, the unpacked daemon, CLI and consumer, lintian.
packages: deps
	cmake --preset package
	cmake --build --preset package -j $(JOBS)
	cpack --preset package

test-packages: packages
	tests/package/deb.sh build/package $(CURDIR)

clean:
	rm -rf build
