//! Lifecycle events of a job: `job-started` once per run of the job, before any host handles
//! its first event, and `job-finished` once when a finite job has handled its whole source —
//! each exactly once across the fleet, however many hosts run the job.
//!
//! Both are entries of the job's lifecycle stream ([`Keys::lifecycle`]), appended by a script
//! that runs at most once per run (the job hash remembers the run it issued them for), and
//! handled like any event through the job's consumer group: committed with their effects,
//! retried, taken over from a dead host, dead-lettered (the stream is opened with
//! [`StreamJob::lifecycle`](super::stream::StreamJob::lifecycle)). A host reads the job's
//! source only once the lifecycle stream has nothing undelivered or pending ([`Gate`]).

use std::time::Duration;

use crate::store::Conn;
use tokio::sync::watch;

use super::groups::group_info;
use super::{Keys, StoreError, scripts};

/// Append `job-started` for `run`, unless done already. True if this call appended it.
pub async fn begin(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
    run: u64,
) -> Result<bool, StoreError> {
    let script = &*scripts::LIFECYCLE_BEGIN;
    let added: i64 = script
        .key(keys.job(job, source))
        .key(keys.lifecycle(job, source))
        .arg(run)
        .arg(keys.group(job))
        .invoke_async(conn)
        .await?;
    Ok(added == 1)
}

/// Where a finite job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Its source still has entries to deliver, pending or scheduled.
    Working,
    /// `job-finished` was appended by this call.
    FinishIssued,
    /// `job-finished` was appended earlier (by any host).
    FinishedBefore,
}

/// For a finite job: when its source is drained (nothing undelivered, pending, scheduled,
/// nor waiting `upstream`: a queue's delayed tasks, a list source's list), its outbox
/// forwarded, and `job-started` handled, append `job-finished` (once per run).
pub async fn check_finished(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
    upstream: Option<&str>,
    run: u64,
) -> Result<Progress, StoreError> {
    let script = &*scripts::LIFECYCLE_FINISH;
    let state: i64 = script
        .key(keys.job(job, source))
        .key(keys.lifecycle(job, source))
        .key(source)
        .key(keys.retry(job, source))
        // A queue's delayed tasks or a list source's list (same slot); else the retry set.
        .key(upstream.map_or_else(|| keys.retry(job, source), str::to_string))
        // Effects still waiting to be forwarded (a cluster's outbox) keep the job working.
        .key(keys.outbox(job, source))
        .arg(run)
        .arg(keys.group(job))
        .invoke_async(conn)
        .await?;
    Ok(match state {
        1 => Progress::FinishIssued,
        2 => Progress::FinishedBefore,
        _ => Progress::Working,
    })
}

/// True when the job's lifecycle stream has nothing undelivered or pending for its group.
pub async fn drained(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
) -> Result<bool, StoreError> {
    let group = group_info(conn, &keys.lifecycle(job, source), &keys.group(job)).await?;
    Ok(group.is_some_and(|g| g.pending == Some(0) && g.lag == Some(0)))
}

/// What a job's source runner waits behind: the job's lifecycle stream must be drained
/// (`job-started` handled, by any host) before the source is read.
pub struct Gate {
    pub conn: Conn,
    pub keys: Keys,
    pub job: String,
    pub source: String,
}

impl Gate {
    /// Poll until the lifecycle stream is drained; false if `stop` turned true meanwhile.
    pub async fn wait(mut self, mut stop: watch::Receiver<bool>) -> bool {
        loop {
            match drained(&mut self.conn, &self.keys, &self.job, &self.source).await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => tracing::debug!(job = %self.job, "waiting for job-started: {e}"),
            }
            if *stop.borrow() {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), stop.changed()).await;
        }
    }
}

/// A lifecycle event of a job, as its lifecycle stream holds it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Happened {
    /// Its entry id in the lifecycle stream.
    pub id: String,
    /// `job-started` or `job-finished`.
    pub kind: String,
    pub run: u64,
    /// When it was appended, ms since the epoch (Redis's clock: the entry id's time).
    pub at: u64,
}

/// The `limit` latest lifecycle events of `job`, newest first: its runs, each started and
/// (for a finite job) finished.
pub async fn history<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    limit: usize,
) -> Result<Vec<Happened>, StoreError> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
        .arg(keys.lifecycle(job, source))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(limit)
        .query_async(conn)
        .await?;
    Ok(entries
        .into_iter()
        .map(|(id, fields)| {
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|kv| kv.len() == 2 && kv[0] == name)
                    .map(|kv| kv[1].clone())
                    .unwrap_or_default()
            };
            Happened {
                at: id
                    .split('-')
                    .next()
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0),
                kind: field("kind"),
                run: field("run").parse().unwrap_or(0),
                id,
            }
        })
        .collect())
}
