//! The committer stage: batches in read order, each in chunks of the commit script, retried
//! while Redis is away, refused batches failed and retried rather than lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{CommitObserver, Handled, InFlight, RunnerStats, redis_backoff};
use crate::model::{Decision, DeliveryPolicy, Effect, Event, FailureKind, Outcome};
use crate::store::StoreError;
use crate::store::stream::{Committed, Refused, StreamCommitter};

pub(super) async fn commit_stage(
    mut committer: StreamCommitter,
    delivery: DeliveryPolicy,
    mut input: mpsc::Receiver<Handled>,
    observer: Option<Arc<dyn CommitObserver>>,
    committed_count: watch::Sender<u64>,
    in_flight: InFlight,
) -> RunnerStats {
    let job = committer.job().job.clone();
    let mut stats = RunnerStats::default();
    while let Some(Handled {
        events,
        mut outcomes,
        version,
        strict,
    }) = input.recv().await
    {
        for (event, outcome) in events.iter().zip(&outcomes) {
            if let Outcome::Failed(failure) = outcome {
                tracing::warn!(job = &*job, event = %event.id, kind = failure.kind.as_str(), "event failed: {}", failure.message);
            }
        }
        // One script call per chunk of at most MAX_COMMIT_BYTES of effects, in order: each
        // event is still all-or-nothing, and a big batch stays under Redis's request limits.
        let mut committed = Committed::default();
        for range in chunks(&outcomes) {
            let Some(c) = commit(
                &mut committer,
                &delivery,
                &events[range.clone()],
                &mut outcomes[range],
                strict,
                &version,
            )
            .await
            else {
                // Leave: the entries not committed stay pending and are taken over by the
                // runners of the new run once idle.
                tracing::warn!(
                    job = &*job,
                    "a newer run of the job has begun; this runner stops without committing"
                );
                stats.superseded = true;
                return stats;
            };
            committed.acked += c.acked;
            committed.skipped += c.skipped;
            committed.retried += c.retried;
            committed.failed += c.failed;
            committed.dead += c.dead;
            committed.stale += c.stale;
        }
        in_flight.remove(&events);
        if let Some(observer) = &observer {
            observer.committed(&events, &outcomes);
        }
        stats.batches += 1;
        let _ = committed_count.send(stats.batches);
        stats.committed.acked += committed.acked;
        stats.committed.skipped += committed.skipped;
        stats.committed.retried += committed.retried;
        stats.committed.failed += committed.failed;
        stats.committed.dead += committed.dead;
        stats.committed.stale += committed.stale;
        if committed.stale > 0 {
            tracing::info!(
                job = &*job,
                stale = committed.stale,
                "events already committed or reclaimed elsewhere were not written again"
            );
        }
    }
    stats
}

/// Most effect bytes sent in one commit script call.
const MAX_COMMIT_BYTES: usize = 64 << 20;

/// Split a batch into consecutive ranges of at most [`MAX_COMMIT_BYTES`] of effects (an event
/// bigger than that alone in its range; events are capped far below it).
fn chunks(outcomes: &[Outcome]) -> Vec<std::ops::Range<usize>> {
    let size = |o: &Outcome| match o {
        Outcome::Handled { effects, .. } => 64 + effects.iter().map(Effect::size).sum::<usize>(),
        Outcome::Failed(_) => 64,
    };
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, outcome) in outcomes.iter().enumerate() {
        let s = size(outcome);
        if i > start && bytes + s > MAX_COMMIT_BYTES {
            ranges.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += s;
    }
    if start < outcomes.len() {
        ranges.push(start..outcomes.len());
    }
    ranges
}

/// Commit until it succeeds; None when a newer run of the job has begun (nothing written).
///
/// - A key of the wrong type fails the events that write it (they are retried like any
///   failure); for a plugin that reads state (`strict`), the whole batch, because later events
///   may have read those events' writes.
/// - (strict) An event taken over by another host: the whole batch is failed and retried, for
///   the same reason.
/// - A connection error is retried with backoff (the script skips what it already committed).
/// - Any other error of the script means it could fail again the same way: the batch's events
///   are failed (retried later, then dead-lettered) rather than retried forever.
async fn commit(
    committer: &mut StreamCommitter,
    delivery: &DeliveryPolicy,
    events: &[Event],
    outcomes: &mut [Outcome],
    mut strict: bool,
    version: &str,
) -> Option<Committed> {
    let job = committer.job().job.clone();
    let mut backoff = redis_backoff();
    let fail_all = |outcomes: &mut [Outcome], message: &str| {
        for outcome in outcomes.iter_mut() {
            *outcome = Outcome::failed(FailureKind::Error, message.to_string());
        }
    };
    loop {
        let decisions: Vec<Decision> = events
            .iter()
            .zip(outcomes.iter())
            .map(|(e, o)| delivery.decide(o, e.delivery_count))
            .collect();
        match committer
            .commit(events, outcomes, &decisions, strict, version)
            .await
        {
            Ok(Ok(committed)) => return Some(committed),
            Ok(Err(Refused::BadTarget(bad))) => {
                let message = format!(
                    "`{}` holds a {}, which this write cannot use",
                    bad.key, bad.kind
                );
                tracing::warn!(
                    job = &*job,
                    events = bad.events.len(),
                    "commit refused: {message}"
                );
                if strict || bad.events.is_empty() {
                    fail_all(outcomes, &format!("batch refused: {message}"));
                } else {
                    for &i in &bad.events {
                        outcomes[i] = Outcome::failed(FailureKind::Limit, message.clone());
                    }
                }
            }
            Ok(Err(Refused::Superseded)) => return None,
            Ok(Err(Refused::Stale)) => {
                tracing::info!(
                    job = &*job,
                    "an event of the batch was taken over elsewhere; the batch will run again"
                );
                fail_all(
                    outcomes,
                    "batch re-run: another host took over one of its events, whose writes later \
                     events may have read",
                );
                // What is left to write (retries of the events still ours) reads nothing.
                strict = false;
            }
            Err(e) if !e.is_connection() && !e.is_loading() => {
                tracing::error!(
                    job = &*job,
                    "commit failed, failing the batch's events: {e}"
                );
                fail_all(outcomes, &format!("commit failed: {e}"));
                strict = false;
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                log_commit_error(&job, &e, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn log_commit_error(job: &str, e: &StoreError, delay: Duration) {
    if e.is_connection() {
        tracing::warn!(
            job,
            "redis unreachable while committing, retrying in {delay:?}: {e}"
        );
    } else {
        tracing::error!(job, "commit failed, retrying in {delay:?}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Disposition;

    fn emitting(bytes: usize) -> Outcome {
        Outcome::Handled {
            disposition: Disposition::Ack,
            effects: vec![Effect::Emit {
                stream: "s".into(),
                fields: vec![("f".into(), vec![0; bytes])],
                max_len: None,
            }],
        }
    }

    #[test]
    fn batches_split_by_effect_bytes_in_order() {
        let small: Vec<Outcome> = (0..10).map(|_| emitting(10)).collect();
        assert_eq!(chunks(&small), vec![0..10]);
        let big: Vec<Outcome> = (0..5).map(|_| emitting(30 << 20)).collect();
        assert_eq!(chunks(&big), vec![0..2, 2..4, 4..5]);
        assert!(chunks(&[]).is_empty());
    }
}
