//! The command line: `run`, `check-config`, `publish`, `job status`, `dlq list|replay|purge`,
//! `event get`, `bench`.
//!
//! `--config` (env `SLUICE_CONFIG`, default `sluice.toml`), `--redis` (env
//! `SLUICE_REDIS_URL`) and `--data-dir` (env `SLUICE_DATA_DIR`) apply to every command.
//! Commands that only talk to Redis find it in this order: `--redis`, `[redis] url`, the
//! embedded Redis of a `sluice run` using the same data dir.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::bench::{self, BenchArgs};
use crate::config::{Config, ConfigError};
use crate::runtime::{Limits, Runtime};
use crate::store::control::JobState;
use crate::store::{self, Keys, dlq, embedded, events, jobs};
use crate::{ctl, service, tools};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Ingest events from Redis and run each one through a sandboxed WebAssembly plugin"
)]
pub struct Cli {
    /// Config file [default: sluice.toml]
    #[arg(long, short, global = true, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL; overrides `[redis] url` (redis://host:port/db, unix:///path)
    #[arg(long, global = true, env = "SLUICE_REDIS_URL")]
    pub redis: Option<String>,
    /// Data directory (compile cache, embedded Redis); overrides `[host] data_dir`
    #[arg(long, global = true, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: every job of the registry (the config file's are registered at start),
    /// following plugin and job changes live, until SIGTERM/SIGINT
    Run {
        /// Also load every NAME.wasm of this directory as plugin NAME, and watch it for new
        /// and changed files [default: `[plugins] dir`]
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
    /// Validate the config and load every plugin (compile, type-check, init) without side effects
    CheckConfig,
    /// Append entries to a stream: `sluice publish events text=hello n={i} --count 100`
    Publish {
        /// The stream key
        stream: String,
        /// Fields as name=value; `{i}` in a value becomes the entry's index (0-based)
        #[arg(required = true, value_name = "FIELD=VALUE")]
        fields: Vec<String>,
        /// How many entries to append
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Manage jobs: start, stop, resume, list, watch, status
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Plugins: load versions into Redis, list, roll back, unload; authors' tools (new,
    /// inspect, test)
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Dead letters of a job: list, replay, purge
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Events of a job
    Event {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Measure throughput and latency against baselines, in one process
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum PluginCommand {
    /// Start a plugin project: WIT, a small plugin, build.sh, events.jsonl that `plugin test`
    /// passes
    New {
        /// The plugin's name (lower-case letters, digits, `-`, `_`)
        name: String,
        #[arg(long, value_enum)]
        lang: tools::Lang,
        /// Where to create it [default: ./NAME]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Store a component in Redis as the current version of NAME; every host switches to it
    Load {
        path: PathBuf,
        /// The plugin's name, as jobs refer to it
        #[arg(long)]
        name: String,
    },
    /// Plugins in Redis: current version, size, who loaded it, jobs using it, refusals
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// A plugin's versions, newest (current) first
    Versions {
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier version current again (default: the one before the current)
    Rollback {
        name: String,
        /// The version's sha256 or a unique prefix of it
        #[arg(long)]
        to: Option<String>,
    },
    /// Remove a plugin; refused while a running job uses it unless --force (stops them)
    Unload {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// What a component is: size, sha256, imports, exports, whether it fits our world
    Inspect {
        path: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Run a plugin on events from a JSON-lines file, with the host's runtime and limits and
    /// job state in memory; exits 1 if any event failed
    Test {
        path: PathBuf,
        /// One event per line: {"fields": {"name": "value", …}, "id": …, "delivery_count": …}
        #[arg(long)]
        events: PathBuf,
        /// The job's config for the plugin, as key=value (repeatable). Not `--config`: that
        /// names the config file on every command.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        plugin_config: Vec<String>,
        /// Per-event deadline in ms
        #[arg(long, default_value_t = 1000)]
        deadline_ms: u64,
        /// Memory cap in MiB
        #[arg(long, default_value_t = 64)]
        memory_mb: u64,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The job's dead letters, oldest first
    List {
        job: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to the source stream as new entries
    Replay(DlqSelection),
    /// Delete dead letters
    Purge(DlqSelection),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct DlqSelection {
    job: String,
    /// A dead letter's id (repeatable)
    #[arg(long)]
    id: Vec<String>,
    /// Every dead letter of the job
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Status of one source entry: pending, processing, retrying, done, dead
    Get {
        job: String,
        /// The entry id in the source stream
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

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
        options: crate::ctl::JobOptions,
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

/// Log to stderr; `SLUICE_LOG` (or `RUST_LOG`) sets the filter, default `info`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Run { plugins } => {
            // Hosts are stateless: without a config file, a host runs what the registry holds.
            let config = load_config(&cli, false)?;
            if cli.config.is_none() && !Path::new("sluice.toml").exists() {
                tracing::info!("no config file (sluice.toml): running the jobs of the registry");
            }
            let dir = plugins.clone().or(config.plugins_dir.dir.clone());
            service::run(config, cli.redis.clone(), dir, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        // Both call into plugins: on a blocking thread (WASI output blocks on the runtime).
        Command::CheckConfig => {
            let config = load_config(&cli, true)?;
            let path = cli
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("sluice.toml"));
            tokio::task::spawn_blocking(move || check_config(&path, &config)).await?
        }
        Command::Publish {
            stream,
            fields,
            count,
        } => {
            let fields = parse_fields(fields)?;
            let config = load_config(&cli, false)?;
            let url = client_url(&cli, &config).await?;
            publish(&url, stream, &fields, *count).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Job { command } => {
            let config = load_config(&cli, false)?;
            let url = client_url(&cli, &config).await?;
            match command {
                JobCommand::Status { name, json } => job_status(&url, &config, name, *json).await,
                JobCommand::Start {
                    name,
                    source,
                    plugin,
                    options,
                } => {
                    let spec = ctl::job_spec(name, source, plugin, options)?;
                    ctl::job_start(&url, &config, &spec).await
                }
                JobCommand::Stop { name } => {
                    ctl::job_set_state(&url, &config, name, JobState::Stopped).await
                }
                JobCommand::Resume { name } => {
                    ctl::job_set_state(&url, &config, name, JobState::Running).await
                }
                JobCommand::List { json } => ctl::job_list(&url, &config, *json).await,
                JobCommand::Watch { name } => ctl::job_watch(&url, &config, name).await,
            }
        }
        Command::Plugin { command } if command.uses_redis() => {
            let config = load_config(&cli, false)?;
            let url = client_url(&cli, &config).await?;
            registry_plugin_command(&url, &config, command).await
        }
        // Authors' tools call into plugins: on a blocking thread.
        Command::Plugin { command } => {
            let command = command.clone();
            tokio::task::spawn_blocking(move || plugin_command(&command)).await?
        }
        Command::Dlq { command } => {
            let config = load_config(&cli, false)?;
            let url = client_url(&cli, &config).await?;
            dlq_command(&url, &config, command).await
        }
        Command::Event {
            command: EventCommand::Get { job, id, json },
        } => {
            let config = load_config(&cli, false)?;
            let url = client_url(&cli, &config).await?;
            event_get(&url, &config, job, id, *json).await
        }
        Command::Bench(args) => {
            let config = load_config(&cli, false)?;
            let url = cli.redis.clone().or(config.redis.url.clone());
            bench::run(args, url).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The config from `--config` (or `sluice.toml`). When not `required` and no file was named
/// or found, the defaults.
fn load_config(cli: &Cli, required: bool) -> Result<Config, ConfigError> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("sluice.toml"));
    let mut config = if required || cli.config.is_some() || path.exists() {
        Config::load(&path)?
    } else {
        Config::default()
    };
    if let Some(dir) = &cli.data_dir {
        config.host.data_dir = dir.clone();
    }
    Ok(config)
}

/// Where a client command finds Redis.
async fn client_url(cli: &Cli, config: &Config) -> anyhow::Result<String> {
    if let Some(url) = cli.redis.clone().or(config.redis.url.clone()) {
        return Ok(url);
    }
    match embedded::running_url(&config.host.data_dir).await {
        Some(url) => Ok(url),
        None => bail!(
            "no Redis to talk to: set --redis, SLUICE_REDIS_URL or [redis] url, or start \
             `sluice run` (which starts an embedded Redis) with the same data dir ({})",
            config.host.data_dir.display()
        ),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    // A second signal means: stop now. Nothing is lost: uncommitted entries stay pending.
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting at once; uncommitted entries stay pending in Redis");
        std::process::exit(130);
    });
}

fn check_config(path: &Path, config: &Config) -> anyhow::Result<ExitCode> {
    println!("config {}: ok", path.display());
    let runtime = Runtime::with_cache(Some(&config.host.data_dir.join("cache")), false)?;
    let (plugins, errors) = service::load_plugins(&runtime, config);
    let mut ok = errors.is_empty();
    for e in &errors {
        println!("error: {e:#}");
    }
    for p in &config.plugins {
        if let Some(plugin) = plugins.get(&p.name) {
            println!(
                "plugin {}: ok ({}, {} bytes, sha256 {})",
                p.name,
                p.path.display(),
                plugin.size,
                &plugin.sha256[..16]
            );
        }
    }
    for job in &config.jobs {
        let Some(plugin) = plugins.get(&job.plugin) else {
            println!(
                "job {}: cannot run, plugin `{}` did not load",
                job.name, job.plugin
            );
            ok = false;
            continue;
        };
        match service::prepare_handler(plugin.clone(), job, &config.host.prefix, None) {
            Ok(_) => println!(
                "job {}: ok (stream {} → plugin {}, init accepted the config)",
                job.name,
                job.stream(&config.host.prefix),
                job.plugin
            ),
            Err(e) => {
                println!("error: {e:#}");
                ok = false;
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl PluginCommand {
    /// The commands that change or read the registry in Redis.
    fn uses_redis(&self) -> bool {
        !matches!(
            self,
            PluginCommand::New { .. } | PluginCommand::Inspect { .. } | PluginCommand::Test { .. }
        )
    }
}

async fn registry_plugin_command(
    url: &str,
    config: &Config,
    command: &PluginCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Load { path, name } => ctl::plugin_load(url, config, path, name).await,
        PluginCommand::List { json } => ctl::plugin_list(url, config, *json).await,
        PluginCommand::Versions { name, json } => {
            ctl::plugin_versions(url, config, name, *json).await
        }
        PluginCommand::Rollback { name, to } => {
            ctl::plugin_rollback(url, config, name, to.as_deref()).await
        }
        PluginCommand::Unload { name, force } => {
            ctl::plugin_unload(url, config, name, *force).await
        }
        other => bail!("not a registry command: {other:?}"),
    }
}

/// The authors' tools (no Redis).
fn plugin_command(command: &PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::New { name, lang, dir } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            tools::new_plugin(name, *lang, &dir)?;
            println!(
                "created {}: build it with {}/build.sh, then\n  sluice plugin test {}/{name}.wasm --events {}/events.jsonl",
                dir.display(),
                dir.display(),
                dir.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Inspect { path, json } => {
            let i = tools::inspect(path)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                println!("file      {} ({} bytes)", i.path, i.size);
                println!("sha256    {}", i.sha256);
                println!("kind      {}", i.kind);
                for import in &i.imports {
                    println!("import    {import}");
                }
                for export in &i.exports {
                    println!("export    {export}");
                }
                match &i.problem {
                    None => println!(
                        "world     fits sluice:plugin/plugin@0.1.0{}",
                        if i.stateful { " (uses job state)" } else { "" }
                    ),
                    Some(p) => println!("world     does not fit: {p}"),
                }
            }
            Ok(if i.fits_world {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PluginCommand::Test {
            path,
            events,
            plugin_config,
            deadline_ms,
            memory_mb,
            json,
        } => {
            let config = parse_fields(plugin_config)?.into_iter().collect();
            let limits = Limits {
                deadline: std::time::Duration::from_millis(*deadline_ms),
                memory_bytes: (*memory_mb as usize) << 20,
                ..Limits::default()
            };
            let events = tools::read_events(events)?;
            let runtime = Runtime::new(None)?;
            let plugin = runtime.load_file("plugin", path)?;
            let report = tools::run_test(plugin, &events, config, limits)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for e in &report.events {
                    println!(
                        "{}  {}  ({} µs, memory {} KiB)",
                        e.id,
                        e.result,
                        e.micros,
                        e.memory_bytes >> 10
                    );
                    for effect in &e.effects {
                        println!("    {effect}");
                    }
                    for log in &e.logs {
                        println!("    log {log}");
                    }
                }
                println!(
                    "{} events, {} failed; counters: {:?}",
                    report.events.len(),
                    report.failed,
                    report.counters
                );
            }
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        other => bail!("`sluice plugin {other:?}` needs Redis"),
    }
}

fn parse_fields(fields: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    fields
        .iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("field `{f}` is not name=value"),
        })
        .collect()
}

async fn publish(
    url: &str,
    stream: &str,
    fields: &[(String, String)],
    count: u64,
) -> anyhow::Result<()> {
    let mut conn = connect_client(url).await?;
    let templated = fields.iter().any(|(_, v)| v.contains("{i}"));
    let mut first: Option<String> = None;
    let mut last = String::new();
    let mut i = 0;
    while i < count {
        let chunk = (count - i).min(1000);
        let mut pipe = redis::pipe();
        for n in i..i + chunk {
            let cmd = pipe.cmd("XADD").arg(stream).arg("*");
            for (k, v) in fields {
                if templated {
                    cmd.arg(k).arg(v.replace("{i}", &n.to_string()));
                } else {
                    cmd.arg(k).arg(v);
                }
            }
        }
        let ids: Vec<String> = pipe.query_async(&mut conn).await?;
        if first.is_none() {
            first = ids.first().cloned();
        }
        last = ids.last().cloned().unwrap_or_default();
        i += chunk;
    }
    match first {
        Some(first) if count > 1 => {
            println!("published {count} entries to {stream} (ids {first} … {last})")
        }
        _ => println!("published {count} entry to {stream} (id {last})"),
    }
    Ok(())
}

async fn connect_client(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {}", store::redact_url(url)))
}

/// The source stream of a job registered in Redis, or a clear error.
async fn job_source(
    conn: &mut redis::aio::MultiplexedConnection,
    config: &Config,
    job: &str,
) -> anyhow::Result<String> {
    let keys = Keys::new(&config.host.prefix);
    match dlq::source_of(conn, &keys, job).await? {
        Some(source) => Ok(source),
        None => bail!(
            "no job named `{job}` in Redis (prefix `{}`): no host has run it",
            config.host.prefix
        ),
    }
}

async fn dlq_command(url: &str, config: &Config, command: &DlqCommand) -> anyhow::Result<ExitCode> {
    let mut conn = connect_client(url).await?;
    let keys = Keys::new(&config.host.prefix);
    let job = match command {
        DlqCommand::List { job, .. } => job,
        DlqCommand::Replay(sel) | DlqCommand::Purge(sel) => &sel.job,
    };
    let source = job_source(&mut conn, config, job).await?;
    // Every dead letter, page by page (for `list` and `--all`).
    let all = async |conn: &mut redis::aio::MultiplexedConnection| -> anyhow::Result<Vec<dlq::DeadLetter>> {
        let mut out: Vec<dlq::DeadLetter> = Vec::new();
        loop {
            let after = out.last().map(|d| d.id.clone());
            let page = dlq::list(conn, &keys, job, &source, after.as_deref(), 500).await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    };
    match command {
        DlqCommand::List { json, .. } => {
            let letters = all(&mut conn).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters for job {job}");
            } else {
                for d in &letters {
                    let fields: Vec<String> =
                        d.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let fields = match d.fields_in.as_str() {
                        "inline" => fields.join(" "),
                        "source" => format!("(fields in {} at {})", d.source, d.source_id),
                        _ => "(fields deleted from the source)".to_string(),
                    };
                    println!(
                        "{}  source {} ({} deliveries, plugin {}): {}\n    {fields}",
                        d.id,
                        d.source_id,
                        d.deliveries,
                        d.plugin.get(..12).unwrap_or(&d.plugin),
                        d.error,
                    );
                }
            }
        }
        DlqCommand::Replay(sel) => {
            let ids = match sel.all {
                true => all(&mut conn).await?.into_iter().map(|d| d.id).collect(),
                false => sel.id.clone(),
            };
            let mut replayed = 0;
            for chunk in ids.chunks(100) {
                for (id, new) in dlq::replay(&mut conn, &keys, job, &source, chunk).await? {
                    match new {
                        Some(new) => {
                            replayed += 1;
                            println!("{id} -> {source} {new}");
                        }
                        None => println!(
                            "{id}: not replayed (no such dead letter, or its fields are gone)"
                        ),
                    }
                }
            }
            println!("replayed {replayed} dead letters to {source}");
        }
        DlqCommand::Purge(sel) => {
            let ids: Vec<String> = match sel.all {
                true => all(&mut conn).await?.into_iter().map(|d| d.id).collect(),
                false => sel.id.clone(),
            };
            let mut purged = 0;
            for chunk in ids.chunks(500) {
                purged += dlq::purge(&mut conn, &keys, job, &source, chunk).await?;
            }
            println!("purged {purged} dead letters of job {job}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn event_get(
    url: &str,
    config: &Config,
    job: &str,
    id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut conn = connect_client(url).await?;
    let keys = Keys::new(&config.host.prefix);
    let source = job_source(&mut conn, config, job).await?;
    let Some(status) = events::get(&mut conn, &keys, job, &source, id).await? else {
        bail!("job `{job}` knows no event `{id}` (not in stream `{source}`, no status record)");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("event     {} (job {job}, stream {source})", status.id);
        println!("status    {}", status.status);
        if let Some(a) = status.attempts {
            println!("attempts  {a}");
        }
        if let Some(e) = &status.error {
            println!("error     {e}");
        }
        if let Some(c) = &status.consumer {
            println!("consumer  {c}");
        }
        if let Some(t) = status.retry_at {
            println!("retry at  {t} (ms since epoch)");
        }
        if let Some(p) = &status.plugin {
            println!("plugin    {p}");
        }
        if let Some(n) = &status.note {
            println!("note      {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn job_status(
    url: &str,
    config: &Config,
    name: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut conn = connect_client(url).await?;
    let keys = Keys::new(&config.host.prefix);
    let Some(status) = jobs::status(&mut conn, &keys, name).await? else {
        bail!(
            "no job named `{name}` in Redis (prefix `{}`): no host has run it",
            config.host.prefix
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
        println!(
            "pending   {}  (of which scheduled retries: {})",
            status.pending, status.scheduled
        );
        println!("dlq       {}", status.dead_letters);
        println!("lag       {lag}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The default plugin directory of the benchmark and demo.
pub fn default_plugin_dir() -> &'static Path {
    Path::new("plugins/dist")
}
