#!/usr/bin/env bash
# Build {{name}}.wasm (a WebAssembly component) from this Rust project.
set -euo pipefail
cd "$(dirname "$0")"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" "{{name}}.wasm"
echo "built {{name}}.wasm"
