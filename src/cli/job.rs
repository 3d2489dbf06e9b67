//! `sluice job start|stop|resume|list|watch|status`: jobs in the control registry (every host
//! applies a change within a second) and their counters.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::{Client, time};
use crate::model::{JobSpec, short};
use crate::store::control::JobState;
use crate::store::{jobs, listing};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Register a job and start it on every host; refused if the name exists and is not stopped
    Start {
        name: String,
        /// The input: stream:KEY or queue:NAME
        #[arg(long)]
        source: String,
        /// The plugin (loaded with `plugin load`)
        #[arg(long)]
        plugin: String,
        #[command(flatten)]
        options: Box<JobOptions>,
    },
    /// Stop a job on every host (in-flight batches are committed first)
    Stop { name: String },
    /// Start a stopped job again
    Resume { name: String },
    /// Every job: state, plugin version, counters, rate
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Live counters until Ctrl-C or until the job is stopped and drained; exit 1 if it had
    /// failures
    Watch { name: String },
    /// Counters and consumer-group state of a job, read from Redis
    Status {
        /// The job's name
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(c: &Client, command: &JobCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobCommand::Status { name, json } => job_status(c, name, *json).await,
        JobCommand::Start {
            name,
            source,
            plugin,
            options,
        } => job_start(c, &job_spec(name, source, plugin, options)?).await,
        JobCommand::Stop { name } => job_set_state(c, name, JobState::Stopped).await,
        JobCommand::Resume { name } => job_set_state(c, name, JobState::Running).await,
        JobCommand::List { json } => job_list(c, *json).await,
        JobCommand::Watch { name } => job_watch(c, name).await,
    }
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
    /// Budget of starting an instance (instantiating it and running `init`), in ms
    #[arg(long)]
    pub init_timeout_ms: Option<u64>,
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
    /// `acked`: trim source entries every consumer group acknowledged; `keep` (default)
    #[arg(long)]
    pub retention: Option<String>,
    /// With `--retention acked`: keep acknowledged entries at least this many seconds
    #[arg(long)]
    pub retention_keep_s: Option<u64>,
}

/// The job a `job start` describes, with the defaults and checks of a `[[job]]`.
pub fn job_spec(name: &str, source: &str, plugin: &str, o: &JobOptions) -> anyhow::Result<JobSpec> {
    let mut spec = JobSpec::new(name, source, plugin);
    let set = |field: &mut u64, v: Option<u64>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut spec.deadline_ms, o.deadline_ms);
    set(&mut spec.init_timeout_ms, o.init_timeout_ms);
    set(&mut spec.memory_mb, o.memory_mb);
    set(&mut spec.done_ttl_s, o.done_ttl_s);
    set(&mut spec.claim_idle_ms, o.claim_idle_ms);
    set(&mut spec.retention_keep_s, o.retention_keep_s);
    spec.batch = o.batch.unwrap_or(spec.batch);
    spec.max_deliveries = o.max_deliveries.unwrap_or(spec.max_deliveries);
    spec.finite = o.finite;
    if let Some(start) = &o.start {
        spec.start = serde_json::from_value(start.as_str().into()).with_context(|| {
            format!("invalid job: --start must be `beginning` or `new`, got {start:?}")
        })?;
    }
    if let Some(retention) = &o.retention {
        spec.retention = serde_json::from_value(retention.as_str().into()).with_context(|| {
            format!("invalid job: --retention must be `keep` or `acked`, got {retention:?}")
        })?;
    }
    for kv in &o.plugin_config {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set takes KEY=VALUE, got {kv:?}"))?;
        spec.config.insert(k.into(), v.into());
    }
    spec.validate()
        .map_err(|(field, message)| anyhow::anyhow!("invalid job: {field}: {message}"))?;
    Ok(spec)
}

pub async fn job_start(c: &Client, spec: &JobSpec) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
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
    let runtime = Arc::new(c.runtime()?);
    let (job, prefix) = (spec.clone(), c.prefix().to_string());
    let origin = format!("registry version {}", short(&version.sha256));
    tokio::task::spawn_blocking(move || {
        let plugin = runtime.load_bytes(&job.plugin, &origin, &bytes)?;
        crate::host::job::prepare_handler(plugin, &job, &prefix, None).map(drop)
    })
    .await??;
    reg.start_job(spec, false).await?;
    println!(
        "job {}: started ({} → plugin {}); hosts pick it up within a second",
        spec.name, spec.source, spec.plugin
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn job_set_state(c: &Client, name: &str, state: JobState) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    reg.set_job_state(name, state).await?;
    let what = match state {
        JobState::Running => "resumed",
        JobState::Stopped | JobState::Finished | JobState::Unknown => {
            "stopped (hosts finish and commit their batches in flight)"
        }
    };
    println!("job {name}: {what}");
    Ok(ExitCode::SUCCESS)
}

pub async fn job_list(c: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let mut conn = c.conn().await?;
    let rows = listing::jobs(&mut reg, &mut conn, &c.keys, Some(Duration::from_secs(1))).await?;
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
            if r.waiting {
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
            r.rate.unwrap_or(0.0)
        );
    }
    if rows.iter().any(|r| r.waiting) {
        println!("waiting: the job's plugin is not loaded (sluice plugin load PATH --name NAME)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Live counters every second until Ctrl-C, or until the job is stopped or finished and has
/// nothing pending; exit 1 if the job had failures.
pub async fn job_watch(c: &Client, name: &str) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let keys = &c.keys;
    let mut conn = c.conn().await?;
    if reg.job(name).await?.is_none() {
        bail!("no job named `{name}`");
    }
    let mut last = None::<u64>;
    let mut failures: u64;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let entry = reg.job(name).await?;
        let status = jobs::status(&mut conn, keys, name)
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
async fn job_status(c: &Client, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut conn = c.conn().await?;
    let keys = &c.keys;
    let Some(status) = jobs::status(&mut conn, keys, name).await? else {
        bail!(
            "no job named `{name}` in Redis (prefix `{}`): no host has run it",
            c.prefix()
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        let lag = status.lag.map_or("?".into(), |l| l.to_string());
        println!("job       {}", status.name);
        println!(
            "source    stream:{}  (group {})",
            status.source, status.group
        );
        println!("plugin    {}", status.plugin);
        println!("received  {}", status.received);
        println!("acked     {}", status.acked);
        println!("skipped   {}", status.skipped);
        println!("retried   {}", status.retried);
        println!("failed    {}", status.failed);
        println!("dead      {}", status.dead);
        if status.conflicts > 0 {
            println!(
                "conflicts {}  (batches handled again: another host wrote what they read)",
                status.conflicts
            );
        }
        println!(
            "pending   {}  (of which scheduled retries: {})",
            status.pending, status.scheduled
        );
        println!("dlq       {}", status.dead_letters);
        println!("lag       {lag}");
    }
    Ok(ExitCode::SUCCESS)
}
