//! `sluice job start|update|show|delete|stop|resume|list|watch|status`: jobs in the control
//! registry (every host applies a change within a second), who runs them, and their counters.
//! [`options`]: every field of a definition as a command-line option; [`change`]: starting,
//! updating, showing and deleting a job; here: the commands, state changes and listings.

mod change;
mod options;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;

use self::options::JobOptions;
use super::{Client, time};
use crate::model::JobSpec;
use crate::model::short;
use crate::store::control::JobState;
use crate::store::listing::ShownState;
use crate::store::{jobs, listing};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Start a job as a new run on every host. A new job needs --source and --plugin; a
    /// stopped or finished one starts again with its stored definition, changed by the
    /// options given. Refused while the job is running
    Start {
        name: String,
        /// The input: stream:KEY, queue:NAME, list:KEY, channel:NAME, scan:PATH, every:PERIOD
        /// or cron:EXPR (UTC, e.g. 'cron:*/5 * * * *')
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
    // A name that is no job but a family's (`job start` of partitioned streams made jobs
    // `<name>.<i>`) stands for each of them.
    match command {
        JobCommand::Status { name, json } => match family(c, name).await?.as_slice() {
            [] | [_] => job_status(c, name, *json).await,
            many => family_status(c, name, many, *json).await,
        },
        JobCommand::Start {
            name,
            source,
            plugin,
            options,
        } => {
            // A source of partitioned streams: one job per partition.
            if let Some(source) = source.as_deref() {
                let specs = JobSpec::new(name, source, "-")
                    .expand()
                    .map_err(|(f, m)| anyhow::anyhow!("invalid job: {f}: {m}"))?;
                if specs.len() > 1 {
                    // All or none: refused before any starts if a member is running.
                    let mut reg = c.registry().await?;
                    let snapshot = reg.snapshot().await?;
                    let running: Vec<&str> = specs
                        .iter()
                        .filter(|j| {
                            snapshot
                                .jobs
                                .get(&j.name)
                                .is_some_and(|e| e.state == JobState::Running)
                        })
                        .map(|j| j.name.as_str())
                        .collect();
                    if !running.is_empty() {
                        anyhow::bail!(
                            "{} of the partitions' jobs are running ({}): stop them first \
                             (`sluice job stop {name}`)",
                            running.len(),
                            running.join(", ")
                        );
                    }
                    for j in &specs {
                        change::job_start(c, &j.name, Some(&j.source), plugin.as_deref(), options)
                            .await?;
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            }
            // Without a source, a stopped family starts again, member by member.
            let mut code = ExitCode::SUCCESS;
            match family(c, name).await?.as_slice() {
                [] => {
                    return change::job_start(
                        c,
                        name,
                        source.as_deref(),
                        plugin.as_deref(),
                        options,
                    )
                    .await;
                }
                names => {
                    for member in names {
                        code = change::job_start(
                            c,
                            member,
                            source.as_deref(),
                            plugin.as_deref(),
                            options,
                        )
                        .await?;
                    }
                }
            }
            Ok(code)
        }
        JobCommand::Update {
            name,
            plugin,
            options,
        } => {
            let mut code = ExitCode::SUCCESS;
            for member in with_name(family(c, name).await?, name) {
                code = change::job_update(c, &member, plugin.as_deref(), options).await?;
            }
            Ok(code)
        }
        JobCommand::Show { name, json } => {
            let mut code = ExitCode::SUCCESS;
            for member in with_name(family(c, name).await?, name) {
                code = change::job_show(c, &member, *json).await?;
            }
            Ok(code)
        }
        JobCommand::Delete { name, purge, yes } => {
            let mut code = ExitCode::SUCCESS;
            for member in with_name(family(c, name).await?, name) {
                code = change::job_delete(c, &member, *purge, *yes).await?;
            }
            Ok(code)
        }
        JobCommand::Stop { name } => {
            for member in with_name(family(c, name).await?, name) {
                job_set_state(c, &member, JobState::Stopped).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Resume { name } => {
            for member in with_name(family(c, name).await?, name) {
                job_set_state(c, &member, JobState::Running).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::List { json } => job_list(c, *json).await,
        JobCommand::Watch { name } => job_watch(c, name).await,
    }
}

/// The registry's jobs `name` stands for: the job of that name; else the family a job
/// over partitioned streams made (`<name>.<i>`, by partition); else none.
async fn family(c: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    let mut reg = c.registry().await?;
    let snapshot = reg.snapshot().await?;
    if snapshot.jobs.contains_key(name) {
        return Ok(vec![name.to_string()]);
    }
    // A member is `<name>.<i>` reading a partition `…{<i>}…`, or of priority group `name`
    // (a job with `also` sources): not any job of such a name.
    let mut members: Vec<(u32, String)> = snapshot
        .jobs
        .iter()
        .filter_map(|(job, entry)| {
            let n: u32 = job.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
            let stream = c.keys.source_stream(&entry.spec);
            (crate::model::hash_tag(&stream) == n.to_string()
                || entry.spec.priority_group.as_deref() == Some(name))
            .then(|| (n, job.clone()))
        })
        .collect();
    members.sort();
    Ok(members.into_iter().map(|(_, job)| job).collect())
}

/// `members`, or `name` itself when it stands for none (its command then says it is unknown).
fn with_name(members: Vec<String>, name: &str) -> Vec<String> {
    if members.is_empty() {
        vec![name.to_string()]
    } else {
        members
    }
}

/// `job status` of a family: a line per member and the totals (JSON: both).
async fn family_status(
    c: &Client,
    name: &str,
    members: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut conn = c.conn().await?;
    let mut rows = Vec::new();
    for member in members {
        if let Some(s) = jobs::status(&mut conn, &c.keys, member).await? {
            rows.push(s);
        }
    }
    let sum = |f: fn(&jobs::JobStatus) -> u64| rows.iter().map(f).sum::<u64>();
    let totals = jobs::JobStatus {
        name: name.to_string(),
        received: sum(|s| s.received),
        acked: sum(|s| s.acked),
        skipped: sum(|s| s.skipped),
        retried: sum(|s| s.retried),
        failed: sum(|s| s.failed),
        dead: sum(|s| s.dead),
        conflicts: sum(|s| s.conflicts),
        scheduled: sum(|s| s.scheduled),
        dead_letters: sum(|s| s.dead_letters),
        pending: sum(|s| s.pending),
        lag: rows.iter().map(|s| s.lag).sum(),
        outbox: sum(|s| s.outbox),
        outbox_lag_ms: rows.iter().map(|s| s.outbox_lag_ms).max().unwrap_or(0),
        ..Default::default()
    };
    if json {
        let report = serde_json::json!({"family": name, "partitions": rows, "totals": totals});
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{name}: {} jobs, one per partition or source (`sluice job status {}` for one)",
        members.len(),
        members.first().map_or("", String::as_str)
    );
    for s in rows.iter().chain(std::iter::once(&totals)) {
        println!(
            "{:<24} {:<28} acked {:>9} failed {:>6} dead {:>6} pending {:>6} lag {:>6}{}",
            if s.name == name {
                "total"
            } else {
                s.name.as_str()
            },
            s.source,
            s.acked,
            s.failed,
            s.dead,
            s.pending,
            s.lag.map_or("?".into(), |l| l.to_string()),
            if s.outbox > 0 {
                format!(" outbox {}", s.outbox)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn job_set_state(c: &Client, name: &str, state: JobState) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    reg.set_job_state(name, state).await?;
    let what = match state {
        JobState::Running => "resumed",
        JobState::Stopped | JobState::Finished | JobState::Paused | JobState::Unknown => {
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
            let stream = match (&status, &row) {
                (Some(s), _) => Some(s.source.clone()),
                (None, Some(r)) => Some(
                    c.keys
                        .source_stream(&crate::model::JobSpec::new(name, &r.source, &r.plugin)),
                ),
                (None, None) => None,
            };
            object.insert("stream".into(), stream.into());
            if let Some(r) = &row {
                object.insert("source".into(), r.source.clone().into());
                object.insert("plugin".into(), r.plugin.clone().into());
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
            if let Some(reason) = &r.reason {
                println!("reason    {reason}  (sluice job resume {name})");
            }
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
    if s.duplicates > 0 {
        println!(
            "duplicates {}  (of the skipped: their idempotency key was committed before)",
            s.duplicates
        );
    }
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
    match s.in_list {
        Some(n) => println!("lag       {lag}  (of which still in the list: {n})"),
        None => println!("lag       {lag}"),
    }
    if let Some(scan) = &s.scan {
        let when = |ms: Option<u64>| {
            ms.map_or("-".to_string(), |ms| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
                .to_string()
            })
        };
        match (scan.pass, scan.running) {
            (0, _) => println!("scan      no pass yet"),
            (n, true) => println!(
                "scan      pass {n} running since {} ({} walk tasks left)",
                when(scan.started_at),
                scan.tasks
            ),
            (n, false) => println!(
                "scan      pass {n} ended {} (started {})",
                when(scan.ended_at),
                when(scan.started_at)
            ),
        }
        println!(
            "          dirs {} files {} changed {} unchanged {} deleted {} excluded {} \
             unreadable {}",
            scan.dirs,
            scan.files,
            scan.changed,
            scan.unchanged,
            scan.deleted,
            scan.excluded,
            scan.unreadable
        );
        if scan.overdue > 0 {
            println!(
                "          {} passes ran past their interval (the next waited)",
                scan.overdue
            );
        }
    }
    if let Some(subscribed) = s.subscribed {
        println!(
            "delivery  at most once from the publisher to the job's stream (pub/sub has no \
             acknowledgements), every message once from there"
        );
        match (subscribed, &s.subscriber) {
            (true, Some(host)) => println!("channel   subscribed by host {host}"),
            _ => println!("channel   no host subscribed: messages published now are lost"),
        }
    }
    if s.outbox > 0 {
        println!(
            "outbox    {}  (effects for other cluster slots not yet forwarded; oldest {:.1} s)",
            s.outbox,
            s.outbox_lag_ms as f64 / 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
