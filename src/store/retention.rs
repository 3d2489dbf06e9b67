//! Retention of a source stream (`retention = "acked"`): trimming the entries every consumer
//! group on it has acknowledged, by `retention.lua`, one host at a time. Keys: the stream and
//! its retention lock.

use std::time::Duration;

use crate::store::Conn;

use super::{Keys, StoreError, scripts};

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trim {
    /// Entries below `kept_from` were trimmed (`trimmed` of them; 0 if none was due).
    Trimmed { trimmed: u64, kept_from: String },
    /// Another host (`holder`) trimmed within the interval.
    Locked { holder: String },
    /// Nothing to decide on: no stream, or no consumer group on it.
    Skipped(String),
}

/// Trim `stream` of what every group on it acknowledged, unless a host did within `every`
/// (None: a stopping job's last pass, made whoever trimmed last);
/// acknowledged entries younger than `keep` stay, and nothing goes while one of `groups`
/// (those of the jobs registered on the stream) does not exist yet.
pub async fn trim(
    conn: &mut Conn,
    keys: &Keys,
    stream: &str,
    holder: &str,
    every: Option<Duration>,
    keep: Duration,
    groups: &[String],
) -> Result<Trim, StoreError> {
    let (n, text): (i64, String) = scripts::RETENTION
        .key(stream)
        .key(keys.retention_lock(stream))
        .key(keys.held(stream))
        .arg(holder)
        // None: a last pass, whoever holds the lock.
        .arg(every.map_or(0, |e| e.as_millis().max(1) as u64))
        .arg(keep.as_millis() as u64)
        .arg(groups)
        .invoke_async(conn)
        .await?;
    Ok(match n {
        -1 => Trim::Locked { holder: text },
        -2 => Trim::Skipped(text),
        n => Trim::Trimmed {
            trimmed: n.max(0) as u64,
            kept_from: text,
        },
    })
}
