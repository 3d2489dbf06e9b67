//! What the listings show — jobs, plugins, dead letters — computed once here for both the
//! CLI (`job list`, `plugin list`, `dlq list|replay`) and the admin API (`/api/…`), which
//! only turn these values into text or JSON.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::store::Conn;
use serde::Serialize;

use super::control::{JobEntry, JobState, PluginVersion, Refusal, Registry, Snapshot};
use super::{Keys, StoreError, dlq, hosts, jobs};

/// A job's state as listings show it: the registry's, with `waiting` for a running job whose
/// plugin is not loaded (nothing can run it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShownState {
    Running,
    Waiting,
    Stopped,
    Finished,
    Paused,
    Unknown,
}

impl ShownState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShownState::Running => "running",
            ShownState::Waiting => "waiting",
            ShownState::Stopped => "stopped",
            ShownState::Finished => "finished",
            ShownState::Paused => "paused",
            ShownState::Unknown => "unknown",
        }
    }
}

/// A live host running a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Serving {
    pub consumer: String,
    /// sha256 of the plugin version it serves.
    pub version: String,
}

/// One job: its registry entry, who runs it, and its counters.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub name: String,
    pub state: ShownState,
    pub source: String,
    pub plugin: String,
    /// The plugin version live hosts serve (the one most of them serve, if they differ);
    /// None: no live host runs the job.
    pub version: Option<String>,
    /// The plugin's current version in the registry (what hosts are moving to).
    pub current: Option<String>,
    /// A host's refusal of the current version, if one refused it.
    pub refused: Option<Refusal>,
    /// The live hosts running it.
    pub hosts: Vec<Serving>,
    /// The run of the job (every `job start` begins a new one).
    pub run: u64,
    /// Why it is paused (its breaker tripped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub changed_at: u64,
    pub updated_at: Option<u64>,
    pub started_at: Option<u64>,
    /// Deliveries committed per second, over the sampling interval (None: not sampled).
    pub rate: Option<f64>,
    /// Counters and group state from Redis (None: no host has run it yet).
    pub status: Option<jobs::JobStatus>,
}

/// What listings need besides the registry: live hosts and refusals, read once.
struct Context {
    snapshot: Snapshot,
    runners: BTreeMap<String, Vec<(String, String)>>,
    refusals: BTreeMap<String, BTreeMap<String, Refusal>>,
}

impl Context {
    async fn read(reg: &mut Registry, conn: &mut Conn, keys: &Keys) -> anyhow::Result<Self> {
        Ok(Context {
            snapshot: reg.snapshot().await?,
            runners: hosts::runners(&hosts::list(conn, keys, false).await?),
            refusals: reg.all_refusals().await?,
        })
    }

    fn row(&self, name: &str, entry: &JobEntry, status: Option<jobs::JobStatus>) -> JobRow {
        let current = self
            .snapshot
            .plugins
            .get(&entry.spec.plugin)
            .map(|v| v.sha256.clone());
        let hosts: Vec<Serving> = self
            .runners
            .get(name)
            .into_iter()
            .flatten()
            .map(|(consumer, version)| Serving {
                consumer: consumer.clone(),
                version: version.clone(),
            })
            .collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for h in &hosts {
            *counts.entry(h.version.as_str()).or_default() += 1;
        }
        let version = counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(v, _)| v.to_string());
        let refused = current.as_ref().and_then(|sha| {
            self.refusals
                .get(&entry.spec.plugin)
                .and_then(|r| r.get(sha))
                .cloned()
        });
        let state = match entry.state {
            JobState::Running if current.is_none() => ShownState::Waiting,
            JobState::Running => ShownState::Running,
            JobState::Stopped => ShownState::Stopped,
            JobState::Finished => ShownState::Finished,
            JobState::Paused => ShownState::Paused,
            JobState::Unknown => ShownState::Unknown,
        };
        JobRow {
            name: name.to_string(),
            state,
            source: entry.spec.source.clone(),
            plugin: entry.spec.plugin.clone(),
            version,
            current,
            refused,
            hosts,
            run: entry.run,
            reason: entry.reason.clone(),
            changed_at: entry.changed_at,
            updated_at: entry.updated_at,
            started_at: status.as_ref().and_then(|s| s.started_at),
            rate: None,
            status,
        }
    }
}

/// One plugin: its current version, how many it has, refusals, and the jobs using it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRow {
    pub name: String,
    #[serde(flatten)]
    pub version: PluginVersion,
    pub versions: usize,
    /// Versions hosts refused, by sha256.
    pub refused: BTreeMap<String, Refusal>,
    /// Running jobs using it.
    pub jobs: Vec<String>,
}

