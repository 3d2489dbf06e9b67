//! `sluice job start|update|show|delete|stop|resume|list|watch|status`: jobs in the control
//! registry (every host applies a change within a second), who runs them, and their counters.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::{Client, time};
use crate::model::{JobSpec, short};
use crate::store::control::{JobEntry, JobState, Registry};
use crate::store::listing::ShownState;
use crate::store::{hosts, jobs, listing};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Start a job as a new run on every host. A new job needs --source and --plugin; a
    /// stopped or finished one starts again with its stored definition, changed by the
    /// options given. Refused while the job is running
    Start {
        name: String,
        /// The input: stream:KEY or queue:NAME
        #[arg(long)]
        source: Option<String>,
        /// The plugin (loaded with `plugin load`)
        #[arg(long)]
        plugin: Option<String>,
        #[command(flatten)]
        options: Box<JobOptions>,
    },
    /// Change a job's definition, keeping its state and run: hosts running it restart it
    /// with the new definition (in-flight batches commit first)
    Update {
        name: String,
        /// Another plugin (the source cannot change: start a new job for that)
        #[arg(long)]
        plugin: Option<String>,
        #[command(flatten)]
        options: Box<JobOptions>,
    },
    /// A job's definition as stored (as a config file's [[job]]), its state, and which host
    /// runs which version
    Show {
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete a stopped job from the registry; --purge also deletes its consumer group,
    /// counters, retries, dead letters, status records and state
    Delete {
        name: String,
        /// Also delete everything the job keeps in Redis (not its source stream)
        #[arg(long)]
        purge: bool,
        /// Confirm: without it, says what would be deleted and exits 1
        #[arg(long)]
        yes: bool,
    },
    /// Stop a job on every host (in-flight batches are committed first)
    Stop { name: String },
    /// Start a stopped job again (the same run)
    Resume { name: String },
    /// Every job: state, plugin version served, live hosts, counters, lag, rate
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
        } => job_start(c, name, source.as_deref(), plugin.as_deref(), options).await,
        JobCommand::Update {
            name,
            plugin,
            options,
        } => job_update(c, name, plugin.as_deref(), options).await,
        JobCommand::Show { name, json } => job_show(c, name, *json).await,
        JobCommand::Delete { name, purge, yes } => job_delete(c, name, *purge, *yes).await,
        JobCommand::Stop { name } => job_set_state(c, name, JobState::Stopped).await,
        JobCommand::Resume { name } => job_set_state(c, name, JobState::Running).await,
        JobCommand::List { json } => job_list(c, *json).await,
        JobCommand::Watch { name } => job_watch(c, name).await,
    }
}

