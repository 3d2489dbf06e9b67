//! What a host registers at start, and again on SIGHUP ([`reload`]): the config file's plugins
//! (compiled here first) and jobs go into the control registry, which wins after that (a
//! stopped job stays stopped).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::{Config, PluginConfig};
use crate::model::short;
use crate::runtime::{LoadedPlugin, Runtime, sha256_hex};
use crate::store::control::Registry;

/// SIGHUP: read the config file at `path` again; register its plugins (new files, changed
/// bytes) and its new jobs, and apply its `[host] log` filter. What else changed (the
/// `[redis]`, `[admin]` and other `[host]` settings) needs a restart, and is logged as such.
/// A file that does not load is logged; the host goes on as it was.
pub async fn reload(
    path: &Path,
    running: &Config,
    runtime: Arc<Runtime>,
    mut registry: Registry,
    consumer: &str,
) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: the config file was not reloaded: {e}");
            return;
        }
    };
    match crate::logging::reload(config.host.log.as_deref()) {
        Ok(filter) => tracing::info!(%filter, "SIGHUP: log filter set"),
        Err(e) => tracing::error!("SIGHUP: the log filter was not changed: {e}"),
    }
    let mut restart = Vec::new();
    // `--data-dir` and `--admin` override the file at start: not a change of the file.
    let mut host = config.host.clone();
    host.log = running.host.log.clone();
    host.data_dir = running.host.data_dir.clone();
    let mut admin = config.admin.clone();
    admin.listen = running.admin.listen.clone();
    if host != running.host {
        restart.push("[host]");
    }
    if config.redis != running.redis {
        restart.push("[redis]");
    }
    if admin != running.admin {
        restart.push("[admin]");
    }
    if !restart.is_empty() {
        tracing::warn!(
            "SIGHUP: changes to {} apply at the next restart",
            restart.join(", ")
        );
    }
    let compile = config.clone();
    let loaded = tokio::task::spawn_blocking(move || load_plugins(&runtime, &compile)).await;
    let Ok((plugins, errors)) = loaded else {
        tracing::error!("SIGHUP: compiling the config file's plugins failed");
        return;
    };
    for e in &errors {
        tracing::error!("SIGHUP: {e:#}");
    }
    register_config(&mut registry, &config, &plugins, consumer).await;
    tracing::info!(
        plugins = config.plugins.len(),
        jobs = config.jobs.len(),
        "SIGHUP: config file reloaded"
    );
}

/// [`reload`] as a task of its own.
pub async fn reload_owned(
    path: std::path::PathBuf,
    running: Config,
    runtime: Arc<Runtime>,
    registry: Registry,
    consumer: String,
) {
    reload(&path, &running, runtime, registry, &consumer).await
}

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
    if let Err(e) = registry.mark_epoch(consumer).await {
        tracing::warn!("marking the registry's epoch failed (tried again later): {e}");
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
