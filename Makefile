# kumofs-rs: the two commands a new machine needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: all build release run test test-heavy lint fmt doc bench clean

all: build

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release --workspace

# Builds in release mode and runs a local cluster in the foreground (Ctrl-C stops it).
run: release
	./perf/local-cluster.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The whole suite: lints, unit, property and integration tests (needs memcached and
# libmemcached-tools for the conformance checks; .ci/run installs them).
# The admin tools' binaries (kumoctl ...) are built first: integration tests run them.
test: lint
	./.ci/deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets

# Long fault loops (crash tests with many iterations), optimised with the `perf` profile (thin
# LTO, parallel codegen): the release profile's fat LTO took longer to build every test binary
# than the loops take to run.
test-heavy:
	$(CARGO) build --profile perf --workspace --bins
	KUMO_HEAVY=1 $(CARGO) test --workspace --all-targets --profile perf -- --include-ignored

fmt:
	$(CARGO) fmt --all

# The crate docs, internals included (the module docs are the map of the code).
doc:
	$(CARGO) doc --no-deps --workspace --document-private-items

clean:
	$(CARGO) clean
