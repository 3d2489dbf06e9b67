//! The one `bindgen!` of the host: Rust types and traits for `wit/`: the world `plugin`
//! plus the `batch` import of `batch-plugin` (whose `batch-handler` export is optional, so
//! it is looked up per component, see [`plugin`](super::plugin), not required here).
//!
//! Calls into the guest are async (run under a wall-clock bound, see
//! [`instance`](super::instance)); so are the imports that read job state from Redis, so a
//! slow read is bounded by the same deadline. Every other import is a plain function.
//! Types passed into guest exports borrow (see `ownership`).

wasmtime::component::bindgen!({
    world: "sluice:host/plugin",
    path: "wit",
    inline: "
        package sluice:host;
        world plugin {
            include sluice:plugin/plugin@0.1.0;
            import sluice:plugin/batch@0.1.0;
        }
    ",
    imports: {
        "sluice:plugin/kv.get": async,
        "sluice:plugin/counters.counter-add": async,
        "sluice:plugin/counters.counter-get": async,
        "sluice:plugin/counters.window-count": async,
    },
    exports: { default: async },
    // An event is handed to the guest borrowed from the host's own: no copy of its strings
    // and fields per call (the canonical ABI copies them into guest memory anyway).
    ownership: Borrowing { duplicate_if_necessary: true },
});
