//! The reader stage: due retries, entries idle on other consumers, then new entries; and the
//! keeper that resets the idle time of the entries in flight here.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{InFlight, RETRY_POLL, ReadPolicy, redis_backoff};
use crate::model::Event;
use crate::store::StoreError;
use crate::store::stream::{StreamCommitter, StreamReader};

/// Every third of `claim_idle_ms`, reset the idle time of the entries still in flight here
/// (when they are still ours), so that a slow batch, or one waiting in the pipeline, is not
/// taken over by another host while it is being handled.
pub(super) async fn keep_fresh(
    mut committer: StreamCommitter,
    in_flight: InFlight,
    claim_idle_ms: u64,
) {
    let every = Duration::from_millis((claim_idle_ms / 3).max(30));
    loop {
        tokio::time::sleep(every).await;
        let ids = in_flight.ids();
        if let Err(e) = committer.refresh(&ids, claim_idle_ms / 3).await {
            tracing::debug!(
                job = &*committer.job().job,
                "refreshing in-flight entries failed: {e}"
            );
        }
    }
}

pub(super) async fn read_stage(
    mut reader: StreamReader,
    policy: ReadPolicy,
    mut stop: watch::Receiver<bool>,
    out: mpsc::Sender<Vec<Event>>,
    in_flight: InFlight,
) {
    let job = reader.job().job.clone();
    let mut backoff = redis_backoff();
    // When to look for due retries next, and for idle entries to take over. Both start now:
    // a restarted host first picks up what a dead one left.
    let mut next_retry_check = Instant::now();
    let mut next_reclaim = Instant::now();
    let mut cursor = "-".to_string();
    let reclaim_every = Duration::from_millis(policy.claim_idle_ms / 2)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    while !*stop.borrow() {
        let step = read_step(
            &mut reader,
            &policy,
            &mut next_retry_check,
            &mut next_reclaim,
            &mut cursor,
            reclaim_every,
            &in_flight,
        )
        .await;
        match step {
            Ok(batches) => {
                backoff = redis_backoff();
                // All of them in flight (kept fresh) before any waits for the handler: a batch
                // waiting behind another must not go idle and be taken over.
                for events in &batches {
                    in_flight.add(events);
                }
                for events in batches {
                    if !events.is_empty() && out.send(events).await.is_err() {
                        // The handler stage is gone (it panicked): these stay pending.
                        return;
                    }
                }
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(job = &*job, "reading failed, retrying in {delay:?}: {e}");
                let _ = tokio::time::timeout(delay, stop.changed()).await;
            }
        }
    }
}

/// One round of reading: due retries, then (when it is time) entries idle on other
/// consumers, then new entries, blocking no longer than the next due retry or reclaim.
async fn read_step(
    reader: &mut StreamReader,
    policy: &ReadPolicy,
    next_retry_check: &mut Instant,
    next_reclaim: &mut Instant,
    cursor: &mut String,
    reclaim_every: Duration,
    in_flight: &InFlight,
) -> Result<Vec<Vec<Event>>, StoreError> {
    let mut batches = Vec::new();
    let now = Instant::now();
    if now >= *next_retry_check {
        let (due, next_due) = reader.take_due(policy.batch).await?;
        let until_next = next_due
            .map(|at| Duration::from_millis(at.saturating_sub(crate::model::now_ms())))
            .unwrap_or(RETRY_POLL);
        *next_retry_check = now + until_next.min(RETRY_POLL);
        batches.push(due);
    }
    if now >= *next_reclaim {
        let idle = reader
            .reclaim(policy.batch, policy.claim_idle_ms, cursor, in_flight.ids())
            .await;
        // Due retries already claimed above must not be dropped because this failed.
        let (idle, next) = match idle {
            Ok(found) => found,
            Err(e) if batches.iter().any(|b: &Vec<Event>| !b.is_empty()) => {
                tracing::warn!(
                    job = &*reader.job().job,
                    "taking over idle entries failed: {e}"
                );
                return Ok(batches);
            }
            Err(e) => return Err(e),
        };
        if !idle.is_empty() {
            tracing::info!(
                job = &*reader.job().job,
                entries = idle.len(),
                "took over entries idle on other consumers"
            );
        }
        // Go on scanning at once until the scan goes round, then pause.
        if next == "-" {
            *next_reclaim = now + reclaim_every;
        }
        *cursor = next;
        batches.push(idle);
    }
    if batches.iter().all(Vec::is_empty) {
        let wait = (*next_retry_check)
            .min(*next_reclaim)
            .saturating_duration_since(Instant::now());
        let block = (wait.as_millis() as u64).clamp(1, policy.block_ms);
        batches.push(reader.read(policy.batch, block).await?);
    }
    Ok(batches)
}
