//! `sluice plugin load|list|versions|rollback|unload` (the registry in Redis) and the
//! authors' tools `plugin new|inspect|test` ([`crate::tools`], no Redis).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::{Client, parse_fields, time, who};
use crate::model::short;
use crate::runtime::{Limits, Runtime, sha256_hex};
use crate::store::listing;

#[derive(Debug, Clone, Subcommand)]
pub enum PluginCommand {
    /// Start a plugin project: WIT, a small plugin, build.sh, events.jsonl that `plugin test`
    /// passes
    New {
        /// The plugin's name (lower-case letters, digits, `-`, `_`)
        name: String,
        #[arg(long, value_enum)]
        lang: crate::tools::Lang,
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
        /// Test with the limits and config of this job: a `[[job]]` of the config file, else
        /// a job of the registry (then Redis is needed); --set, --deadline-ms and --memory-mb
        /// override them
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Per-event deadline in ms [default: the job's, else 1000]
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// Memory cap in MiB [default: the job's, else 64]
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// What the authors' tools work with besides their arguments.
#[derive(Debug, Clone, Default)]
pub struct ToolSetup {
    /// The data dir's compile cache (None: compile every time).
    pub cache: Option<PathBuf>,
    /// `plugin test --job`: the job's definition.
    pub job: Option<crate::model::JobSpec>,
    /// The key prefix (limits keep plugins off sluice's keys).
    pub prefix: String,
}

impl PluginCommand {
    /// `plugin test --job NAME`: the job named.
    pub fn test_job(&self) -> Option<&str> {
        match self {
            PluginCommand::Test { job, .. } => job.as_deref(),
            _ => None,
        }
    }

    /// The commands that change or read the registry in Redis.
    pub fn uses_redis(&self) -> bool {
        !matches!(
            self,
            PluginCommand::New { .. } | PluginCommand::Inspect { .. } | PluginCommand::Test { .. }
        )
    }
}

pub async fn registry(c: &Client, command: &PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Load { path, name } => plugin_load(c, path, name).await,
        PluginCommand::List { json } => plugin_list(c, *json).await,
        PluginCommand::Versions { name, json } => plugin_versions(c, name, *json).await,
        PluginCommand::Rollback { name, to } => plugin_rollback(c, name, to.as_deref()).await,
        PluginCommand::Unload { name, force } => plugin_unload(c, name, *force).await,
        other => bail!("not a registry command: {other:?}"),
    }
}

/// The authors' tools (no Redis, but for `plugin test --job` of a registry job, read before).
pub fn tool(command: &PluginCommand, setup: ToolSetup) -> anyhow::Result<ExitCode> {
    let runtime = || Runtime::new(setup.cache.as_deref());
    match command {
        PluginCommand::New { name, lang, dir } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            crate::tools::new_plugin(name, *lang, &dir)?;
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
            let i = crate::tools::inspect(&runtime()?, path)?;
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
                        "world     fits sluice:plugin/{}@0.1.0{}",
                        if i.batch { "batch-plugin" } else { "plugin" },
                        match (i.stateful, i.batch) {
                            (true, true) => " (uses job state; takes whole batches in one call)",
                            (true, false) => " (uses job state)",
                            (false, true) => " (takes whole batches in one call)",
                            (false, false) => "",
                        }
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
            job: _,
            deadline_ms,
            memory_mb,
            json,
        } => {
            let (name, mut config, mut limits) = match &setup.job {
                Some(spec) => (
                    spec.plugin.clone(),
                    spec.plugin_config(),
                    crate::host::job::limits(spec, &setup.prefix),
                ),
                None => ("plugin".to_string(), Default::default(), Limits::default()),
            };
            config.extend(parse_fields(plugin_config)?);
            if let Some(ms) = deadline_ms {
                limits.deadline = std::time::Duration::from_millis(*ms);
            }
            if let Some(mb) = memory_mb {
                limits.memory_bytes = (*mb as usize) << 20;
            }
            let events = crate::tools::read_events(events)?;
            let plugin = runtime()?.load_file(&name, path)?;
            let report = crate::tools::run_test(plugin, &events, config, limits)?;
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

/// `plugin load PATH --name NAME`: checked here first (compiles, fits the world), so a
/// broken file never reaches the fleet; hosts still run `init` with each job's config and
/// refuse what fails there.
pub async fn plugin_load(c: &Client, path: &Path, name: &str) -> anyhow::Result<ExitCode> {
    crate::model::check_name(name).map_err(|m| anyhow::anyhow!("--name: {m}"))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha = sha256_hex(&bytes);
    let runtime = Arc::new(c.runtime()?);
    let (n, origin, b) = (name.to_string(), path.display().to_string(), bytes.clone());
    tokio::task::spawn_blocking(move || runtime.load_bytes(&n, &origin, &b)).await??;
    let mut reg = c.registry().await?;
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

pub async fn plugin_list(c: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let rows = listing::plugins(&mut c.registry().await?).await?;
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

pub async fn plugin_versions(c: &Client, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
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

pub async fn plugin_rollback(c: &Client, name: &str, to: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let version = reg.rollback(name, to).await?;
    println!(
        "plugin {name}: back to version {}; hosts switch within a second",
        short(&version.sha256)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn plugin_unload(c: &Client, name: &str, force: bool) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let stopped = reg.unload(name, force).await?;
    if !stopped.is_empty() {
        println!("stopped jobs: {}", stopped.join(", "));
    }
    println!("plugin {name}: unloaded");
    Ok(ExitCode::SUCCESS)
}
