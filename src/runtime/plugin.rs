//! Loading a plugin: bytes → component (compiled, or from the cache) → type-checked against
//! the world → a [`LoadedPlugin`] that instances are made from.

use std::time::Instant;

use wasmtime::component::{Component, ComponentExportIndex};

use super::Runtime;
use super::bindings::{PluginIndices, PluginPre};
use crate::model::sha256_hex;

/// The world every plugin must implement.
pub const WORLD: &str = "sluice:plugin/plugin@0.1.0";

/// The optional export of the `batch-plugin` world, and its function.
const BATCH_HANDLER: &str = "sluice:plugin/batch-handler@0.1.0";
const HANDLE_BATCH: &str = "handle-batch";

/// A plugin version ready to instantiate.
pub struct LoadedPlugin {
    /// The name jobs refer to it by.
    pub name: String,
    /// Where it was loaded from (a path), for messages.
    pub origin: String,
    /// Hex sha256 of the component bytes: the version's identity.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// True when the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// True when it imports job state (kv, counters): its batches are not pipelined.
    pub stateful: bool,
    /// Linked and type-checked once; each instance is made from it.
    pub(crate) pre: PluginPre<super::host::HostState>,
    /// Where the world's exports are in an instance of it.
    pub(crate) indices: PluginIndices,
    /// `handle-batch`, when the plugin exports `batch-handler` (the `batch-plugin` world).
    pub(crate) batch: Option<ComponentExportIndex>,
}

impl LoadedPlugin {
    /// True when it exports `handle-batch` (the `batch-plugin` world).
    pub fn handles_batches(&self) -> bool {
        self.batch.is_some()
    }

    /// This version under the name `name` (the same bytes may be loaded as two plugins;
    /// what is said of an instance names the plugin its job uses).
    pub fn named(self: &std::sync::Arc<Self>, name: &str) -> std::sync::Arc<LoadedPlugin> {
        if self.name == name {
            return self.clone();
        }
        std::sync::Arc::new(LoadedPlugin {
            name: name.to_string(),
            origin: self.origin.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            from_cache: self.from_cache,
            stateful: self.stateful,
            pre: self.pre.clone(),
            indices: self.indices.clone(),
            batch: self.batch,
        })
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Why a plugin could not be loaded. Every message names the plugin and its file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin `{name}` ({path}): cannot read the file: {source}")]
    Read {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error("plugin `{name}` ({origin}): not a WebAssembly file (no `\\0asm` header)")]
    NotWasm { name: String, origin: String },
    #[error(
        "plugin `{name}` ({origin}): is a core WebAssembly module, not a component; build it \
         for the wasm32-wasip2 target or wrap it with `wasm-tools component new`"
    )]
    CoreModule { name: String, origin: String },
    #[error("plugin `{name}` ({origin}): invalid component: {message}")]
    Compile {
        name: String,
        origin: String,
        message: String,
    },
    #[error("plugin `{name}` ({origin}): does not implement the world {WORLD}: {message}")]
    WrongWorld {
        name: String,
        origin: String,
        message: String,
    },
}

pub(super) fn load(
    runtime: &Runtime,
    name: &str,
    origin: &str,
    bytes: &[u8],
) -> Result<LoadedPlugin, LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm {
            name: name.into(),
            origin: origin.into(),
        });
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule {
            name: name.into(),
            origin: origin.into(),
        });
    }
    let sha256 = sha256_hex(bytes);

    let started = Instant::now();
    let cached = runtime
        .cache
        .as_ref()
        .and_then(|c| c.get(&runtime.engine, &sha256));
    let from_cache = cached.is_some();
    let component = match cached {
        Some(component) => component,
        None => {
            let component =
                Component::new(&runtime.engine, bytes).map_err(|e| LoadError::Compile {
                    name: name.into(),
                    origin: origin.into(),
                    message: format!("{e:#}"),
                })?;
            if let Some(cache) = &runtime.cache {
                cache.put(&sha256, &component);
            }
            component
        }
    };
    let plugin = link(
        runtime,
        name,
        origin,
        sha256,
        bytes.len(),
        component,
        from_cache,
    )?;
    tracing::info!(
        plugin = name,
        origin,
        sha256 = crate::model::short(&plugin.sha256),
        size = bytes.len(),
        from_cache,
        ms = started.elapsed().as_millis() as u64,
        "plugin loaded"
    );
    Ok(plugin)
}

/// A version known by its sha256 alone, if the compile cache holds it: a host that compiled
/// it before (or whose fleet loaded it from this data dir) needs neither its bytes nor a
/// compile. The cache is the one copy of a plugin a host keeps on disk.
pub(super) fn load_cached(
    runtime: &Runtime,
    name: &str,
    origin: &str,
    sha256: &str,
    size: usize,
) -> Option<Result<LoadedPlugin, LoadError>> {
    let started = Instant::now();
    let component = runtime.cache.as_ref()?.get(&runtime.engine, sha256)?;
    let plugin = link(
        runtime,
        name,
        origin,
        sha256.to_string(),
        size,
        component,
        true,
    );
    if plugin.is_ok() {
        tracing::info!(
            plugin = name,
            origin,
            sha256 = crate::model::short(sha256),
            size,
            from_cache = true,
            ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
    }
    Some(plugin)
}

/// Link a compiled component against the host's imports and check it is of our world.
fn link(
    runtime: &Runtime,
    name: &str,
    origin: &str,
    sha256: String,
    size: usize,
    component: Component,
    from_cache: bool,
) -> Result<LoadedPlugin, LoadError> {
    let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
        name: name.into(),
        origin: origin.into(),
        message: format!("{e:#}"),
    };
    let instance_pre = runtime
        .linker
        .instantiate_pre(&component)
        .map_err(wrong_world)?;
    let pre = PluginPre::new(instance_pre).map_err(wrong_world)?;
    let indices = PluginIndices::new(pre.instance_pre()).map_err(wrong_world)?;
    // Its type is checked in each instance (a mismatch refuses the version at `init`).
    let batch = component
        .get_export_index(None, BATCH_HANDLER)
        .and_then(|interface| component.get_export_index(Some(&interface), HANDLE_BATCH));
    let stateful = component
        .component_type()
        .imports(&runtime.engine)
        .any(|(name, _)| {
            name.starts_with("sluice:plugin/kv@") || name.starts_with("sluice:plugin/counters@")
        });
    Ok(LoadedPlugin {
        name: name.into(),
        origin: origin.into(),
        sha256,
        size,
        from_cache,
        stateful,
        pre,
        indices,
        batch,
    })
}
