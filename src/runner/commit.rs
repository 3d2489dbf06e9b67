//! The committer stage: batches in read order, each in chunks of the commit script, retried
//! while Redis is away, refused batches failed and retried rather than lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{CommitObserver, Handled, InFlight, RunnerStats, Stamps, redis_backoff};
use crate::model::{
    Decision, DeliveryPolicy, Event, FailureKind, MAX_COMMIT_COST, Outcome, ReadSet,
};
use crate::store::StoreError;
use crate::store::stream::{Committed, Refused, StreamCommitter};

/// How many times a state-reading batch is handled again on fresh state after losing to
/// another host's writes, before its events are failed (and retried later with the job's
/// backoff, then dead-lettered: a batch that can never win ends visibly).
const MAX_REDOS: u32 = 20;

pub(super) async fn commit_stage(
    mut committer: StreamCommitter,
    (delivery, mut breaker): (DeliveryPolicy, Option<super::breaker::LocalBreaker>),
    mut input: mpsc::Receiver<Handled>,
    observer: Option<Arc<dyn CommitObserver>>,
    committed_count: watch::Sender<u64>,
    in_flight: InFlight,
    redo: mpsc::UnboundedSender<Vec<Event>>,
) -> RunnerStats {
    let job = committer.job().job.clone();
    // The job's source events are what `sluice_events_total` counts (as `job status` does);
    // the lifecycle runner's job-started and job-finished, and threshold-reached, are not.
    let source = committer.job().entries.is_input();
    let mut stats = RunnerStats::default();
    // Conflicts of the batch being committed (its redos come back through `input`).
    let mut redos = 0u32;
    let mut redo_backoff =
        crate::model::backoff(Duration::from_millis(1), Duration::from_millis(100));
    // Pauses before handling again events whose state reads met Redis trouble.
    let mut unavailable_backoff = redis_backoff();
    'batches: while let Some(Handled {
        events,
        mut outcomes,
        version,
        reads,
        stamps,
    }) = input.recv().await
    {
        for (event, outcome) in events.iter().zip(&outcomes) {
            match outcome {
                // Not the event's failure: said once for the batch below.
                Outcome::Failed(f) if f.kind == FailureKind::Unavailable => {
                    tracing::debug!(job = &*job, event = %event.id, "job state could not be read: {}", f.message);
                }
                Outcome::Failed(failure) => {
                    let span = crate::logging::event_span(
                        &job,
                        &event.source,
                        &event.id,
                        &version,
                        event.delivery_count,
                    );
                    let _span = span.entered();
                    tracing::warn!(job = &*job, event = %event.id, kind = failure.kind.as_str(), "event failed: {}", failure.message);
                    crate::metrics::failure(&job, failure);
                }
                Outcome::Handled { .. } => {}
            }
        }
        // One script call per chunk of at most MAX_COMMIT_COST, in order: each
        // event is still all-or-nothing, and a big batch stays under Redis's request limits.
        let mut committed = Committed::default();
        let no_reads = ReadSet::default();
        // Events whose reads of job state met Redis trouble are not charged for it: from the
        // first of them on, the batch is handled again after a pause; what precedes it is
        // committed now.
        let cut = outcomes
            .iter()
            .position(|o| matches!(o, Outcome::Failed(f) if f.kind == FailureKind::Unavailable))
            .unwrap_or(outcomes.len());
        // The breaker judges the batch before it is committed: one that trips it is not, so
        // its events stay pending (for `job resume`) rather than go to the dead letters.
        if let Some(reason) = breaker.as_mut().and_then(|b| b.judge(&outcomes[..cut])) {
            match committer.pause(&reason).await {
                Ok(paused) => {
                    if paused {
                        crate::metrics::breaker_trip(&job);
                        tracing::warn!(
                            job = &*job,
                            "job paused by its breaker (`sluice job resume {job}` runs it again): {reason}"
                        );
                    }
                    // Paused (by this host or another), or changed meanwhile: this runner
                    // stops, and lets go of what it holds (`JobRunner::run`).
                    stats.paused = true;
                    return stats;
                }
                Err(e) => tracing::warn!(job = &*job, "pausing the job failed; going on: {e}"),
            }
        }
        let mut ranges = chunks(&events[..cut], &outcomes[..cut]);
        // Set once a state-reading batch gave up on its reads: its rest is failed, and
        // committed (retries scheduled) without read checks.
        let mut given_up = false;
        let mut n = 0;
        while n < ranges.len() {
            let range = ranges[n].clone();
            // A batch that read state is checked whole with its first chunk. What follows it
            // was derived from values read before that chunk was written, and another host
            // may write between two commits: it is handled again on fresh state, as after a
            // conflict (it makes progress: each round commits at least a chunk).
            if n > 0 && !given_up && reads.as_ref().is_some_and(|r| !r.is_empty()) {
                observe(
                    &observer,
                    &in_flight,
                    &events[..range.start],
                    &outcomes[..range.start],
                    &stamps,
                );
                if redo.send(events[range.start..].to_vec()).is_err() {
                    return stats;
                }
                continue 'batches;
            }
            // Later chunks of a batch that read nothing stay all-or-nothing (strict).
            let checked = match &reads {
                _ if given_up => None,
                Some(r) if n == 0 => Some(r),
                Some(_) => Some(&no_reads),
                None => None,
            };
            let started = std::time::Instant::now();
            let result = commit(
                &mut committer,
                &delivery,
                &events[range.clone()],
                &mut outcomes[range.clone()],
                checked,
                &version,
            )
            .await;
            crate::metrics::commit_time(&job, started.elapsed());
            if let Commit::Conflict(key) = &result {
                stats.conflicts += 1;
                crate::metrics::conflict(&job);
                committer.count_conflict().await;
                let rest = events[range.start..].to_vec();
                if redos < MAX_REDOS {
                    redos += 1;
                    tracing::debug!(job = &*job, key = %key, redos, "another host wrote what the batch read; handling it again");
                    // What was committed of the batch is done; the rest is handled again.
                    observe(
                        &observer,
                        &in_flight,
                        &events[..range.start],
                        &outcomes[..range.start],
                        &stamps,
                    );
                    tokio::time::sleep(redo_backoff.next().unwrap_or(Duration::from_millis(100)))
                        .await;
                    if redo.send(rest).is_err() {
                        return stats;
                    }
                    continue 'batches;
                }
                tracing::warn!(job = &*job, key = %key, redos, "the batch kept losing to other hosts' writes; its events are retried later");
                for outcome in &mut outcomes[range.start..cut] {
                    *outcome = Outcome::failed(
                        FailureKind::Conflict,
                        format!("`{key}` kept changing under the batch ({redos} tries)"),
                    );
                }
                // The rest again, failed, in chunks of its new cost (from this chunk on).
                given_up = true;
                ranges.truncate(n);
                let rest = chunks(&events[range.start..cut], &outcomes[range.start..cut]);
                ranges.extend(
                    rest.into_iter()
                        .map(|r| r.start + range.start..r.end + range.start),
                );
                continue;
            }
            let c = match result {
                Commit::Done(c) => c,
                // Conflicts are not reported without a read set.
                Commit::Conflict(_) => Committed::default(),
                Commit::Superseded => {
                    // Leave: the entries not committed stay pending and are taken over by
                    // the runners of the new run once idle.
                    tracing::warn!(
                        job = &*job,
                        "a newer run of the job has begun; this runner stops without committing"
                    );
                    stats.superseded = true;
                    return stats;
                }
            };
            add(&mut committed, &c);
            crate::metrics::duplicates(&job, c.duplicates);
            // A plugin that answered `retry(after)` (a 429 downstream) slows its event's key.
            let slowed = slowed(
                committer.job(),
                &events[range.clone()],
                &outcomes[range.clone()],
            );
            if !slowed.is_empty()
                && let Err(e) = committer.slow(slowed).await
            {
                tracing::debug!(job = &*job, "slowing keys after retry(after) failed: {e}");
            }
            if source {
                crate::metrics::committed(
                    &job,
                    &version,
                    [
                        ("acked", c.acked),
                        ("skipped", c.skipped),
                        ("retried", c.retried),
                        ("failed", c.failed),
                        ("dead", c.dead),
                    ],
                );
            }
            n += 1;
        }
        if cut < events.len() {
            observe(
                &observer,
                &in_flight,
                &events[..cut],
                &outcomes[..cut],
                &stamps,
            );
            add(&mut stats.committed, &committed);
            let delay = unavailable_backoff.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(
                job = &*job,
                events = events.len() - cut,
                "job state could not be read (Redis trouble): handling these events again in {delay:?}, not charged"
            );
            tokio::time::sleep(delay).await;
            if redo.send(events[cut..].to_vec()).is_err() {
                return stats;
            }
            continue 'batches;
        }
        unavailable_backoff = redis_backoff();
        redos = 0;
        redo_backoff = crate::model::backoff(Duration::from_millis(1), Duration::from_millis(100));
        observe(&observer, &in_flight, &events, &outcomes, &stamps);
        stats.batches += 1;
        let _ = committed_count.send(stats.batches);
        add(&mut stats.committed, &committed);
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

/// Add what a commit did to a total.
/// The keys of `flow.key_rate_limit` to slow down: those of events whose plugin answered
/// `retry(after)`, each until its `after`.
fn slowed(
    job: &crate::store::stream::StreamJob,
    events: &[Event],
    outcomes: &[Outcome],
) -> Vec<crate::store::stream::Take> {
    let Some((field, rate)) = job.flow.key_rate() else {
        return Vec::new();
    };
    events
        .iter()
        .zip(outcomes)
        .filter_map(|(e, o)| match o {
            Outcome::Handled {
                disposition: crate::model::Disposition::Retry(Some(after)),
                ..
            } if *after > 0 => Some(crate::store::stream::Take {
                not_before_ms: u64::from(*after),
                ..crate::store::stream::Take::of(&job.flow_key("rate", Some(&field), e)?, rate, 0)
            }),
            _ => None,
        })
        .collect()
}

fn add(total: &mut Committed, c: &Committed) {
    total.acked += c.acked;
    total.skipped += c.skipped;
    total.retried += c.retried;
    total.failed += c.failed;
    total.dead += c.dead;
    total.stale += c.stale;
    total.duplicates += c.duplicates;
}

/// Committed events: no longer in flight here, and told to the observer.
fn observe(
    observer: &Option<Arc<dyn CommitObserver>>,
    in_flight: &InFlight,
    events: &[Event],
    outcomes: &[Outcome],
    stamps: &Stamps,
) {
    if events.is_empty() {
        return;
    }
    in_flight.remove(events);
    if let Some(observer) = observer {
        observer.committed(events, outcomes, stamps);
    }
}

/// How a commit ended.
enum Commit {
    Done(Committed),
    /// A newer run of the job has begun: nothing was written, the runner stops.
    Superseded,
    /// (with a read set) Another host wrote this key, which the batch read: nothing was
    /// written; the batch must be handled again.
    Conflict(String),
}

/// Split a batch into consecutive ranges of at most [`MAX_COMMIT_COST`] (an event costing
/// more than that alone in its range; events are capped below it).
fn chunks(events: &[Event], outcomes: &[Outcome]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut cost) = (0, 0);
    for (i, (event, outcome)) in events.iter().zip(outcomes).enumerate() {
        let c = outcome.cost(event);
        if i > start && cost + c > MAX_COMMIT_COST {
            ranges.push(start..i);
            (start, cost) = (i, 0);
        }
        cost += c;
    }
    if start < outcomes.len() {
        ranges.push(start..outcomes.len());
    }
    ranges
}

