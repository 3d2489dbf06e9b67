//! The control-plane commands: `plugin load|list|versions|rollback|unload` and
//! `job start|stop|resume|list|watch`. They change the registry in Redis
//! ([`store::control`]); every host applies the change within a second.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::config::{Config, JobConfig};
use crate::runtime::{Runtime, sha256_hex};
use crate::store::control::{JobState, PluginVersion, Refusal, Registry, short};
use crate::store::{self, Keys, jobs};

/// `user@host` of whoever runs the CLI, recorded with each version loaded.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{user}@{host}")
}

async fn registry(url: &str, config: &Config) -> anyhow::Result<Registry> {
    let conn = store::connect(url, Duration::from_secs(10))
        .await
        .with_context(|| format!("connecting to Redis at {}", store::redact_url(url)))?;
    Ok(Registry::new(conn, Keys::new(&config.host.prefix)))
}

/// A time in ms since the epoch, as RFC 3339 (UTC).
fn time(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// `plugin load PATH --name NAME`: checked here first (compiles, fits the world), so a
/// broken file never reaches the fleet; hosts still run `init` with each job's config and
/// refuse what fails there.
pub async fn plugin_load(
    url: &str,
    config: &Config,
    path: &Path,
    name: &str,
) -> anyhow::Result<ExitCode> {
    crate::config::check_name(name).map_err(|m| anyhow::anyhow!("--name: {m}"))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha = sha256_hex(&bytes);
    let runtime = Arc::new(Runtime::new(Some(&config.host.data_dir.join("cache")))?);
    let (n, origin, b) = (name.to_string(), path.display().to_string(), bytes.clone());
    tokio::task::spawn_blocking(move || runtime.load_bytes(&n, &origin, &b)).await??;
    let mut reg = registry(url, config).await?;
    let origin = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let (version, changed) = reg
        .load_plugin(name, &bytes, &sha, &origin.display().to_string(), &who())
        .await?;
    if changed {
        println!(
            "plugin {name}: version {} loaded ({} bytes); hosts switch within a second",
            short(&version.sha256),
            version.size
        );
    } else {
        println!(
            "plugin {name}: {} is already the current version",
            short(&version.sha256)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct PluginRow {
    name: String,
    #[serde(flatten)]
    version: PluginVersion,
    versions: usize,
    /// Versions hosts refused, by sha256.
    refused: BTreeMap<String, Refusal>,
    /// Running jobs using it.
    jobs: Vec<String>,
}

pub async fn plugin_list(url: &str, config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut reg = registry(url, config).await?;
    let snapshot = reg.snapshot().await?;
    let mut refusals = reg.all_refusals().await?;
    let mut rows = Vec::new();
    for (name, version) in &snapshot.plugins {
        rows.push(PluginRow {
            name: name.clone(),
            version: version.clone(),
            versions: reg
                .versions(name)
                .await?
                .iter()
                .map(|v| v.sha256.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len(),
            refused: refusals.remove(name).unwrap_or_default(),
            jobs: snapshot
                .jobs
                .iter()
                .filter(|(_, j)| &j.spec.plugin == name && j.state == JobState::Running)
                .map(|(n, _)| n.clone())
                .collect(),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<12} {:>10} {:>8}  {:<20} jobs",
        "plugin", "version", "bytes", "versions", "loaded by"
    );
    for r in &rows {
        println!(
            "{:<20} {:<12} {:>10} {:>8}  {:<20} {}",
            r.name,
            short(&r.version.sha256),
            r.version.size,
            r.versions,
            r.version.by,
            r.jobs.join(",")
        );
        if let Some(refusal) = r.refused.get(&r.version.sha256) {
            println!(
                "  REFUSED by {}: {} (its jobs keep the version they ran, if any)",
                refusal.host, refusal.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn plugin_versions(
    url: &str,
    config: &Config,
    name: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut reg = registry(url, config).await?;
    let versions = reg.versions(name).await?;
    if versions.is_empty() {
        bail!("no plugin named `{name}`");
    }
    let refused = reg.refusals(name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (i, v) in versions.iter().enumerate() {
        let mark = if i == 0 { "*" } else { " " };
        let refusal = refused
            .get(&v.sha256)
            .map(|r| format!("  refused by {}: {}", r.host, r.reason))
            .unwrap_or_default();
        println!(
            "{mark} {}  {:>10} bytes  at {}  by {}  from {}{refusal}",
            short(&v.sha256),
            v.size,
            time(v.loaded_at),
            v.by,
            v.origin
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn plugin_rollback(
    url: &str,
    config: &Config,
    name: &str,
    to: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut reg = registry(url, config).await?;
    let version = reg.rollback(name, to).await?;
    println!(
        "plugin {name}: back to version {}; hosts switch within a second",
        short(&version.sha256)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn plugin_unload(
    url: &str,
    config: &Config,
    name: &str,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let mut reg = registry(url, config).await?;
    let stopped = reg.unload(name, force).await?;
    if !stopped.is_empty() {
        println!("stopped jobs: {}", stopped.join(", "));
    }
    println!("plugin {name}: unloaded");
    Ok(ExitCode::SUCCESS)
}

/// Options of `job start` beyond name, source and plugin.
#[derive(Debug, Clone, clap::Args)]
pub struct JobOptions {
    /// The plugin's config, as key=value (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub plugin_config: Vec<String>,
    /// Entries per batch
    #[arg(long)]
    pub batch: Option<usize>,
    /// Deliveries before an event is dead-lettered
    #[arg(long)]
    pub max_deliveries: Option<u32>,
    /// Per-event deadline in ms
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Plugin memory cap in MiB
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Keep a status record of every event this many seconds (0: only of events that failed)
    #[arg(long)]
    pub done_ttl_s: Option<u64>,
    /// Where a new group starts: beginning or new
    #[arg(long)]
    pub start: Option<String>,
    /// Finish once the source is drained (the plugin gets `job-finished`)
    #[arg(long)]
    pub finite: bool,
    /// Entries idle this long (ms) on a consumer are taken over by a live host
    #[arg(long)]
    pub claim_idle_ms: Option<u64>,
}

/// The job a `job start` describes, with the defaults and checks of a `[[job]]`.
pub fn job_spec(
    name: &str,
    source: &str,
    plugin: &str,
    o: &JobOptions,
) -> anyhow::Result<JobConfig> {
    let mut table = toml::Table::new();
    table.insert("name".into(), name.into());
    table.insert("source".into(), source.into());
    table.insert("plugin".into(), plugin.into());
    let int = |v: u64| toml::Value::Integer(v as i64);
    if let Some(v) = o.batch {
        table.insert("batch".into(), int(v as u64));
    }
    if let Some(v) = o.max_deliveries {
        table.insert("max_deliveries".into(), int(v.into()));
    }
    if let Some(v) = o.deadline_ms {
        table.insert("deadline_ms".into(), int(v));
    }
    if let Some(v) = o.memory_mb {
        table.insert("memory_mb".into(), int(v));
    }
    if let Some(v) = o.done_ttl_s {
        table.insert("done_ttl_s".into(), int(v));
    }
    if let Some(v) = &o.start {
        table.insert("start".into(), v.as_str().into());
    }
    if o.finite {
        table.insert("finite".into(), true.into());
    }
    if let Some(v) = o.claim_idle_ms {
        table.insert("claim_idle_ms".into(), int(v));
    }
    let mut plugin_config = toml::Table::new();
    for kv in &o.plugin_config {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set takes KEY=VALUE, got {kv:?}"))?;
        plugin_config.insert(k.into(), v.into());
    }
    table.insert("config".into(), plugin_config.into());
    let spec: JobConfig = table.try_into().context("invalid job")?;
    spec.validate()
        .map_err(|(field, message)| anyhow::anyhow!("invalid job: {field}: {message}"))?;
    Ok(spec)
}

pub async fn job_start(url: &str, config: &Config, spec: &JobConfig) -> anyhow::Result<ExitCode> {
    let mut reg = registry(url, config).await?;
    let Some(version) = reg.plugin(&spec.plugin).await? else {
        bail!(
            "no plugin named `{}`: load it first with `sluice plugin load PATH --name {}`",
            spec.plugin,
            spec.plugin
        );
    };
    // Run `init` with this config here first: a job whose plugin refuses it is not started.
    let bytes = reg.blob(&version.sha256).await?.with_context(|| {
        format!(
            "the bytes of plugin `{}` are missing from Redis; load it again",
            spec.plugin
        )
    })?;
    let runtime = Arc::new(Runtime::new(Some(&config.host.data_dir.join("cache")))?);
    let (job, prefix) = (spec.clone(), config.host.prefix.clone());
    let origin = format!("registry version {}", short(&version.sha256));
    tokio::task::spawn_blocking(move || {
        let plugin = runtime.load_bytes(&job.plugin, &origin, &bytes)?;
        crate::service::prepare_handler(plugin, &job, &prefix, None).map(drop)
    })
    .await??;
    reg.start_job(spec, false).await?;
    println!(
        "job {}: started ({} → plugin {}); hosts pick it up within a second",
        spec.name, spec.source, spec.plugin
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn job_set_state(
    url: &str,
    config: &Config,
    name: &str,
    state: JobState,
) -> anyhow::Result<ExitCode> {
    let mut reg = registry(url, config).await?;
    reg.set_job_state(name, state).await?;
    let what = match state {
        JobState::Running => "resumed",
        JobState::Stopped | JobState::Finished => {
            "stopped (hosts finish and commit their batches in flight)"
        }
    };
    println!("job {name}: {what}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct JobRow {
    name: String,
    state: JobState,
    source: String,
    plugin: String,
    /// The plugin's current version.
    version: Option<String>,
    changed_at: u64,
    started_at: Option<u64>,
    /// Deliveries committed per second, over one second.
    rate: f64,
    status: Option<jobs::JobStatus>,
}

pub async fn job_list(url: &str, config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut reg = registry(url, config).await?;
    let keys = Keys::new(&config.host.prefix);
    let mut conn = store::connect(url, Duration::from_secs(10)).await?;
    let snapshot = reg.snapshot().await?;
    let mut before = BTreeMap::new();
    for name in snapshot.jobs.keys() {
        before.insert(name.clone(), jobs::status(&mut conn, &keys, name).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rows = Vec::new();
    for (name, entry) in &snapshot.jobs {
        let status = jobs::status(&mut conn, &keys, name).await?;
        let received = |s: &Option<jobs::JobStatus>| s.as_ref().map_or(0, |s| s.received);
        rows.push(JobRow {
            name: name.clone(),
            state: entry.state,
            source: entry.spec.source.clone(),
            plugin: entry.spec.plugin.clone(),
            version: snapshot
                .plugins
                .get(&entry.spec.plugin)
                .map(|v| v.sha256.clone()),
            changed_at: entry.changed_at,
            started_at: status.as_ref().and_then(|s| s.started_at),
            rate: received(&status).saturating_sub(received(&before[name])) as f64,
            status,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<8} {:<24} {:<24} {:<16} {:<12} {:>9} {:>9} {:>7} {:>7} {:>8}",
        "job",
        "state",
        "since",
        "source",
        "plugin",
        "version",
        "received",
        "failed",
        "dead",
        "pending",
        "rate/s"
    );
    for r in &rows {
        let s = r.status.clone().unwrap_or_default();
        println!(
            "{:<20} {:<8} {:<24} {:<24} {:<16} {:<12} {:>9} {:>9} {:>7} {:>7} {:>8.0}",
            r.name,
            // Running in the registry, but no host can run it until its plugin is loaded.
            if r.state == JobState::Running && r.version.is_none() {
                "waiting".to_string()
            } else {
                format!("{:?}", r.state).to_lowercase()
            },
            time(r.changed_at),
            r.source,
            r.plugin,
            r.version.as_deref().map(short).unwrap_or("-"),
            s.received,
            s.failed,
            s.dead,
            s.pending,
            r.rate
        );
    }
    if rows
        .iter()
        .any(|r| r.state == JobState::Running && r.version.is_none())
    {
        println!("waiting: the job's plugin is not loaded (sluice plugin load PATH --name NAME)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Live counters every second until Ctrl-C, or until the job is stopped or finished and has
/// nothing pending; exit 1 if the job had failures.
pub async fn job_watch(url: &str, config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let mut reg = registry(url, config).await?;
    let keys = Keys::new(&config.host.prefix);
    let mut conn = store::connect(url, Duration::from_secs(10)).await?;
    if reg.job(name).await?.is_none() {
        bail!("no job named `{name}`");
    }
    let mut last = None::<u64>;
    let mut failures: u64;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let entry = reg.job(name).await?;
        let status = jobs::status(&mut conn, &keys, name)
            .await?
            .unwrap_or_default();
        failures = status.failed + status.dead;
        let rate = last.map_or(0, |l| status.received.saturating_sub(l));
        last = Some(status.received);
        let state = entry.as_ref().map_or(JobState::Stopped, |e| e.state);
        println!(
            "{name}: {:<7} received {} acked {} skipped {} retried {} failed {} dead {} pending {} lag {} ({rate}/s)",
            format!("{state:?}").to_lowercase(),
            status.received,
            status.acked,
            status.skipped,
            status.retried,
            status.failed,
            status.dead,
            status.pending,
            status.lag.map_or("?".into(), |l| l.to_string()),
        );
        if state != JobState::Running && status.pending == 0 {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    Ok(if failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
