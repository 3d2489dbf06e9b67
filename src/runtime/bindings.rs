//! The one `bindgen!` of the host: Rust types and traits for `wit/` (world `plugin`).

wasmtime::component::bindgen!({
    world: "plugin",
    path: "wit",
});
