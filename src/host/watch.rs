//! `sluice run --plugins DIR`: the directory's `NAME.wasm` files are plugins. At start and
//! whenever one is created or changed, it is compiled and type-checked here, then loaded into
//! the registry as the current version of NAME (every host of the fleet then switches). A
//! file that does not load is logged and left out; a deleted file is left alone in the
//! registry (unload it with `sluice plugin unload`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::model::short;
use crate::runtime::{Runtime, sha256_hex};
use crate::store::control::{ControlError, Registry};

/// Quiet time after the last change of a file before it is read (a copy in progress).
const SETTLE: Duration = Duration::from_millis(250);

/// Watches a plugin directory until dropped.
pub struct PluginDir {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PluginDir {
    pub fn start(
        dir: &Path,
        registry: Registry,
        runtime: Arc<Runtime>,
        by: String,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        let initial: HashSet<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plugin_file(p))
            .collect();
        tracing::info!(dir = %dir.display(), files = initial.len(), "watching the plugin directory");
        let task = tokio::spawn(run(rx, initial, registry, runtime, by));
        Ok(PluginDir {
            _watcher: watcher,
            task,
        })
    }
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm") && path.is_file()
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    mut initial: HashSet<PathBuf>,
    mut registry: Registry,
    runtime: Arc<Runtime>,
    by: String,
) {
    let mut pending = initial.clone();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(event) => note(event, &mut pending),
                None => return,
            }
            continue;
        }
        // Wait until the files are quiet, then load them.
        while let Ok(Some(event)) = tokio::time::timeout(SETTLE, rx.recv()).await {
            note(event, &mut pending);
        }
        let mut again = HashSet::new();
        for path in std::mem::take(&mut pending) {
            let first = initial.remove(&path);
            match load(&path, first, &mut registry, &runtime, &by).await {
                Ok(()) => {}
                // Redis trouble: try again.
                Err(e) if e.downcast_ref::<ControlError>().is_some() => {
                    tracing::warn!(file = %path.display(), "loading the plugin file failed, retrying: {e:#}");
                    if first {
                        initial.insert(path.clone());
                    }
                    again.insert(path);
                }
                // The file itself is bad (or gone): wait for it to change.
                Err(e) => {
                    tracing::error!(file = %path.display(), "plugin file not loaded: {e:#}");
                }
            }
        }
        if !again.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pending.extend(again);
        }
    }
}

fn note(event: notify::Result<notify::Event>, pending: &mut HashSet<PathBuf>) {
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("watching the plugin directory: {e}");
            return;
        }
    };
    for path in event.paths {
        if path.extension().is_none_or(|e| e != "wasm") {
            continue;
        }
        match event.kind {
            EventKind::Remove(_) => {
                tracing::info!(file = %path.display(), "plugin file deleted; the plugin stays loaded (unload it with `sluice plugin unload`)");
            }
            EventKind::Create(_) | EventKind::Modify(_) if path.is_file() => {
                pending.insert(path);
            }
            _ => {}
        }
    }
}

/// Load a file as plugin NAME, unless it is the current version, or (for a file found at
/// start) any earlier version: a restart must not undo a rollback.
async fn load(
    path: &Path,
    at_start: bool,
    registry: &mut Registry,
    runtime: &Arc<Runtime>,
    by: &str,
) -> anyhow::Result<()> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("the file name is not UTF-8")?
        .to_string();
    crate::model::check_name(&name)
        .map_err(|m| anyhow::anyhow!("the file name makes an invalid plugin name: {m}"))?;
    let bytes = std::fs::read(path)?;
    let sha = sha256_hex(&bytes);
    if registry
        .plugin(&name)
        .await?
        .is_some_and(|v| v.sha256 == sha)
    {
        return Ok(());
    }
    if at_start
        && registry
            .versions(&name)
            .await?
            .iter()
            .any(|v| v.sha256 == sha)
    {
        tracing::info!(plugin = %name, file = %path.display(), "not loading a version loaded before (the registry's current version wins)");
        return Ok(());
    }
    let origin = path.display().to_string();
    let check = (runtime.clone(), name.clone(), origin.clone(), bytes.clone());
    tokio::task::spawn_blocking(move || check.0.load_bytes(&check.1, &check.2, &check.3)).await??;
    let (version, _) = registry
        .load_plugin(&name, &bytes, &sha, &origin, by)
        .await?;
    tracing::info!(plugin = %name, version = short(&version.sha256), file = %path.display(), "plugin file loaded");
    Ok(())
}