/// Every field of a job's definition but its name, source and plugin (the `[[job]]` fields
/// of the config file; README lists what each means). Unset options leave the field as it
/// is: the default for a new job, the stored value for `update` and a restart.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JobOptions {
    /// Set a key of the plugin's config, as KEY=VALUE (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub plugin_config: Vec<String>,
    /// Remove a key of the plugin's config (repeatable)
    #[arg(long = "unset", value_name = "KEY")]
    pub unset: Vec<String>,
    /// Entries per batch
    #[arg(long)]
    pub batch: Option<usize>,
    /// How long one read waits for new entries, in ms
    #[arg(long)]
    pub block_ms: Option<u64>,
    /// Per-event deadline in ms
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Budget of starting an instance (instantiating it and running `init`), in ms
    #[arg(long)]
    pub init_timeout_ms: Option<u64>,
    /// Plugin memory cap in MiB
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Deliveries before an event is dead-lettered
    #[arg(long)]
    pub max_deliveries: Option<u32>,
    /// First retry delay in ms (`retry_backoff.base_ms`)
    #[arg(long)]
    pub retry_base_ms: Option<u64>,
    /// Longest retry delay in ms (`retry_backoff.max_ms`)
    #[arg(long)]
    pub retry_max_ms: Option<u64>,
    /// Entries idle this long (ms) on a consumer are taken over by a live host
    #[arg(long)]
    pub claim_idle_ms: Option<u64>,
    /// Keep the status record of an event that ever failed this many seconds (0: none)
    #[arg(long)]
    pub status_ttl_s: Option<u64>,
    /// Keep a status record of every event this many seconds (0: only of events that failed)
    #[arg(long)]
    pub done_ttl_s: Option<u64>,
    /// Streams the plugin may emit to, comma-separated names or prefixes ending in `*`
    /// ("": any stream outside sluice's keys)
    #[arg(long, value_name = "LIST")]
    pub allowed_streams: Option<String>,
    /// Queues the plugin may enqueue to, comma-separated ("": any)
    #[arg(long, value_name = "LIST")]
    pub allowed_queues: Option<String>,
    /// Replicas that must have a batch's writes before it counts as committed
    #[arg(long)]
    pub wait_replicas: Option<u32>,
    /// How long one WAIT for replicas blocks, in ms
    #[arg(long)]
    pub wait_timeout_ms: Option<u64>,
    /// Largest input entry handed to the plugin, in bytes
    #[arg(long)]
    pub max_entry_bytes: Option<usize>,
    /// Where a new group starts: beginning or new
    #[arg(long)]
    pub start: Option<String>,
    /// `acked`: trim source entries every consumer group acknowledged; `keep` (default)
    #[arg(long)]
    pub retention: Option<String>,
    /// With `--retention acked`: keep acknowledged entries at least this many seconds
    #[arg(long)]
    pub retention_keep_s: Option<u64>,
    /// With `--retention acked`: how often a host trims, in ms
    #[arg(long)]
    pub retention_every_ms: Option<u64>,
    /// Finish once the source is drained (the plugin gets `job-finished`); `--finite=false`
    /// turns it off
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub finite: Option<bool>,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl JobOptions {
    /// Apply the options given to `spec`, then check it as `job start` and a `[[job]]` are.
    pub fn apply(&self, spec: &mut JobSpec) -> anyhow::Result<()> {
        fn set<T: Copy>(field: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *field = v;
            }
        }
        set(&mut spec.batch, self.batch);
        set(&mut spec.block_ms, self.block_ms);
        set(&mut spec.deadline_ms, self.deadline_ms);
        set(&mut spec.init_timeout_ms, self.init_timeout_ms);
        set(&mut spec.memory_mb, self.memory_mb);
        set(&mut spec.max_deliveries, self.max_deliveries);
        set(&mut spec.retry_backoff.base_ms, self.retry_base_ms);
        set(&mut spec.retry_backoff.max_ms, self.retry_max_ms);
        set(&mut spec.claim_idle_ms, self.claim_idle_ms);
        set(&mut spec.status_ttl_s, self.status_ttl_s);
        set(&mut spec.done_ttl_s, self.done_ttl_s);
        set(&mut spec.wait_replicas, self.wait_replicas);
        set(&mut spec.wait_timeout_ms, self.wait_timeout_ms);
        set(&mut spec.max_entry_bytes, self.max_entry_bytes);
        set(&mut spec.retention_keep_s, self.retention_keep_s);
        set(&mut spec.retention_every_ms, self.retention_every_ms);
        set(&mut spec.finite, self.finite);
        if let Some(streams) = &self.allowed_streams {
            spec.allowed_streams = list(streams);
        }
        if let Some(queues) = &self.allowed_queues {
            spec.allowed_queues = list(queues);
        }
        if let Some(start) = &self.start {
            spec.start = serde_json::from_value(start.as_str().into()).with_context(|| {
                format!("invalid job: --start must be `beginning` or `new`, got {start:?}")
            })?;
        }
        if let Some(retention) = &self.retention {
            spec.retention =
                serde_json::from_value(retention.as_str().into()).with_context(|| {
                    format!("invalid job: --retention must be `keep` or `acked`, got {retention:?}")
                })?;
        }
        for key in &self.unset {
            spec.config.remove(key);
        }
        for kv in &self.plugin_config {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set takes KEY=VALUE, got {kv:?}"))?;
            spec.config.insert(k.into(), v.into());
        }
        spec.validate()
            .map_err(|(field, message)| anyhow::anyhow!("invalid job: {field}: {message}"))
    }
}

