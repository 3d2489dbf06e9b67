//! The one wasmtime [`Engine`] of a host, and the thread that ticks its epoch.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::MAX_MEMORY_BYTES;

/// How often the epoch advances: the resolution of per-event deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Deadline in epoch ticks for a wall-clock budget: rounded up, plus one tick because the
/// current tick may end at any moment.
pub fn deadline_ticks(budget: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (budget.as_nanos().div_ceil(tick) as u64).saturating_add(1)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_and_adds_a_tick() {
        assert_eq!(deadline_ticks(Duration::from_millis(5)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(6)), 3);
        assert_eq!(deadline_ticks(Duration::from_secs(1)), 201);
    }
}
