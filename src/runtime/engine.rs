//! The one wasmtime [`Engine`] of a host, and the thread that ticks its epoch.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::MAX_MEMORY_BYTES;

/// How often the epoch advances: how often running wasm checks its deadline and yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

pub fn new_engine() -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    // Sized for a host running a few hundred jobs, including Python and JS components,
    // which have many core instances, memories and tables each. The slots are virtual
    // address space; memory is committed only as guests use it.
    pool.total_component_instances(512)
        .total_core_instances(4096)
        .total_memories(1024)
        .total_tables(4096)
        .max_core_instances_per_component(128)
        .max_memories_per_component(16)
        .max_tables_per_component(64)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .table_elements(200_000)
        .max_memory_size(MAX_MEMORY_BYTES);

    let mut config = Config::new();
    // Async calls: a guest blocked in a host call (a WASI sleep or poll, a state read) waits
    // on a tokio future, so the per-event wall-clock bound still fires; long-running wasm
    // yields at every epoch tick (see `instance`).
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Start the thread that advances the engine's epoch every [`EPOCH_TICK`]; it ends by
/// itself when the engine is dropped.
pub fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(())
}
