//! Reading a job's state: spec, counters, and what its consumer group says (pending, lag).
//!
//! Keys read: [`Keys::jobs`], [`Keys::job`], [`Keys::retry`], [`Keys::dlq`], the source
//! stream's consumer group.

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::Serialize;

use super::{Keys, StoreError};

/// A job as `sluice job status` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct JobStatus {
    pub name: String,
    pub source: String,
    pub plugin: String,
    pub group: String,
    /// Milliseconds since the epoch when a host last started the job.
    pub started_at: Option<u64>,
    /// Deliveries handled and committed (acked + skipped + retried + dead).
    pub received: u64,
    /// Handled with `ack`: effects written, acknowledged.
    pub acked: u64,
    /// Handled with `skip`: acknowledged without effects.
    pub skipped: u64,
    /// Deliveries that ended in a retry (a failure, or the plugin asked).
    pub retried: u64,
    /// Deliveries that failed (error, trap, timeout, memory, limit, abandoned).
    pub failed: u64,
    /// Events moved to the dead-letter stream.
    pub dead: u64,
    /// Commits refused because another host wrote what the batch read (state-reading
    /// plugins); each batch was handled again on fresh state.
    pub conflicts: u64,
    /// Retries scheduled now.
    pub scheduled: u64,
    /// Entries in the dead-letter stream now.
    pub dead_letters: u64,
    /// Entries delivered to the group and not acknowledged yet.
    pub pending: u64,
    /// Entries in the stream not yet delivered to the group (None if Redis cannot tell).
    pub lag: Option<u64>,
}

/// Read the status of job `name`; None if no host ever registered it.
pub async fn status<C: AsyncCommands>(
    conn: &mut C,
    keys: &Keys,
    name: &str,
) -> Result<Option<JobStatus>, StoreError> {
    let source: Option<String> = conn.hget(keys.jobs(), name).await?;
    let Some(source) = source else {
        return Ok(None);
    };
    let hash: HashMap<String, String> = conn.hgetall(keys.job(name, &source)).await?;
    let num = |k: &str| hash.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    let group = hash
        .get("group")
        .cloned()
        .unwrap_or_else(|| keys.group(name));
    let mut status = JobStatus {
        name: name.into(),
        source: source.clone(),
        plugin: hash.get("plugin").cloned().unwrap_or_default(),
        group: group.clone(),
        started_at: hash.get("started_at").and_then(|v| v.parse().ok()),
        received: num("received"),
        acked: num("acked"),
        skipped: num("skipped"),
        retried: num("retried"),
        failed: num("failed"),
        dead: num("dead"),
        conflicts: num("conflicts"),
        scheduled: conn.zcard(keys.retry(name, &source)).await?,
        dead_letters: conn.xlen(keys.dlq(name, &source)).await?,
        pending: 0,
        lag: None,
    };
    // Pending and (Redis ≥ 7) lag; a stream that is gone shows nothing pending.
    if let Ok(Some(g)) = super::groups::group_info(conn, &source, &group).await {
        status.pending = g.pending.unwrap_or(0);
        status.lag = g.lag;
    }
    Ok(Some(status))
}
