# sluice: `make demo` runs the main job, `make test` runs every test. Both install what is
# missing first (redis-server from apt, the wasm32-wasip2 Rust target) and do nothing more
# when it is there.

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
WASM_DIR := plugins/target/wasm32-wasip2/release

.PHONY: all deps plugins build demo test lint bench clean

all: build plugins

## deps: install redis-server and the wasm32-wasip2 target if missing
deps:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { \
	  echo "installing redis-server (apt)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || { \
	  echo "adding the wasm32-wasip2 Rust target"; rustup target add wasm32-wasip2; }
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' && \
	  rustup component list --installed 2>/dev/null | grep -q '^clippy' || { \
	  echo "adding the rustfmt and clippy components"; rustup component add rustfmt clippy; }

## plugins: build every plugin in plugins/ into plugins/dist/<name>.wasm
plugins: deps
	cd plugins && $(CARGO) build --release --target wasm32-wasip2
	@mkdir -p plugins/dist
	@for src in $(WASM_DIR)/*.wasm; do \
	  name=$$(basename $$src .wasm); dst=plugins/dist/$${name//_/-}.wasm; \
	  cmp -s $$src $$dst || cp $$src $$dst; done
	@ls -l plugins/dist

## build: the host binary (with the tests' feature set, so `make test` reuses the build)
build:
	$(CARGO) build --all-targets

## demo: run the host on examples/sluice.toml with an embedded Redis, publish, show the result
demo: deps plugins build
	examples/demo.sh

## test: every test (unit, integration against real redis-server and real plugins), lint
test: deps plugins
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets

## bench: the benchmark, optimised build (see README for the figures)
bench: deps plugins
	$(CARGO) run --release -- bench

clean:
	$(CARGO) clean
	cd plugins && $(CARGO) clean
	rm -rf plugins/dist
