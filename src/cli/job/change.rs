//! Starting, updating, showing and deleting a job: each checked here first (the plugin's
//! `init` with the job's config), then written to the registry, which every host follows.

use std::collections::BTreeMap;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::JobOptions;
use super::options::job_spec;
use crate::cli::{Client, time};
use crate::model::{JobSpec, short};
use crate::store::control::{ControlError, JobEntry, JobState, Registry};
use crate::store::{hosts, jobs, listing};

/// Run `init` of the job's plugin (its current version) with the job's config here first:
/// a job whose plugin refuses it is not started or changed.
async fn check_plugin(c: &Client, reg: &mut Registry, spec: &JobSpec) -> anyhow::Result<()> {
    spec.check_source_outside(c.prefix())
        .map_err(|(field, message)| anyhow::anyhow!("invalid job: {field}: {message}"))?;
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
    let existing = match reg.job(name).await {
        // A damaged entry is replaced (no host runs it).
        Err(ControlError::Corrupt(why)) => {
            eprintln!("warning: replacing the registry entry of job `{name}`: {why}");
            None
        }
        other => other?,
    };
    let (spec, again) = match existing {
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
    /// Every field as `a.b` → its value (tables spelled out, lists whole; unset: absent).
    fn flat(value: &serde_json::Value, at: &str, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (k, v) in fields {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    flat(v, &path, out);
                }
            }
            serde_json::Value::Null => {}
            v => {
                out.insert(at.to_string(), v.to_string());
            }
        }
    }
    let (mut was, mut now) = (BTreeMap::new(), BTreeMap::new());
    flat(&serde_json::to_value(old).unwrap_or_default(), "", &mut was);
    flat(&serde_json::to_value(new).unwrap_or_default(), "", &mut now);
    let fields: std::collections::BTreeSet<&String> = was.keys().chain(now.keys()).collect();
    fields
        .into_iter()
        .filter(|f| was.get(*f) != now.get(*f))
        .map(|f| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "-".into());
            (f.clone(), show(was.get(f)), show(now.get(f)))
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
    check_plugin(c, &mut reg, &spec)
        .await
        .map_err(|e| anyhow::anyhow!("job {name} not updated: {e:#}"))?;
    let read = current.spec.clone();
    reg.update_job(
        name,
        |entry| {
            if entry.spec != read {
                return Err(ControlError::Refused(format!(
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
        bail!(
            "the registry entry of job `{name}` is invalid, and hosts skip it (the error above \
             says why): replace it with `sluice job start {name} --source … --plugin …` once \
             deleted with `sluice job delete {name} --yes`"
        );
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
    let entry = match reg.job(name).await {
        Err(ControlError::Corrupt(why)) => {
            eprintln!(
                "the registry entry of job `{name}` is damaged ({why}); deleting it is safe: no host runs it"
            );
            None
        }
        Ok(None) => bail!("no job named `{name}`"),
        Ok(Some(entry)) => Some(entry),
        Err(e) => return Err(e.into()),
    };
    if entry.as_ref().is_some_and(|e| e.state == JobState::Running) {
        bail!("job `{name}` is running; stop it first (`sluice job stop {name}`)");
    }
    // The stream it reads: from its definition, else from where its hosts recorded it.
    let source = match &entry {
        Some(e) => Some(c.keys.source_stream(&e.spec)),
        None => crate::store::dlq::source_of(&mut conn, &c.keys, name).await?,
    };
    if !yes {
        eprintln!("would delete job `{name}` from the registry");
        if purge {
            let dead = jobs::status(&mut conn, &c.keys, name)
                .await?
                .map_or(0, |s| s.dead_letters);
            eprintln!(
                "and everything it keeps in Redis: its consumer group on `{}`, counters, \
                 retries, {dead} dead letters, status records, kv, counters and windows (the \
                 source stream stays)",
                source.as_deref().unwrap_or("?")
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
                    "hosts still run job `{name}` 30 s after it was stopped (a batch in flight \
                     is being finished): {}; nothing deleted, try again",
                    names.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    reg.delete_job(name).await?;
    println!("job {name}: deleted from the registry");
    match (purge, source) {
        (true, Some(source)) => {
            let purged = jobs::purge(&mut conn, &c.keys, name, &source).await?;
            println!(
                "purged: {} keys, {} consumer groups (the source stream `{source}` stays)",
                purged.keys, purged.groups
            );
        }
        (true, None) => println!("nothing to purge: no host ever ran it"),
        (false, _) => println!(
            "its group, counters and dead letters stay (a job of the same name continues them; \
             --purge deletes them)"
        ),
    }
    if entry.is_some_and(|e| e.file_spec.is_some()) {
        println!(
            "note: a config file defines it; remove its [[job]] there too, or a host registers \
             it again at start"
        );
    }
    Ok(ExitCode::SUCCESS)
}
