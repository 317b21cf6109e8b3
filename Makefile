# The two commands: `make run` and `make test`. Both install what a fresh Debian machine lacks.
SHELL := /bin/bash
CARGO ?= cargo
# Crash-test trials in `make test` (the long run in README uses more).
export CRASH_TRIALS ?= 20

.PHONY: run test deps fmt lint build bench-engine clean-data

## Build (release) and start trackstore with embedded defaults: data in ./data, loopback ports.
run: deps
	$(CARGO) build --release --workspace --bins
	./target/release/trackstore

## fmt check, clippy with -D warnings, every test (unit, property, crash, end-to-end).
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	$(CARGO) test --workspace --all-features

## System packages: the rocksdb crate compiles RocksDB (C++) and runs bindgen, which needs libclang.
deps:
	@missing=""; \
	command -v clang >/dev/null 2>&1 || missing="$$missing clang"; \
	command -v c++ >/dev/null 2>&1 || missing="$$missing g++"; \
	command -v make >/dev/null 2>&1 || missing="$$missing make"; \
	ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 || missing="$$missing libclang-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo is missing: install Rust (rustup) first"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
	@# aioquic: an HTTP/3 client independent of our h3/quinn stack, for the interop test.
	@python3 -c "import aioquic" >/dev/null 2>&1 || python3 -m pip install -q aioquic

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

## The engine load benchmark (see bench/RESULTS.md for the recorded figures and commands).
bench-engine: deps
	$(CARGO) build --release --workspace --bins
	./target/release/engine-load --dir /tmp/ts-bench --events 10000000 all

clean-data:
	rm -rf ./data