/// Every job of the registry with its counters; with `rate_over`, the counters are read
/// twice that far apart and each row gets its rate.
pub async fn jobs(
    reg: &mut Registry,
    conn: &mut Conn,
    keys: &Keys,
    rate_over: Option<Duration>,
) -> anyhow::Result<Vec<JobRow>> {
    let cx = Context::read(reg, conn, keys).await?;
    let snapshot = &cx.snapshot;
    let mut before = BTreeMap::new();
    if let Some(over) = rate_over {
        let read = jobs::statuses(conn, keys, snapshot.jobs.keys().cloned().collect()).await?;
        before.extend(snapshot.jobs.keys().cloned().zip(read));
        tokio::time::sleep(over).await;
    }
    let mut rows = Vec::new();
    let now = jobs::statuses(conn, keys, snapshot.jobs.keys().cloned().collect()).await?;
    for ((name, entry), status) in snapshot.jobs.iter().zip(now) {
        let mut row = cx.row(name, entry, status);
        if let (Some(over), Some(before)) = (rate_over, before.get(name)) {
            let received = |s: &Option<jobs::JobStatus>| s.as_ref().map_or(0, |s| s.received);
            let delta = received(&row.status).saturating_sub(received(before));
            row.rate = Some(delta as f64 / over.as_secs_f64());
        }
        rows.push(row);
    }
    Ok(rows)
}

/// One job of the registry with its counters; None if the registry has no such job.
pub async fn job(
    reg: &mut Registry,
    conn: &mut Conn,
    keys: &Keys,
    name: &str,
) -> anyhow::Result<Option<JobRow>> {
    let cx = Context::read(reg, conn, keys).await?;
    let Some(entry) = cx.snapshot.jobs.get(name) else {
        return Ok(None);
    };
    let status = jobs::status(conn, keys, name).await?;
    Ok(Some(cx.row(name, entry, status)))
}

