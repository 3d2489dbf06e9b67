//! What a host registers at start, and again on SIGHUP ([`reload`]): the config file's plugins
//! (compiled here first) and jobs go into the control registry. A job's definition in the
//! file is applied when the file's job is new or was edited ([`register_job`]); its state is
//! the registry's (a stopped job stays stopped).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::{Config, PluginConfig};
use crate::model::{JobSpec, short};
use crate::runtime::{LoadedPlugin, Runtime, sha256_hex};
use crate::store::control::{Registry, spec_digest};

/// SIGHUP: read the config file at `path` again; register its plugins (new files, changed
/// bytes) and its jobs (new or edited ones), and apply its `[host] log` filter. What else
/// changed (the `[redis]`, `[admin]`, `[[ingest]]` and other `[host]` settings) needs a restart, and is
/// logged as such.
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
    if config.ingest != running.ingest {
        restart.push("[[ingest]]");
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

/// The config file's plugins and jobs go into the registry at start (and on SIGHUP). A
/// plugin file becomes the current version unless its bytes are already among the plugin's
/// versions (so a restart does not undo a rollback or a live load). For jobs, see
/// [`register_job`].
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
        if let Err(e) = register_job(registry, job).await {
            tracing::error!(job = %job.name, "registering the config file's job failed: {e}");
        }
    }
    if let Err(e) = registry.mark_epoch(consumer).await {
        tracing::warn!("marking the registry's epoch failed (tried again later): {e}");
    }
}

/// A config file's job: registered (running) if the registry has no job of that name; else
/// the file's definition replaces the registry's only if it is not the one the file last
/// gave (the file was edited since): the newest intent wins, so a `job update` holds until
/// the file's job is edited, and an edited file is not undone by an older `job update`. The
/// job's state is the registry's either way (a stopped job stays stopped).
async fn register_job(registry: &mut Registry, job: &JobSpec) -> anyhow::Result<()> {
    if registry.start_job(job, true).await? {
        tracing::info!(job = %job.name, "job registered from the config file");
        return Ok(());
    }
    let digest = spec_digest(job);
    let mut kept = None;
    // What the registry held: (a file gave it a definition, `job update` changed it since).
    let mut was = (false, false);
    let updated = registry
        .update_job(
            &job.name,
            |entry| {
                if entry.file_spec.as_deref() == Some(digest.as_str()) {
                    kept = Some(entry.spec != *job);
                    return Ok(None);
                }
                let from_file = entry.file_spec.is_some();
                let updated = from_file && entry.file_spec != Some(spec_digest(&entry.spec));
                was = (from_file, updated);
                Ok(Some(job.clone()))
            },
            Some(digest.clone()),
        )
        .await?;
    if let Some(entry) = updated {
        let state = entry.state;
        match was {
            (false, _) => {
                tracing::warn!(job = %job.name, ?state, "the config file defines a job that was started with `job start`: the file's definition applied (hosts running it restart it)")
            }
            (true, updated) => {
                tracing::info!(job = %job.name, ?state, replaced_update = updated, "the config file's definition of the job is not the one a config file last gave it (this file was edited, or another host's file defines the job differently: keep one file per fleet): applied (hosts running it restart it)")
            }
        }
    } else if kept == Some(true) {
        tracing::info!(job = %job.name, "the registry's definition of the job differs from the config file's, which has not changed since it was applied: the registry's holds (`sluice job show {}`)", job.name);
    }
    Ok(())
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
