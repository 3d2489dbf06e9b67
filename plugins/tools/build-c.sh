#!/usr/bin/env bash
# Build a C sluice plugin into a WebAssembly component.
#   build-c.sh SRC_DIR OUT.wasm [WIT_DIR]
# Compiles every SRC_DIR/*.c against the bindings `wit-bindgen c` writes for the world in
# WIT_DIR (default SRC_DIR/wit). Debian's wasi-libc targets WASI preview1 only, so the core
# module is built for wasm32-wasi as a reactor and adapted to a component with the preview1
# reactor adapter of the wasmtime release the host runs. Installs what is missing: clang-19,
# lld-19 and wasi-libc from apt, wit-bindgen-cli from crates.io, wasm-tools from PyPI.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
command -v clang-19 >/dev/null && [ -f /usr/lib/wasm32-wasi/libc.a ] || {
  echo "installing clang-19 and wasi-libc (apt)"; $sudo apt-get update -qq
  $sudo apt-get install -y -qq clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc; }

rm -rf "$work/gen" && mkdir -p "$work/gen"
wit-bindgen c "$wit" --world plugin --out-dir "$work/gen" >"$work/bindgen.log" 2>&1 || {
  cat "$work/bindgen.log"; exit 1; }
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -I "$work/gen" -o "$work/core.wasm" \
  "$src"/*.c "$work/gen/plugin.c" "$work/gen/plugin_component_type.o"
wasm-tools component new "$work/core.wasm" --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
echo "built $out"
