# The two commands of the README: `make run` and `make test`. Both set the machine up first.
JOBS ?= $(shell nproc)
CONFIG ?= config/keylockd.json

.PHONY: deps build run test test-asan clean

deps:
	./scripts/install-deps.sh

build: deps
	cmake --preset release
	cmake --build --preset release -j $(JOBS)

run: build
	./build/release/src/keylockd --config $(CONFIG)

test: build
	ctest --preset release -j $(JOBS)

# AddressSanitizer + UndefinedBehaviorSanitizer build of everything, with every test.
test-asan: deps
	cmake --preset asan
	cmake --build --preset asan -j $(JOBS)
	ctest --preset asan -j $(JOBS)

clean:
	rm -rf build
