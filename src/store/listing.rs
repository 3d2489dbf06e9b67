//! What the listings show — jobs, plugins, dead letters — computed once here for both the
//! CLI (`job list`, `plugin list`, `dlq list|replay`) and the admin API (`/api/…`), which
//! only turn these values into text or JSON.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::Serialize;

use super::control::{JobEntry, JobState, PluginVersion, Refusal, Registry, Snapshot};
use super::{Keys, StoreError, dlq, jobs};

/// One job: its registry entry and its counters.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub name: String,
    pub state: JobState,
    /// Running in the registry, but no host can run it: its plugin is not loaded.
    pub waiting: bool,
    pub source: String,
    pub plugin: String,
    /// The plugin's current version.
    pub version: Option<String>,
    pub changed_at: u64,
    pub started_at: Option<u64>,
    /// Deliveries committed per second, over the sampling interval (None: not sampled).
    pub rate: Option<f64>,
    /// Counters and group state from Redis (None: no host has run it yet).
    pub status: Option<jobs::JobStatus>,
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

fn row(
    snapshot: &Snapshot,
    name: &str,
    entry: &JobEntry,
    status: Option<jobs::JobStatus>,
) -> JobRow {
    let version = snapshot
        .plugins
        .get(&entry.spec.plugin)
        .map(|v| v.sha256.clone());
    JobRow {
        name: name.to_string(),
        state: entry.state,
        waiting: entry.state == JobState::Running && version.is_none(),
        source: entry.spec.source.clone(),
        plugin: entry.spec.plugin.clone(),
        version,
        changed_at: entry.changed_at,
        started_at: status.as_ref().and_then(|s| s.started_at),
        rate: None,
        status,
    }
}

/// Every job of the registry with its counters; with `rate_over`, the counters are read
/// twice that far apart and each row gets its rate.
pub async fn jobs(
    reg: &mut Registry,
    conn: &mut ConnectionManager,
    keys: &Keys,
    rate_over: Option<Duration>,
) -> anyhow::Result<Vec<JobRow>> {
    let snapshot = reg.snapshot().await?;
    let mut before = BTreeMap::new();
    if let Some(over) = rate_over {
        for name in snapshot.jobs.keys() {
            before.insert(name.clone(), jobs::status(conn, keys, name).await?);
        }
        tokio::time::sleep(over).await;
    }
    let mut rows = Vec::new();
    for (name, entry) in &snapshot.jobs {
        let mut row = row(
            &snapshot,
            name,
            entry,
            jobs::status(conn, keys, name).await?,
        );
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
    conn: &mut ConnectionManager,
    keys: &Keys,
    name: &str,
) -> anyhow::Result<Option<JobRow>> {
    let snapshot = reg.snapshot().await?;
    let Some(entry) = snapshot.jobs.get(name) else {
        return Ok(None);
    };
    let status = jobs::status(conn, keys, name).await?;
    Ok(Some(row(&snapshot, name, entry, status)))
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
    conn: &mut ConnectionManager,
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

/// What replaying one dead letter did.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// The dead letter.
    pub id: String,
    /// Its new entry in the source stream; None: not replayed (no such dead letter, or its
    /// fields are gone).
    pub new_id: Option<String>,
}

/// Replay dead letters `ids` of `job` (all of them when None) to its source stream.
pub async fn replay(
    conn: &mut ConnectionManager,
    keys: &Keys,
    job: &str,
    source: &str,
    ids: Option<Vec<String>>,
) -> Result<Vec<Replayed>, StoreError> {
    let ids = match ids {
        Some(ids) => ids,
        None => dead_letters(conn, keys, job, source)
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect(),
    };
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(100) {
        for (id, new_id) in dlq::replay(conn, keys, job, source, chunk).await? {
            out.push(Replayed { id, new_id });
        }
    }
    Ok(out)
}
