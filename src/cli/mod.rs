//! The command line: one file per command group, each converting a parsed command into
//! calls on the store, the runtime or the host, and their answers into text (or `--json`).
//!
//! [`run`] builds one [`Ctx`] (the config file, and where Redis is) and dispatches: `run`
//! ([`crate::host`]), [`check`] (`check-config`), [`publish`], [`job`], [`plugin`] (the
//! registry, and the authors' tools of [`crate::tools`]), [`dlq`], [`event`], [`hosts`], and `bench`
//! ([`crate::bench`]).
//!
//! `--config` (env `SLUICE_CONFIG`, default `sluice.toml`), `--redis` (env
//! `SLUICE_REDIS_URL`) and `--data-dir` (env `SLUICE_DATA_DIR`) apply to every command.
//! Commands that only talk to Redis find it in this order: `--redis`, `[redis] url`, the
//! embedded Redis of a `sluice run` using the same data dir.

mod agg;
mod check;
mod dlq;
mod event;
mod hosts;
mod job;
mod plugin;
mod publish;
mod tail;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::config::{Config, ConfigError};
use crate::store::control::Registry;
use crate::store::{Endpoint, Keys, embedded};

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
        /// Serve the dashboard (/), /live, /ready, /metrics and the /api on this address [default: `[admin] listen`]
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
    },
    /// Validate the config and load every plugin (compile, type-check, init) without side effects
    CheckConfig,
    /// Append entries to a stream: `sluice publish events text=hello n={i} --count 100`
    Publish {
        /// The stream key; or partitioned streams (`orders:{0..15}`): each entry goes to the
        /// partition of its `--key`, else they are spread over all of them in turn
        stream: String,
        /// Fields as name=value; `{i}` in a value becomes the entry's index (0-based)
        #[arg(required = true, value_name = "FIELD=VALUE")]
        fields: Vec<String>,
        /// How many entries to append
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// For partitioned streams: the partition is this key's Redis Cluster slot (CRC16 of
        /// the key, or of its `{tag}`, mod 16384) modulo the number of partitions
        #[arg(long)]
        key: Option<String>,
    },
    /// Put a task on a sluice queue (read by jobs with source queue:NAME)
    Enqueue {
        /// The queue's name
        queue: String,
        /// The task's payload (`-`: read it from stdin)
        payload: String,
        /// Deliver it after this many ms (at most 30 days)
        #[arg(long, value_name = "MS",
              value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::model::spec::MAX_DELAY_MS)))]
        delay_ms: Option<u32>,
    },
    /// Follow a stream (what a job emits), a job's dead letters or a queue, printing new entries
    Tail(tail::TailArgs),
    /// Manage jobs: start, update, show, delete, stop, resume, list, watch, status
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// Plugins: load versions into Redis, list, roll back, unload; authors' tools (new,
    /// inspect, test)
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Dead letters of a job: list, replay, purge
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Aggregates of a job (`[[job.aggregate]]`): list, open windows, reset
    Agg {
        #[command(subcommand)]
        command: agg::AggCommand,
    },
    /// Events of a job
    Event {
        #[command(subcommand)]
        command: event::EventCommand,
    },
    /// The hosts running now: consumer name, sluice version, when each started and was last
    /// seen, the jobs it runs and the plugin version each serves
    Hosts {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Also hosts gone in the last hour
        #[arg(long)]
        all: bool,
    },
    /// Measure throughput and latency against baselines and peers, on one Redis
    Bench(BenchArgs),
    /// Print a shell completion script: `sluice completions bash > /etc/bash_completion.d/sluice`
    Completions { shell: clap_complete::Shell },
    /// Print the man page (sluice.1), or with --dir write one page per command there
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Made from the CLI definition; no config, no Redis.
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "sluice", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(dir)?;
                    clap_mangen::generate_to(command, dir)?;
                    println!("man pages written to {}", dir.display());
                }
                None => clap_mangen::Man::new(command).render(&mut std::io::stdout())?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    // The authors' tools need neither a config file nor Redis.
    if let Command::Plugin { command } = &cli.command
        && !command.uses_redis()
    {
        crate::logging::init(Default::default(), Some("warn"));
        let setup = tool_setup(&cli, command).await?;
        let command = command.clone();
        // They call into plugins: on a blocking thread (WASI output blocks on the runtime).
        return tokio::task::spawn_blocking(move || plugin::tool(&command, setup)).await?;
    }
    let ctx = Ctx::new(&cli, matches!(cli.command, Command::CheckConfig))?;
    let host = &ctx.config.host;
    // `[host] log` is the host's filter; a command says what it did on stdout, and only
    // warnings and errors go to stderr (SLUICE_LOG still wins).
    let filter = match cli.command {
        Command::Run { .. } | Command::Bench(_) => host.log.as_deref(),
        _ => Some("warn"),
    };
    crate::logging::init(host.log_format, filter);
    match &cli.command {
        Command::Run { plugins, admin } => {
            // Hosts are stateless: without a config file, a host runs what the registry holds.
            if cli.config.is_none() && !Path::new("sluice.toml").exists() {
                tracing::info!("no config file (sluice.toml): running the jobs of the registry");
            }
            let dir = plugins.clone().or(ctx.config.plugins_dir.dir.clone());
            let mut config = ctx.config;
            if let Some(admin) = admin {
                config.admin.listen = Some(admin.to_string());
            }
            let files = crate::host::Files {
                config: ctx.config_path.exists().then(|| ctx.config_path.clone()),
                plugins_dir: dir,
            };
            crate::host::run(config, files, cli.redis.clone(), shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            tokio::task::spawn_blocking(move || check::check_config(&ctx)).await?
        }
        Command::Bench(args) => {
            let redis = match ctx.config.redis.resolve(cli.redis.clone())? {
                Some(url) => Some((Endpoint::new(&url, &ctx.config.redis.connection())?, url)),
                None => None,
            };
            let cache = ctx.config.host.data_dir.join("cache");
            crate::bench::run(args, redis, &cache).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish {
            stream,
            fields,
            count,
            key,
        } => publish::publish(&ctx.client().await?, stream, fields, *count, key.as_deref()).await,
        Command::Job { command } => job::run(&ctx.client().await?, command).await,
        Command::Plugin { command } => plugin::registry(&ctx.client().await?, command).await,
        Command::Dlq { command } => dlq::run(&ctx.client().await?, command).await,
        Command::Event { command } => event::run(&ctx.client().await?, command).await,
        Command::Agg { command } => agg::run(&ctx.client().await?, command).await,
        Command::Enqueue {
            queue,
            payload,
            delay_ms,
        } => publish::enqueue(&ctx.client().await?, queue, payload, *delay_ms).await,
        Command::Tail(args) => tail::tail(&ctx.client().await?, args).await,
        // Answered above, before any config is read.
        Command::Completions { .. } | Command::Man { .. } => Ok(ExitCode::SUCCESS),
        Command::Hosts { json, all } => hosts::run(&ctx.client().await?, *json, *all).await,
    }
}

/// The compile cache of the data dir, and for `plugin test --job NAME` the job: a `[[job]]`
/// of the config file, else the registry's. A config file that does not load is an error
/// only when the job is to come from it.
async fn tool_setup(
    cli: &Cli,
    command: &plugin::PluginCommand,
) -> anyhow::Result<plugin::ToolSetup> {
    let ctx = Ctx::new(cli, false);
    let Some(name) = command.test_job() else {
        let (cache, prefix) = match &ctx {
            Ok(ctx) => (
                ctx.config.host.data_dir.join("cache"),
                ctx.config.host.prefix.clone(),
            ),
            Err(_) => {
                let defaults = Config::default();
                let dir = cli.data_dir.clone().unwrap_or(defaults.host.data_dir);
                (dir.join("cache"), defaults.host.prefix)
            }
        };
        return Ok(plugin::ToolSetup {
            cache: Some(cache),
            job: None,
            prefix,
        });
    };
    let ctx = ctx?;
    let cache = Some(ctx.config.host.data_dir.join("cache"));
    let prefix = ctx.config.host.prefix.clone();
    if let Some(job) = ctx.config.jobs.iter().find(|j| j.name == name) {
        return Ok(plugin::ToolSetup {
            cache,
            job: Some(job.clone()),
            prefix,
        });
    }
    let client = ctx.client().await.with_context(|| {
        format!("job `{name}` is not in the config file; looking for it in the registry")
    })?;
    let Some(entry) = client.registry().await?.job(name).await? else {
        bail!("no job named `{name}` in the config file or the registry");
    };
    Ok(plugin::ToolSetup {
        cache,
        job: Some(entry.spec),
        prefix,
    })
}

/// What every command works from, built once: the config file (its defaults when none was
/// named or found), with `--data-dir` applied, and the global options.
pub struct Ctx {
    pub config: Config,
    /// The config file named or defaulted to (it may not exist).
    pub config_path: PathBuf,
    /// `--redis`.
    redis: Option<String>,
}

/// A [`Ctx`] that has found Redis, for the commands that talk to it.
pub struct Client {
    pub ctx: Ctx,
    /// Where Redis is.
    pub redis: Endpoint,
    pub keys: Keys,
}

impl Ctx {
    /// The config from `--config` (or `sluice.toml`). When not `required` and no file was
    /// named or found, the defaults.
    fn new(cli: &Cli, required: bool) -> Result<Ctx, ConfigError> {
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
        Ok(Ctx {
            config,
            config_path: path,
            redis: cli.redis.clone(),
        })
    }

    /// Find Redis: `--redis`, `[redis] url`, else the embedded Redis of a running host.
    async fn client(self) -> anyhow::Result<Client> {
        let redis = match self.config.redis.resolve(self.redis.clone())? {
            Some(url) => Endpoint::new(&url, &self.config.redis.connection())?,
            None => match embedded::running_url(&self.config.host.data_dir).await {
                Some(url) => Endpoint::new(&url, &self.config.redis.local_connection())?,
                None => bail!(
                    "no Redis to talk to: set --redis, SLUICE_REDIS_URL or [redis] url, or start \
                     `sluice run` (which starts an embedded Redis) with the same data dir ({})",
                    self.config.host.data_dir.display()
                ),
            },
        };
        let keys = Keys::new(&self.config.host.prefix);
        Ok(Client {
            ctx: self,
            redis,
            keys,
        })
    }
}

impl Client {
    /// A connection to Redis: the one way commands connect.
    pub async fn conn(&self) -> anyhow::Result<crate::store::Conn> {
        self.redis
            .connect_once()
            .await
            .with_context(|| format!("connecting to Redis at {}", self.redis))
    }

    /// The control registry.
    pub async fn registry(&self) -> anyhow::Result<Registry> {
        Ok(Registry::new(self.conn().await?, self.keys.clone()))
    }

    /// The prefix of every key, as errors name it.
    pub fn prefix(&self) -> &str {
        &self.ctx.config.host.prefix
    }

    /// The data dir's compile cache, for commands that check plugins before they reach the
    /// fleet.
    pub fn runtime(&self) -> anyhow::Result<crate::runtime::Runtime> {
        crate::runtime::Runtime::new(Some(&self.ctx.config.host.data_dir.join("cache")))
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

pub fn parse_fields(fields: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    fields
        .iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("field `{f}` is not name=value"),
        })
        .collect()
}

/// `user@host` of whoever runs the CLI, recorded with each version loaded.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{user}@{host}")
}

/// A time in ms since the epoch, as RFC 3339 (UTC).
pub fn time(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}
