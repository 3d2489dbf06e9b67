//! The one `bindgen!` of the host: Rust types and traits for `wit/` (world `plugin`).
//!
//! Calls into the guest are async (run under a wall-clock bound, see
//! [`instance`](super::instance)); so are the imports that read job state from Redis, so a
//! slow read is bounded by the same deadline. Every other import is a plain function.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "wit",
    imports: {
        "sluice:plugin/kv.get": async,
        "sluice:plugin/counters.counter-add": async,
        "sluice:plugin/counters.counter-get": async,
        "sluice:plugin/counters.window-count": async,
    },
    exports: { default: async },
});
