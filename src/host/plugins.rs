//! The plugin versions a host has compiled, by sha256: from memory, else from the compile
//! cache in the data dir (no bytes needed), else fetched from the registry, checked against
//! their sha256 and compiled (which fills the cache). Compiling runs on a blocking thread.
//!
//! Why no copy of the bytes on disk: the compile cache already keeps every version this data
//! dir has compiled, keyed by sha256, and a version not in it has to be compiled anyway.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::model::short;
use crate::runtime::{LoadedPlugin, Runtime, sha256_hex};
use crate::store::control::{PluginVersion, Registry};

/// Why a version could not be had.
pub enum Failure {
    /// The version is unusable for this job (does not load, `init` refuses): recorded, not
    /// tried again.
    Refused(String),
    /// Redis trouble: tried again at the next reconcile.
    Transient(anyhow::Error),
}

/// Compiled plugin versions, by sha256.
pub struct Plugins {
    runtime: Arc<Runtime>,
    loaded: HashMap<String, Arc<LoadedPlugin>>,
}

impl Plugins {
    /// Starting with the config file's plugins, already compiled.
    pub fn new(runtime: Arc<Runtime>, loaded: impl IntoIterator<Item = Arc<LoadedPlugin>>) -> Self {
        Plugins {
            runtime,
            loaded: loaded.into_iter().map(|p| (p.sha256.clone(), p)).collect(),
        }
    }

    /// Version `sha256` as plugin `name`, if this host has it compiled.
    pub fn known(&self, sha256: &str, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.loaded.get(sha256).map(|p| p.named(name))
    }

    /// The runtime versions are compiled with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Keep a version compiled off the reconcile loop.
    pub fn insert(&mut self, plugin: Arc<LoadedPlugin>) {
        self.loaded.insert(plugin.sha256.clone(), plugin);
    }

    /// Forget compiled versions other than these.
    pub fn retain(&mut self, keep: &HashSet<&String>) {
        self.loaded.retain(|sha, _| keep.contains(sha));
    }
}

/// How long compiling one version may take before the host gives up on it. Cranelift cannot
/// be interrupted: the compile goes on on its blocking thread, but the job no longer waits.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(300);

/// Version `version` of plugin `name`, compiled: from the compile cache in the data dir,
/// else fetched from the registry, checked against its sha256 and compiled (filling the
/// cache), within [`COMPILE_TIMEOUT`].
pub async fn fetch(
    runtime: &Arc<Runtime>,
    registry: &mut Registry,
    name: &str,
    version: &PluginVersion,
) -> Result<Arc<LoadedPlugin>, Failure> {
    let sha = version.sha256.clone();
    let origin = format!("{} ({})", version.origin, short(&sha));
    let rt = runtime.clone();
    let (n, o, s, size) = (name.to_string(), origin.clone(), sha.clone(), version.size);
    let cached = tokio::task::spawn_blocking(move || rt.load_cached(&n, &o, &s, size as usize))
        .await
        .map_err(|e| Failure::Transient(anyhow::anyhow!("loading panicked: {e}")))?;
    match cached {
        Some(Ok(loaded)) => Ok(loaded),
        // Compiled from these very bytes by this engine: compiling again would fail alike.
        Some(Err(e)) => Err(Failure::Refused(e.to_string())),
        None => compile(runtime, registry, name, &sha, origin).await,
    }
}

async fn compile(
    runtime: &Arc<Runtime>,
    registry: &mut Registry,
    name: &str,
    sha: &str,
    origin: String,
) -> Result<Arc<LoadedPlugin>, Failure> {
    let bytes = registry
        .blob(sha)
        .await
        .map_err(|e| Failure::Transient(e.into()))?
        // A version unloaded or replaced meanwhile: look again at the next reconcile.
        .ok_or_else(|| Failure::Transient(anyhow::anyhow!("its bytes are missing from Redis")))?;
    if sha256_hex(&bytes) != sha {
        return Err(Failure::Refused(
            "its bytes in Redis do not match its sha256".into(),
        ));
    }
    let runtime = runtime.clone();
    let name = name.to_string();
    let compiling = tokio::task::spawn_blocking(move || runtime.load_bytes(&name, &origin, &bytes));
    match tokio::time::timeout(COMPILE_TIMEOUT, compiling).await {
        Err(_) => Err(Failure::Refused(format!(
            "compiling it took over {} s",
            COMPILE_TIMEOUT.as_secs()
        ))),
        Ok(joined) => joined
            .map_err(|e| Failure::Transient(anyhow::anyhow!("loading panicked: {e}")))?
            .map_err(|e| Failure::Refused(e.to_string())),
    }
}