/// Every plugin of the registry.
pub async fn plugins(reg: &mut Registry) -> anyhow::Result<Vec<PluginRow>> {
    let snapshot = reg.snapshot().await?;
    let mut refusals = reg.all_refusals().await?;
    let mut rows = Vec::new();
    for (name, version) in &snapshot.plugins {
        let versions = reg.versions(name).await?;
        rows.push(PluginRow {
            name: name.clone(),
            version: version.clone(),
            versions: versions
                .iter()
                .map(|v| v.sha256.as_str())
                .collect::<HashSet<_>>()
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
    Ok(rows)
}

/// Every dead letter of `job` (on `source`), oldest first, page by page.
pub async fn dead_letters(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
) -> Result<Vec<dlq::DeadLetter>, StoreError> {
    let mut out: Vec<dlq::DeadLetter> = Vec::new();
    loop {
        let after = out.last().map(|d| d.id.clone());
        let page = dlq::list(conn, keys, job, source, after.as_deref(), 500).await?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// The dead letters `ids` name, each a dead letter's id or the source id one holds (what
/// `dlq list` and `event get` show): (id asked, the dead letter's id if there is one). A
/// dead letter's id is looked up directly; source ids by one pass over the dead letters, a
/// page at a time, keeping only ids (dead letters can hold large fields).
pub async fn resolve(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
    ids: &[String],
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let mut found: HashMap<String, String> = HashMap::new();
    for id in ids {
        if !found.contains_key(id) && dlq::get(conn, keys, job, source, id).await?.is_some() {
            found.insert(id.clone(), id.clone());
        }
    }
    let mut wanted: HashSet<&String> = ids.iter().filter(|id| !found.contains_key(*id)).collect();
    let mut after: Option<String> = None;
    while !wanted.is_empty() {
        let page = dlq::list(conn, keys, job, source, after.as_deref(), SCAN_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for letter in page {
            if wanted.remove(&letter.source_id) {
                found.insert(letter.source_id, letter.id);
            }
        }
    }
    Ok(ids
        .iter()
        .map(|asked| (asked.clone(), found.get(asked).cloned()))
        .collect())
}

/// Dead letters read at once when going through all of them (each may hold up to a source
/// entry's size of fields).
const SCAN_PAGE: usize = 50;

/// The id of every dead letter of `job`, oldest first (read a page at a time, fields
/// dropped as it goes).
async fn dead_letter_ids(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
) -> Result<Vec<String>, StoreError> {
    let mut ids: Vec<String> = Vec::new();
    loop {
        let page = dlq::list(
            conn,
            keys,
            job,
            source,
            ids.last().map(String::as_str),
            SCAN_PAGE,
        )
        .await?;
        if page.is_empty() {
            return Ok(ids);
        }
        ids.extend(page.into_iter().map(|d| d.id));
    }
}

/// The dead letters `ids` name (see [`resolve`]), or all of them when None, each as its own
/// id.
async fn named(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
    ids: Option<Vec<String>>,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    Ok(match ids {
        Some(ids) => resolve(conn, keys, job, source, &ids).await?,
        None => dead_letter_ids(conn, keys, job, source)
            .await?
            .into_iter()
            .map(|id| (id.clone(), Some(id)))
            .collect(),
    })
}

/// What replaying one dead letter did.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// The id asked for: a dead letter's, or the source id one holds (`--all`: the dead
    /// letter's).
    pub asked: String,
    /// The dead letter; None: no dead letter has that id or source id.
    pub id: Option<String>,
    /// Its new entry in the source stream (or, for a lifecycle event, the job's lifecycle
    /// stream); None: not replayed (no such dead letter, or its fields are gone).
    pub new_id: Option<String>,
}

/// Replay dead letters `ids` of `job` (all of them when None) to its source stream; each id
/// a dead letter's or the source id one holds.
pub async fn replay(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
    ids: Option<Vec<String>>,
) -> Result<Vec<Replayed>, StoreError> {
    let named = named(conn, keys, job, source, ids).await?;
    let mut out = Vec::with_capacity(named.len());
    // Each dead letter once, however often it was named (by its id, its source id, or both).
    let mut seen = HashSet::new();
    let found: Vec<String> = named
        .iter()
        .filter_map(|(_, id)| id.clone())
        .filter(|id| seen.insert(id.clone()))
        .collect();
    let mut replayed = std::collections::HashMap::new();
    for chunk in found.chunks(100) {
        for (id, new_id) in dlq::replay(conn, keys, job, source, chunk).await? {
            replayed.insert(id, new_id);
        }
    }
    for (asked, id) in named {
        let new_id = id
            .as_ref()
            .and_then(|id| replayed.get(id).cloned().flatten());
        out.push(Replayed { asked, id, new_id });
    }
    Ok(out)
}

/// Delete dead letters `ids` of `job` (all of them when None), each id a dead letter's or
/// the source id one holds: (each id asked with the dead letter it names, if any; how many
/// were deleted).
pub async fn purge(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
    ids: Option<Vec<String>>,
) -> Result<(Vec<(String, Option<String>)>, u64), StoreError> {
    let named = named(conn, keys, job, source, ids).await?;
    let mut found: Vec<String> = named.iter().filter_map(|(_, id)| id.clone()).collect();
    found.sort();
    found.dedup();
    let mut purged = 0;
    for chunk in found.chunks(500) {
        purged += dlq::purge(conn, keys, job, source, chunk).await?;
    }
    Ok((named, purged))
}

/// Why a job's aggregates cannot be shown or reset.
#[derive(Debug, thiserror::Error)]
pub enum AggError {
    #[error("no job named `{0}`")]
    NoJob(String),
    #[error("job `{job}` has no aggregate named `{name}` (it has: {have})")]
    NoAggregate {
        job: String,
        name: String,
        have: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] super::control::ControlError),
}

/// The aggregates of `job` (only `name`'s, if given), each with up to `windows` of its open
/// windows, most recent first (`sluice agg list|status`, `/api/jobs/{name}/aggregates`).
pub async fn aggregates(
    reg: &mut Registry,
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    name: Option<&str>,
    windows: usize,
) -> Result<Vec<super::aggregate::AggStatus>, AggError> {
    let (job_key, aggs) = job_aggregates(reg, keys, job, name).await?;
    let mut out = Vec::new();
    for agg in &aggs {
        out.push(super::aggregate::status(conn, &job_key, agg, windows).await?);
    }
    Ok(out)
}

/// Drop windows of `job`'s aggregate `name` (the one of `key`, or all) without firing; how
/// many were open.
pub async fn reset_aggregate(
    reg: &mut Registry,
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    name: &str,
    key: Option<&[u8]>,
) -> Result<u64, AggError> {
    let (job_key, aggs) = job_aggregates(reg, keys, job, Some(name)).await?;
    Ok(super::aggregate::reset(conn, &job_key, &aggs[0], key).await?)
}

/// A job's hash and its aggregates (the one named, if given), from the registry.
async fn job_aggregates(
    reg: &mut Registry,
    keys: &Keys,
    job: &str,
    name: Option<&str>,
) -> Result<(String, Vec<crate::model::Aggregate>), AggError> {
    let entry = reg
        .job(job)
        .await?
        .ok_or_else(|| AggError::NoJob(job.to_string()))?;
    let job_key = keys.job(job, &keys.source_stream(&entry.spec));
    let all = entry.spec.aggregate;
    let picked: Vec<_> = match name {
        None => all.clone(),
        Some(n) => all.iter().filter(|a| a.name == n).cloned().collect(),
    };
    if let (Some(n), true) = (name, picked.is_empty()) {
        let have: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
        return Err(AggError::NoAggregate {
            job: job.to_string(),
            name: n.to_string(),
            have: if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            },
        });
    }
    Ok((job_key, picked))
}
