#!/usr/bin/env bash
# Build {{name}}.wasm (a WebAssembly component) from app.js with componentize-js.
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules/@bytecodealliance/componentize-js ] || npm install --silent --no-audit --no-fund
node build.mjs