/// The job a `job start` of a new job describes, with the defaults and checks of a `[[job]]`.
pub fn job_spec(name: &str, source: &str, plugin: &str, o: &JobOptions) -> anyhow::Result<JobSpec> {
    let mut spec = JobSpec::new(name, source, plugin);
    o.apply(&mut spec)?;
    Ok(spec)
}

/// Run `init` of the job's plugin (its current version) with the job's config here first:
/// a job whose plugin refuses it is not started or changed.
async fn check_plugin(c: &Client, reg: &mut Registry, spec: &JobSpec) -> anyhow::Result<()> {
    let Some(version) = reg.plugin(&spec.plugin).await? else {
        bail!(
            "no plugin named `{}`: load it first with `sluice plugin load PATH --name {}`",
            spec.plugin,
            spec.plugin
        );
    };
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
        // Its message says it all: not its chain too.
        crate::host::job::prepare_handler(plugin, &job, &prefix, None)
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await?
}

/// How many live hosts there are, said after a change every host follows.
async fn say_hosts(c: &Client, what: &str) -> anyhow::Result<()> {
    let mut conn = c.conn().await?;
    let live = hosts::list(&mut conn, &c.keys, false).await?.len();
    match live {
        0 => eprintln!(
            "warning: no live host (`sluice hosts` lists none): {what} once a `sluice run` host \
             is up"
        ),
        1 => println!("1 live host: {what} within a second"),
        n => println!("{n} live hosts: {what} within a second"),
    }
    Ok(())
}

pub async fn job_start(
    c: &Client,
    name: &str,
    source: Option<&str>,
    plugin: Option<&str>,
    options: &JobOptions,
) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let (spec, again) = match reg.job(name).await? {
        Some(e) if e.state == JobState::Running => bail!(
            "job `{name}` is running: change it with `sluice job update {name} …`, or stop it \
             first (`sluice job stop {name}`)"
        ),
        Some(e) => {
            let mut spec = e.spec;
            if let Some(source) = source {
                spec.source = source.to_string();
            }
            if let Some(plugin) = plugin {
                spec.plugin = plugin.to_string();
            }
            options.apply(&mut spec)?;
            (spec, true)
        }
        None => {
            let (Some(source), Some(plugin)) = (source, plugin) else {
                bail!("no job named `{name}`: a new job needs --source and --plugin");
            };
            (job_spec(name, source, plugin, options)?, false)
        }
    };
    check_plugin(c, &mut reg, &spec).await?;
    reg.start_job(&spec, false).await?;
    let run = reg.job(name).await?.map_or(0, |e| e.run);
    println!(
        "job {}: started, run {run} ({} → plugin {}){}",
        spec.name,
        spec.source,
        spec.plugin,
        if again {
            "; its stored definition, with the options given"
        } else {
            ""
        }
    );
    say_hosts(c, "hosts pick it up").await?;
    Ok(ExitCode::SUCCESS)
}

/// The fields where two definitions differ: (field, old, new), as JSON text.
fn changes(old: &JobSpec, new: &JobSpec) -> Vec<(String, String, String)> {
    let (old, new) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Vec::new();
    };
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| {
            let was = old.get(k).map_or("-".into(), |o| o.to_string());
            (k.clone(), was, v.to_string())
        })
        .collect()
}