/// Commit until it succeeds, a newer run of the job has begun, or (with `reads`) the batch
/// read something another host changed meanwhile.
///
/// - A key of the wrong type fails the events that write it (they are retried like any
///   failure); for a plugin that reads state (`reads`), the whole batch, because later events
///   may have read those events' writes.
/// - (reads) An event taken over by another host: the whole batch is failed and retried, for
///   the same reason.
/// - A connection error is retried with backoff (the script skips what it already committed).
/// - Any other error of the script means it could fail again the same way: the batch's events
///   are failed (retried later, then dead-lettered) rather than retried forever.
async fn commit(
    committer: &mut StreamCommitter,
    delivery: &DeliveryPolicy,
    events: &[Event],
    outcomes: &mut [Outcome],
    mut reads: Option<&ReadSet>,
    version: &str,
) -> Commit {
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
            .commit(events, outcomes, &decisions, reads, version)
            .await
        {
            Ok(Ok(committed)) => return Commit::Done(committed),
            Ok(Err(Refused::Conflict { key })) => return Commit::Conflict(key),
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
                if reads.is_some() || bad.events.is_empty() {
                    fail_all(outcomes, &format!("batch refused: {message}"));
                    // Failures write nothing: there is nothing left to serialize.
                    reads = None;
                } else {
                    for &i in &bad.events {
                        outcomes[i] = Outcome::failed(FailureKind::Limit, message.clone());
                    }
                }
            }
            Ok(Err(Refused::Superseded)) => return Commit::Superseded,
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
                reads = None;
            }
            Err(e) if !e.is_redis_trouble() => {
                tracing::error!(
                    job = &*job,
                    "commit failed, failing the batch's events: {e}"
                );
                fail_all(outcomes, &format!("commit failed: {e}"));
                reads = None;
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
    use crate::model::{Disposition, Effect};

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

    fn event() -> Event {
        Event {
            kind: crate::model::KIND_STREAM_ENTRY,
            id: "1-0".into(),
            source: "s".into(),
            fields: vec![("f".into(), b"v".to_vec())],
            delivery_count: 1,
            job: "j".into(),
            settle: None,
            duplicate: false,
        }
    }

    #[test]
    fn a_failure_costs_the_copy_of_its_entry() {
        let mut big = event();
        big.fields = vec![("f".into(), vec![0; 1 << 20])];
        let failed = Outcome::failed(FailureKind::Error, "x");
        assert!(failed.cost(&big) > 1 << 20);
        let oversized = Outcome::failed(FailureKind::Oversized, "x");
        assert!(
            oversized.cost(&big) < 4096,
            "an oversized entry is never copied"
        );
    }

    fn empty_fields(fields: usize) -> Outcome {
        Outcome::Handled {
            disposition: Disposition::Ack,
            effects: vec![Effect::Emit {
                stream: "s".into(),
                fields: vec![(String::new(), Vec::new()); fields],
                max_len: None,
            }],
        }
    }

    #[test]
    fn batches_split_by_cost_in_order() {
        let small: Vec<Outcome> = (0..10).map(|_| emitting(10)).collect();
        let ev = |n: usize| -> Vec<Event> { (0..n).map(|_| event()).collect() };
        assert_eq!(chunks(&ev(10), &small), vec![0..10]);
        let big: Vec<Outcome> = (0..5).map(|_| emitting(3 << 20)).collect();
        assert_eq!(chunks(&ev(5), &big), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
        let half: Vec<Outcome> = (0..5).map(|_| emitting(1 << 20)).collect();
        assert_eq!(chunks(&ev(5), &half), vec![0..3, 3..5]);
        assert!(chunks(&[], &[]).is_empty());
    }

    #[test]
    fn empty_fields_cost_their_arguments() {
        // 1000 empty fields have no bytes, but 2000 script arguments.
        let o = empty_fields(1000);
        assert!(o.cost(&event()) > 2000 * crate::model::ARG_COST);
        let many: Vec<Outcome> = (0..200).map(|_| empty_fields(1000)).collect();
        let events: Vec<Event> = (0..200).map(|_| event()).collect();
        assert!(chunks(&events, &many).len() >= 3);
    }
}
