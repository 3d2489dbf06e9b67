//! What a host registers at start: the config file's plugins (compiled here first) and jobs
//! go into the control registry, which wins after that (a stopped job stays stopped).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::{Config, PluginConfig};
use crate::model::short;
use crate::runtime::{LoadedPlugin, Runtime, sha256_hex};
use crate::store::control::Registry;

/// Load every configured plugin; a failure is returned per plugin, not fatal.
pub fn load_plugins(
    runtime: &Runtime,
    config: &Config,
) -> (HashMap<String, Arc<LoadedPlugin>>, Vec<anyhow::Error>) {
    let mut loaded = HashMap::new();
    let mut errors = Vec::new();
    for p in &config.plugins {
        match runtime.load_file(&p.name, &p.path) {
            Ok(plugin) => {
                loaded.insert(p.name.clone(), plugin);
            }
            Err(e) => errors.push(e.into()),
        }
    }
    (loaded, errors)
}

/// The config file's plugins and jobs go into the registry at start. A plugin file becomes
/// the current version unless its bytes are already among the plugin's versions (so a
/// restart does not undo a rollback or a live load); a job is registered unless a job of
/// that name exists (the registry's definition and state win).
pub async fn register_config(
    registry: &mut Registry,
    config: &Config,
    plugins: &HashMap<String, Arc<LoadedPlugin>>,
    consumer: &str,
) {
    // One bad entry (or a Redis hiccup) must not keep a host from serving the rest.
    for p in &config.plugins {
        let Some(loaded) = plugins.get(&p.name) else {
            continue;
        };
        if let Err(e) = register_plugin(registry, p, loaded, consumer).await {
            tracing::error!(plugin = %p.name, "registering the config file's plugin failed: {e:#}");
        }
    }
    for job in &config.jobs {
        match registry.start_job(job, true).await {
            Ok(true) => {}
            Ok(false) => {
                if registry
                    .job(&job.name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.spec != *job)
                {
                    tracing::info!(job = %job.name, "the registry holds another definition of this job; it wins (stop the job and start it again to change it)");
                }
            }
            Err(e) => {
                tracing::error!(job = %job.name, "registering the config file's job failed: {e}")
            }
        }
    }
}

async fn register_plugin(
    registry: &mut Registry,
    p: &PluginConfig,
    loaded: &LoadedPlugin,
    consumer: &str,
) -> anyhow::Result<()> {
    let known = registry.versions(&p.name).await?;
    if known.iter().any(|v| v.sha256 == loaded.sha256) {
        return Ok(());
    }
    let bytes = std::fs::read(&p.path)
        .with_context(|| format!("reading plugin file {}", p.path.display()))?;
    if sha256_hex(&bytes) != loaded.sha256 {
        bail!(
            "{} changed while starting; not registered",
            p.path.display()
        );
    }
    let origin = p.path.display().to_string();
    registry
        .load_plugin(&p.name, &bytes, &loaded.sha256, &origin, consumer)
        .await?;
    tracing::info!(plugin = %p.name, version = short(&loaded.sha256), "plugin registered from the config file");
    Ok(())
}
