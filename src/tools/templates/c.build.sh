#!/usr/bin/env bash
# Build {{name}}.wasm (a WebAssembly component) from app.c: clang-19 and wasi-libc (apt),
# `wit-bindgen c`, wasm-tools and the WASI preview1 adapter, each installed if missing.
set -euo pipefail
cd "$(dirname "$0")"
tools/build-c.sh . "{{name}}.wasm"
