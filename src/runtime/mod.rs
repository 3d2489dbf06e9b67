//! Everything wasmtime: the engine, the one `bindgen!`, plugin compilation and its on-disk
//! cache, plugin instances and the host side of the WIT imports. Knows nothing about Redis,
//! the config file, the host or the CLI: it turns [`Event`](crate::model::Event)s into
//! [`Outcome`](crate::model::Outcome)s, under the [`Limits`] it is given.
//!
//! Invariants:
//! - one [`Engine`](wasmtime::Engine) per [`Runtime`], with the pooling allocator and epoch
//!   interruption driven by one ticker thread ([`engine::EPOCH_TICK`]);
//! - one [`PluginPre`](bindings::PluginPre) per loaded plugin version, linked once;
//! - a trap, deadline or memory overrun fails one event; the instance that failed is dropped
//!   and the next event gets a fresh one.

mod bindings;
mod cache;
mod engine;
mod handler;
pub mod host;
mod instance;
pub mod memory;
mod plugin;

pub use crate::model::sha256_hex;
pub use handler::PluginHandler;
pub use host::{GuestContext, Limits, Overlay};
pub use instance::PluginInstance;
pub use plugin::{LoadError, LoadedPlugin};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Linker;

use self::cache::CompileCache;
use self::host::HostState;

/// Run a call into plugins to completion from synchronous code: on the tokio runtime of the
/// calling thread (a blocking-pool thread of the host), else on a small runtime of its own
/// (tests, tools). Never call it from an async task.
pub fn block_on<F: Future>(f: F) -> F::Output {
    runtime_handle().block_on(f)
}

/// The tokio runtime plugin calls run on: the calling thread's, else a small one of its own
/// (tests, tools). Its handle can be taken to other threads (a handler's lanes).
pub(crate) fn runtime_handle() -> tokio::runtime::Handle {
    static FALLBACK: std::sync::LazyLock<tokio::runtime::Runtime> =
        std::sync::LazyLock::new(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sluice-plugin-rt")
                .enable_all()
                .build()
                .expect("starting a tokio runtime for plugin calls")
        });
    tokio::runtime::Handle::try_current().unwrap_or_else(|_| FALLBACK.handle().clone())
}

/// Largest memory cap a job may ask for; the pooling allocator reserves slots this big.
pub const MAX_MEMORY_BYTES: usize = (crate::model::spec::MAX_MEMORY_MB as usize) << 20;

/// The WebAssembly runtime of one host process: engine, linker and compile cache.
pub struct Runtime {
    /// Shared by every plugin; its epoch is ticked by a background thread.
    engine: Engine,
    /// WASI p2 (with an empty context) plus our WIT imports; cloned into nothing, linked once per plugin.
    linker: Linker<HostState>,
    /// Where compiled components are kept between runs; None disables caching.
    cache: Option<CompileCache>,
}

impl Runtime {
    /// A runtime whose compiled components are cached in `cache_dir` (None: no cache).
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::with_cache(cache_dir, true)
    }

    /// Like [`Runtime::new`]; with `write_cache` false the cache is only read (for checks
    /// that must not change anything on disk).
    pub fn with_cache(cache_dir: Option<&Path>, write_cache: bool) -> anyhow::Result<Self> {
        let engine = engine::new_engine()
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        engine::start_epoch_ticker(&engine).context("starting the epoch ticker")?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking host functions")?;
        let cache = cache_dir.map(|dir| CompileCache::new(dir.to_path_buf(), &engine, write_cache));
        Ok(Runtime {
            engine,
            linker,
            cache,
        })
    }

    /// The engine (for inspecting components).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The cache directory, if caching is on.
    pub fn cache_dir(&self) -> Option<&PathBuf> {
        self.cache.as_ref().map(|c| c.dir())
    }

    /// Read, compile (or fetch from the cache) and type-check the plugin at `path`.
    pub fn load_file(&self, name: &str, path: &Path) -> Result<Arc<LoadedPlugin>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            name: name.to_string(),
            path: path.display().to_string(),
            source,
        })?;
        self.load_bytes(name, &path.display().to_string(), &bytes)
    }

    /// Compile (or fetch from the cache) and type-check a plugin from its bytes;
    /// `origin` names where the bytes came from, for error messages.
    pub fn load_bytes(
        &self,
        name: &str,
        origin: &str,
        bytes: &[u8],
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        plugin::load(self, name, origin, bytes).map(Arc::new)
    }

    /// The plugin version `sha256` from the compile cache alone (no bytes needed), if it is
    /// there; `size` is what the registry says of its bytes.
    pub fn load_cached(
        &self,
        name: &str,
        origin: &str,
        sha256: &str,
        size: usize,
    ) -> Option<Result<Arc<LoadedPlugin>, LoadError>> {
        plugin::load_cached(self, name, origin, sha256, size).map(|r| r.map(Arc::new))
    }
}