pub async fn job_update(
    c: &Client,
    name: &str,
    plugin: Option<&str>,
    options: &JobOptions,
) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let Some(current) = reg.job(name).await? else {
        bail!(
            "no job named `{name}` (start it with `sluice job start {name} --source … --plugin …`)"
        );
    };
    let mut spec = current.spec.clone();
    if let Some(plugin) = plugin {
        spec.plugin = plugin.to_string();
    }
    options.apply(&mut spec)?;
    let changed = changes(&current.spec, &spec);
    if changed.is_empty() {
        println!("job {name}: unchanged");
        return Ok(ExitCode::SUCCESS);
    }
    check_plugin(c, &mut reg, &spec).await?;
    let read = current.spec.clone();
    reg.update_job(
        name,
        |entry| {
            if entry.spec != read {
                return Err(crate::store::control::ControlError::Refused(format!(
                    "job `{name}` was changed meanwhile; look again (`sluice job show {name}`)"
                )));
            }
            Ok(Some(spec.clone()))
        },
        None,
    )
    .await?;
    println!("job {name}: updated");
    for (field, was, now) in &changed {
        println!("  {field}: {was} → {now}");
    }
    match current.state {
        JobState::Running => {
            say_hosts(c, "hosts running it restart it with the new definition").await?
        }
        _ => println!(
            "it is {}: the new definition applies when it runs again",
            format!("{:?}", current.state).to_lowercase()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `job show --json` prints.
#[derive(serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    row: &'a listing::JobRow,
    /// Whether the definition is the one a config file last gave it.
    from_config_file: bool,
    spec: &'a JobSpec,
}

pub async fn job_show(c: &Client, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let mut conn = c.conn().await?;
    let Some(entry) = reg.job(name).await? else {
        bail!("no job named `{name}`");
    };
    let Some(row) = listing::job(&mut reg, &mut conn, &c.keys, name).await? else {
        bail!("no job named `{name}`");
    };
    let from_file = entry.file_spec.as_deref()
        == Some(crate::store::control::spec_digest(&entry.spec).as_str());
    if json {
        let shown = Shown {
            row: &row,
            from_config_file: from_file,
            spec: &entry.spec,
        };
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_show(&entry, &row, from_file)?;
    Ok(ExitCode::SUCCESS)
}

fn print_show(entry: &JobEntry, row: &listing::JobRow, from_file: bool) -> anyhow::Result<()> {
    println!("job      {}", row.name);
    println!(
        "state    {} (run {}, since {})",
        row.state.as_str(),
        row.run,
        time(row.changed_at)
    );
    if let Some(at) = row.updated_at {
        println!("updated  {}", time(at));
    }
    println!(
        "defined  {}",
        if from_file {
            "by a config file (as it was when a host last registered it)"
        } else if entry.file_spec.is_some() {
            "by a config file, then changed with `job update`"
        } else {
            "with `job start` / `job update`"
        }
    );
    println!(
        "plugin   {} (current version {})",
        row.plugin,
        row.current
            .as_deref()
            .map(short)
            .unwrap_or("none: not loaded")
    );
    if let Some(r) = &row.refused {
        println!("refused  by {}: {}", r.host, r.reason);
    }
    if row.hosts.is_empty() {
        println!("hosts    none live");
    }
    for (i, h) in row.hosts.iter().enumerate() {
        let label = if i == 0 { "hosts" } else { "" };
        println!("{label:<8} {} serves {}", h.consumer, short(&h.version));
    }
    #[derive(serde::Serialize)]
    struct File<'a> {
        job: [&'a JobSpec; 1],
    }
    println!("\n# the definition, as a config file's [[job]]");
    print!("{}", toml::to_string(&File { job: [&entry.spec] })?);
    Ok(())
}

pub async fn job_delete(
    c: &Client,
    name: &str,
    purge: bool,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let mut conn = c.conn().await?;
    let Some(entry) = reg.job(name).await? else {
        bail!("no job named `{name}`");
    };
    if entry.state == JobState::Running {
        bail!("job `{name}` is running; stop it first (`sluice job stop {name}`)");
    }
    let source = c.keys.source_stream(&entry.spec);
    if !yes {
        eprintln!("would delete job `{name}` from the registry");
        if purge {
            let dead = jobs::status(&mut conn, &c.keys, name)
                .await?
                .map_or(0, |s| s.dead_letters);
            eprintln!(
                "and everything it keeps in Redis: its consumer group on `{source}`, counters, \
                 retries, {dead} dead letters, status records, kv, counters and windows (the \
                 source stream stays)"
            );
        }
        eprintln!("run again with --yes to do it");
        return Ok(ExitCode::from(1));
    }
    if purge {
        // A host still stopping it may commit a last batch: wait until none runs it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let runners = hosts::runners(&hosts::list(&mut conn, &c.keys, false).await?);
            let Some(still) = runners.get(name) else {
                break;
            };
            if tokio::time::Instant::now() > deadline {
                let names: Vec<&str> = still.iter().map(|(h, _)| h.as_str()).collect();
                bail!(
                    "hosts still run job `{name}` 30 s after it was stopped: {}; nothing deleted",
                    names.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    reg.delete_job(name).await?;
    println!("job {name}: deleted from the registry");
    if purge {
        let purged = jobs::purge(&mut conn, &c.keys, &entry.spec).await?;
        println!(
            "purged: {} keys, {} consumer groups (the source stream `{source}` stays)",
            purged.keys, purged.groups
        );
    } else {
        println!(
            "its group, counters and dead letters stay (a job of the same name continues them; --purge deletes them)"
        );
    }
    if entry.file_spec.is_some() {
        println!(
            "note: a config file defines it; remove its [[job]] there too, or a host registers it again at start"
        );
    }
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
        "{:<20} {:<8} {:<24} {:<24} {:<16} {:<12} {:<12} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8}",
        "job",
        "state",
        "since",
        "source",
        "plugin",
        "version",
        "hosts",
        "received",
        "failed",
        "dead",
        "pending",
        "lag",
        "rate/s"
    );
    for r in &rows {
        let s = r.status.clone().unwrap_or_default();
        let hosts = match (r.state, r.hosts.len()) {
            (ShownState::Running, 0) => "no live host".to_string(),
            (_, n) => n.to_string(),
        };
        let version = match (&r.version, &r.refused) {
            (Some(v), _) => short(v).to_string(),
            (None, Some(_)) => "refused".to_string(),
            (None, None) => "-".to_string(),
        };
        println!(
            "{:<20} {:<8} {:<24} {:<24} {:<16} {:<12} {:<12} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8.0}",
            r.name,
            r.state.as_str(),
            time(r.changed_at),
            r.source,
            r.plugin,
            version,
            hosts,
            s.received,
            s.failed,
            s.dead,
            s.pending,
            s.lag.map_or("?".into(), |l| l.to_string()),
            r.rate.unwrap_or(0.0)
        );
    }
    if rows.iter().any(|r| r.state == ShownState::Waiting) {
        println!("waiting: the job's plugin is not loaded (sluice plugin load PATH --name NAME)");
    }
    if rows
        .iter()
        .any(|r| r.version.is_none() && r.refused.is_some())
    {
        println!(
            "refused: hosts refused the plugin's current version (sluice job show NAME says why)"
        );
    }
    if rows
        .iter()
        .any(|r| r.state == ShownState::Running && r.hosts.is_empty())
    {
        println!("no live host: no `sluice run` host runs the job now (sluice hosts)");
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
    let mut reg = c.registry().await?;
    let mut conn = c.conn().await?;
    let keys = &c.keys;
    let row = listing::job(&mut reg, &mut conn, keys, name).await?;
    // A job deleted from the registry whose counters are still in Redis is shown too.
    let status = match &row {
        Some(r) => r.status.clone(),
        None => jobs::status(&mut conn, keys, name).await?,
    };
    if row.is_none() && status.is_none() {
        bail!("no job named `{name}` (prefix `{}`)", c.prefix());
    }
    if json {
        #[derive(serde::Serialize)]
        struct Status<'a> {
            name: &'a str,
            state: Option<ShownState>,
            source: Option<&'a str>,
            plugin: Option<&'a str>,
            version: Option<&'a str>,
            #[serde(flatten)]
            counters: jobs::JobStatus,
        }
        let counters = status.clone().unwrap_or_default();
        let shown = Status {
            name,
            state: row.as_ref().map(|r| r.state),
            source: row.as_ref().map(|r| r.source.as_str()),
            plugin: row.as_ref().map(|r| r.plugin.as_str()),
            version: row.as_ref().and_then(|r| r.version.as_deref()),
            counters: jobs::JobStatus {
                name: name.to_string(),
                ..counters
            },
        };
        let mut value = serde_json::to_value(&shown)?;
        // One `source` form everywhere: the job's (`stream:KEY`, `queue:NAME`); the stream
        // it reads is `stream`.
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "stream".into(),
                status.as_ref().map(|s| s.source.clone()).into(),
            );
            if let Some(r) = &row {
                object.insert("source".into(), r.source.clone().into());
            }
            if status.is_none() {
                object.insert("group".into(), keys.group(name).into());
            }
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = status.clone().unwrap_or_default();
    println!("job       {name}");
    match &row {
        Some(r) => {
            println!("state     {}", r.state.as_str());
            println!("source    {}  (group {})", r.source, keys.group(name));
            println!(
                "plugin    {}  (version served: {})",
                r.plugin,
                r.version
                    .as_deref()
                    .map(short)
                    .unwrap_or("none: no live host runs it")
            );
        }
        None => {
            println!("state     deleted from the registry (its counters remain)");
            println!("source    stream:{}  (group {})", s.source, s.group);
            println!("plugin    {}", s.plugin);
        }
    }
    if status.is_none() {
        println!("no host has run it yet: no counters");
        return Ok(ExitCode::SUCCESS);
    }
    let lag = s.lag.map_or("?".into(), |l| l.to_string());
    println!("received  {}", s.received);
    println!("acked     {}", s.acked);
    println!("skipped   {}", s.skipped);
    println!("retried   {}", s.retried);
    println!("failed    {}", s.failed);
    println!("dead      {}", s.dead);
    if s.conflicts > 0 {
        println!(
            "conflicts {}  (batches handled again: another host wrote what they read)",
            s.conflicts
        );
    }
    println!(
        "pending   {}  (of which scheduled retries: {})",
        s.pending, s.scheduled
    );
    println!("dlq       {}", s.dead_letters);
    println!("lag       {lag}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every field of a job's definition can be set from the command line.
    #[test]
    fn every_spec_field_has_an_option() {
        #[derive(clap::Parser)]
        struct Probe {
            #[command(flatten)]
            options: JobOptions,
        }
        let command = Probe::command();
        let flags: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(String::from))
            .collect();
        let spec = serde_json::to_value(JobSpec::new("j", "stream:s", "p")).unwrap();
        for field in spec.as_object().unwrap().keys() {
            let wanted: Vec<String> = match field.as_str() {
                "name" | "source" | "plugin" => continue,
                "config" => vec!["set".into(), "unset".into()],
                "retry_backoff" => vec!["retry-base-ms".into(), "retry-max-ms".into()],
                other => vec![other.replace('_', "-")],
            };
            for flag in &wanted {
                assert!(flags.contains(flag), "spec field `{field}` has no --{flag}");
            }
        }
    }

    #[test]
    fn options_change_only_what_they_name() {
        let mut spec = JobSpec::new("j", "stream:s", "p");
        spec.config.insert("keep".into(), "1".into());
        spec.config.insert("drop".into(), "2".into());
        let options = JobOptions {
            batch: Some(7),
            allowed_streams: Some("out, audit:*".into()),
            unset: vec!["drop".into()],
            finite: Some(true),
            ..JobOptions::default()
        };
        options.apply(&mut spec).unwrap();
        assert_eq!(spec.batch, 7);
        assert_eq!(spec.allowed_streams, ["out", "audit:*"]);
        assert!(spec.finite);
        assert_eq!(spec.config.keys().collect::<Vec<_>>(), ["keep"]);
        assert_eq!(spec.block_ms, crate::model::spec::defaults::BLOCK_MS);
        JobOptions {
            allowed_streams: Some(String::new()),
            ..JobOptions::default()
        }
        .apply(&mut spec)
        .unwrap();
        assert!(spec.allowed_streams.is_empty());
    }
}
