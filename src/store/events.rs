//! The status of one event (source entry) of a job, from its status record and the
//! consumer group.
//!
//! Keys read: the record ([`Keys::event_prefix`] + id), the retry set ([`Keys::retry`]),
//! the source stream and its group (`XPENDING`, `XINFO GROUPS`).
//!
//! Statuses: `pending` (in the stream, not delivered yet), `processing` (delivered to a
//! consumer, no result yet), `retrying` (failed, scheduled again), `done`, `dead` (in the
//! dead-letter stream). An acknowledged entry with no record is `done` (events done on their
//! first delivery get no record unless the job sets `done_ttl_s`; other records expire
//! after `status_ttl_s`).

use redis::aio::ConnectionLike;
use serde::Serialize;

use super::groups::{group_info, parse_id};
use super::{Keys, StoreError};

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EventStatus {
    pub job: String,
    pub id: String,
    pub status: String,
    /// Deliveries so far.
    pub attempts: Option<u32>,
    /// The last error, if a delivery failed.
    pub error: Option<String>,
    /// sha256 of the plugin version that last handled it.
    pub plugin: Option<String>,
    /// When the record was last written, ms since the epoch.
    pub updated_at: Option<u64>,
    /// The consumer holding it, while it is pending in the group.
    pub consumer: Option<String>,
    /// When it is due again, while retrying (ms since the epoch).
    pub retry_at: Option<u64>,
    /// How the status was worked out, when there is no record to go by.
    pub note: Option<String>,
}

/// A status record, `status|attempts|plugin|updated_at|error` (see commit.lua); empty
/// parts are None.
#[derive(Default)]
struct Record<'a> {
    status: Option<&'a str>,
    attempts: Option<u32>,
    plugin: Option<&'a str>,
    updated_at: Option<u64>,
    error: Option<&'a str>,
}

impl<'a> Record<'a> {
    fn parse(text: &'a str) -> Record<'a> {
        let parts: Vec<&str> = text.splitn(5, '|').collect();
        let part = |i: usize| parts.get(i).copied().filter(|v| !v.is_empty());
        Record {
            status: part(0),
            attempts: part(1).and_then(|v| v.parse().ok()),
            plugin: part(2),
            updated_at: part(3).and_then(|v| v.parse().ok()),
            error: part(4),
        }
    }
}

/// Replies of the pipeline in [`get`]: record, XPENDING row, retry due time, the entry.
type Lookup = (
    Option<String>,
    Vec<(String, String, u64, u32)>,
    Option<f64>,
    Vec<(String, Vec<Vec<u8>>)>,
);

/// The status of entry `id` of `job` (reading `source` through `group`); None if neither
/// the stream nor a record knows it.
pub async fn get<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    id: &str,
) -> Result<Option<EventStatus>, StoreError> {
    let group = keys.group(job);
    let (record, pending, retry_at, entry): Lookup = redis::pipe()
        .get(format!("{}{id}", keys.event_prefix(job, source)))
        .cmd("XPENDING")
        .arg(source)
        .arg(&group)
        .arg(id)
        .arg(id)
        .arg(1)
        .zscore(keys.retry(job, source), id)
        .xrange(source, id, id)
        .query_async(conn)
        .await?;
    let record = record.as_deref().map(Record::parse).unwrap_or_default();
    let mut status = EventStatus {
        job: job.into(),
        id: id.into(),
        attempts: record.attempts,
        error: record.error.map(str::to_string),
        plugin: record.plugin.map(str::to_string),
        updated_at: record.updated_at,
        ..EventStatus::default()
    };
    if let Some((_, consumer, _idle, deliveries)) = pending.into_iter().next() {
        status.attempts = Some(deliveries);
        status.consumer = Some(consumer);
        status.retry_at = retry_at.map(|t| t as u64);
        status.status = if retry_at.is_some() {
            "retrying"
        } else {
            "processing"
        }
        .into();
    } else if let Some(s) = record.status {
        status.status = s.to_string();
    } else {
        let delivered = group_info(conn, source, &group)
            .await?
            .map(|g| g.last_delivered);
        let past = delivered.is_some_and(|last| parse_id(id) <= parse_id(&last));
        status.status = match (entry.is_empty(), past) {
            (false, true) => {
                status.note = Some(
                    "no status record: acknowledged by the consumer group, so done on its first \
                     delivery (or its record expired)"
                        .into(),
                );
                "done"
            }
            (false, false) => "pending",
            // Gone from the stream, with no record: unknown — an entry trimmed after it was
            // acknowledged (retention) looks the same as an id that never was.
            (true, _) => return Ok(None),
        }
        .into();
    }
    Ok(Some(status))
}

/// An entry delivered to the job's group and not acknowledged yet (being handled, or waiting
/// for its retry).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    /// The consumer (host) holding it.
    pub consumer: String,
    /// Since its last delivery, in ms.
    pub idle_ms: u64,
    pub deliveries: u32,
}

/// The `limit` oldest entries pending in `job`'s group on `source`.
pub async fn pending<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    limit: usize,
) -> Result<Vec<Pending>, StoreError> {
    let rows: Vec<(String, String, u64, u32)> = redis::cmd("XPENDING")
        .arg(source)
        .arg(keys.group(job))
        .arg("-")
        .arg("+")
        .arg(limit)
        .query_async(conn)
        .await
        .or_else(|e| {
            // No group yet (no host ran the job): nothing is pending.
            if e.code() == Some("NOGROUP") {
                Ok(Vec::new())
            } else {
                Err(e)
            }
        })?;
    Ok(rows
        .into_iter()
        .map(|(id, consumer, idle_ms, deliveries)| Pending {
            id,
            consumer,
            idle_ms,
            deliveries,
        })
        .collect())
}

/// A retry scheduled for a source entry of a job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Scheduled {
    pub id: String,
    /// When it is due, ms since the epoch.
    pub due_at: u64,
    /// Deliveries so far (from its status record, if it has one).
    pub attempts: Option<u32>,
    /// The error of its last delivery.
    pub error: Option<String>,
}

/// The `limit` retries of `job` due first, with what their status records say.
pub async fn scheduled<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    limit: usize,
) -> Result<Vec<Scheduled>, StoreError> {
    let due: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(keys.retry(job, source))
        .arg(0)
        .arg(limit.max(1) - 1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let prefix = keys.event_prefix(job, source);
    let records: Vec<Option<String>> = redis::cmd("MGET")
        .arg(
            due.iter()
                .map(|(id, _)| format!("{prefix}{id}"))
                .collect::<Vec<_>>(),
        )
        .query_async(conn)
        .await?;
    Ok(due
        .into_iter()
        .zip(records)
        .map(|((id, at), record)| {
            let record = record.as_deref().map(Record::parse).unwrap_or_default();
            Scheduled {
                id,
                due_at: at as u64,
                attempts: record.attempts,
                error: record.error.map(str::to_string),
            }
        })
        .collect())
}
