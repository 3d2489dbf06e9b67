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
    /// Events acknowledged as duplicates of a committed idempotency key (`flow.dedupe_by`).
    pub duplicates: u64,
    /// Retries scheduled now.
    pub scheduled: u64,
    /// Entries in the dead-letter stream now.
    pub dead_letters: u64,
    /// Entries delivered to the group and not acknowledged yet.
    pub pending: u64,
    /// Entries in the stream not yet delivered to the group, and for a list job the items
    /// still in its list (None if Redis cannot tell).
    pub lag: Option<u64>,
    /// For a list job: items still in its list, not yet moved into its list stream.
    pub in_list: Option<u64>,
    /// For a channel job: whether a host is subscribed now, and which (its consumer name).
    /// Messages published while none is are lost.
    pub subscribed: Option<bool>,
    pub subscriber: Option<String>,
    /// For a scan job: its passes.
    pub scan: Option<super::scan::ScanStatus>,
    /// (Redis Cluster) Entries of the job's outbox not yet forwarded to their targets in
    /// other slots, and the age of the oldest, ms: the forwarding lag (0 on one server).
    pub outbox: u64,
    pub outbox_lag_ms: u64,
}

/// How many jobs' statuses [`statuses`] reads at once.
const READ_AT_ONCE: usize = 16;

/// The status of each job of `names`, in order, read a few jobs at a time over the shared
/// (multiplexed) connection: a listing of many jobs costs a few round trips' time, not a few
/// per job.
pub async fn statuses(
    conn: &super::Conn,
    keys: &Keys,
    names: Vec<String>,
) -> Result<Vec<Option<JobStatus>>, StoreError> {
    use futures_util::{StreamExt, TryStreamExt};
    // Each read owns what it uses (a stream of borrowing futures trips the compiler's
    // higher-ranked lifetime check inside axum handlers).
    let (conn, keys) = (conn.clone(), keys.clone());
    futures_util::stream::iter(names.into_iter().map(move |name| {
        let (mut conn, keys) = (conn.clone(), keys.clone());
        async move { status(&mut conn, &keys, &name).await }
    }))
    .buffered(READ_AT_ONCE)
    .try_collect()
    .await
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
        duplicates: num("duplicates"),
        scheduled: conn.zcard(keys.retry(name, &source)).await?,
        dead_letters: conn.xlen(keys.dlq(name, &source)).await?,
        pending: 0,
        lag: None,
        in_list: None,
        subscribed: None,
        subscriber: None,
        scan: None,
        outbox: 0,
        outbox_lag_ms: 0,
    };
    (status.outbox, status.outbox_lag_ms) = super::forward::lag(conn, keys, name, &source).await?;
    // Pending and (Redis ≥ 7) lag; a stream that is gone shows nothing pending.
    if let Ok(Some(g)) = super::groups::group_info(conn, &source, &group).await {
        status.pending = g.pending.unwrap_or(0);
        status.lag = g.lag;
    }
    if let Some(list) = keys.list_of_stream(&source) {
        let len: u64 = match conn.llen(&list).await {
            Ok(n) => n,
            // Another type: the job reads nothing from it (its host says so).
            Err(e) if e.code() == Some("WRONGTYPE") => 0,
            Err(e) => return Err(e.into()),
        };
        status.in_list = Some(len);
        status.lag = status.lag.map(|l| l + len);
    }
    if source == keys.scan_stream(name) {
        let tasks: u64 = conn.xlen(keys.scan_tasks(name)).await?;
        status.scan = Some(super::scan::ScanStatus::of(&hash, tasks));
    }
    if source == keys.channel_stream(name) {
        let subscriber = super::channel::subscriber(conn, &keys.channel_lease(name)).await?;
        status.subscribed = Some(subscriber.is_some());
        status.subscriber = subscriber;
    }
    Ok(Some(status))
}

/// What [`purge`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub keys: u64,
    pub groups: u64,
}

/// `text` with the characters special in a `SCAN MATCH` pattern escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Delete everything a job keeps in Redis: its consumer group on its source stream, its
/// keys (counters, retries, dead letters, status records, lifecycle stream, kv, counters,
/// windows), its entry in [`Keys::jobs`] and its entries in the source's held set. Not the
/// source stream: producers and other jobs own it. For a job no host runs any more.
/// `source` is the stream the job reads ([`Keys::source_stream`]).
pub async fn purge(
    conn: &mut crate::store::Conn,
    keys: &Keys,
    name: &str,
    source: &str,
) -> Result<Purged, StoreError> {
    let source = source.to_string();
    let group = keys.group(name);
    let job_key = keys.job(name, &source);
    let mut purged = Purged::default();
    let destroyed: redis::RedisResult<u64> = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&source)
        .arg(&group)
        .query_async(conn)
        .await;
    // No stream (never written, or deleted): no group either.
    purged.groups += destroyed.unwrap_or(0);
    let mut doomed: Vec<String> = vec![job_key.clone()];
    let pattern = format!("{}:*", glob_escape(&job_key));
    // The job's keys share its hash tag: on a cluster, they are all on its slot's master.
    doomed.extend(conn.scan_node_of(&job_key, &pattern).await?);
    // A scan's, a channel's or a timer's stream is the job's own (a list's is shared by the
    // jobs on the list): it goes with the job, and so do its walk tasks, cache and lease.
    if source == keys.scan_stream(name)
        || source == keys.channel_stream(name)
        || source == keys.timer_stream(name)
    {
        doomed.push(source.clone());
        let own = format!("{}:*", glob_escape(&source));
        doomed.extend(conn.scan_node_of(&source, &own).await?);
    }
    for chunk in doomed.chunks(500) {
        let n: u64 = redis::cmd("UNLINK").arg(chunk).query_async(conn).await?;
        purged.keys += n;
    }
    let _: u64 = conn.hdel(keys.jobs(), name).await?;
    // Held entries of this group: `<group>/<id>` members of the source's held set.
    let held = keys.held(&source);
    let pattern = format!("{}/*", glob_escape(&group));
    let mut members: Vec<String> = Vec::new();
    {
        let mut found: redis::AsyncIter<(String, f64)> = conn.zscan_match(&held, &pattern).await?;
        while let Some(member) = found.next_item().await {
            members.push(member?.0);
        }
    }
    for chunk in members.chunks(500) {
        let _: u64 = conn.zrem(&held, chunk).await?;
    }
    Ok(purged)
}
