//! Write the WASI preview1 reactor adapter to the path given as the only argument.
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;

fn main() -> std::io::Result<()> {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: adapter <out.wasm>");
        std::process::exit(2);
    };
    std::fs::write(out, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
}
