//! The job runner: joins a source (a job's stream, [`store::stream`](crate::store::stream))
//! and a [`Handler`] (a plugin from [`runtime`](crate::runtime), or a native one) in a
//! three-stage pipeline:
//!
//! ```text
//! reader ──batch──▶ handler ──batch + outcomes──▶ committer
//! (XREADGROUP)      (blocking thread)             (commit script, in read order)
//! ```
//!
//! Each stage holds at most one batch and hands it on through a channel of one, so Redis
//! serves the next read and the previous commit while the plugin runs.
//!
//! Invariants: nothing is acknowledged unless the commit script wrote its effects in the
//! same step; batches are committed in the order they were read; a batch that was read is
//! always handled and committed, even when a stop arrives meanwhile (the reader checks the
//! stop between reads, and the later stages drain what it sent). A commit that fails on the
//! connection is retried (the script skips events it already committed) until it succeeds or
//! the service's grace period runs out, in which case the batch stays pending in Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::model::{Decision, DeliveryPolicy};
use crate::model::{Effect, Event, FailureKind, Handler, Outcome};
use crate::store::StoreError;
use crate::store::stream::{Committed, Refused, StreamCommitter, StreamReader};

/// Told about every committed batch; used by the benchmark to time publish→ack.
pub trait CommitObserver: Send + Sync {
    fn committed(&self, events: &[Event], outcomes: &[Outcome]);
}

/// How a runner reads.
#[derive(Debug, Clone, Copy)]
pub struct ReadPolicy {
    /// Most entries per batch.
    pub batch: usize,
    /// How long a read blocks waiting for entries.
    pub block_ms: u64,
    /// Entries idle on a consumer this long are taken over.
    pub claim_idle_ms: u64,
}

/// How often to look for due retries when no retry is known to be due sooner.
const RETRY_POLL: Duration = Duration::from_millis(100);

/// What a runner did over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerStats {
    pub batches: u64,
    pub committed: Committed,
    /// The runner stopped because a newer run of its job began.
    pub superseded: bool,
}

pub struct JobRunner {
    reader: StreamReader,
    handler: Box<dyn Handler>,
    /// A handler to switch to before the next batch (a new plugin version).
    next: HandlerSlot,
    committer: StreamCommitter,
    policy: ReadPolicy,
    delivery: DeliveryPolicy,
    observer: Option<Arc<dyn CommitObserver>>,
}

/// Delays between attempts while Redis is unreachable: 50 ms doubling to 5 s, with jitter.
fn redis_backoff() -> impl Iterator<Item = Duration> {
    crate::model::backoff(Duration::from_millis(50), Duration::from_secs(5))
}

/// Where a new handler waits for the runner to take it, before its next batch. Putting one
/// in never waits; a newer one replaces one not taken yet (the latest version wins).
#[derive(Clone, Default)]
pub struct HandlerSlot(Arc<std::sync::Mutex<Option<Box<dyn Handler>>>>);

impl HandlerSlot {
    pub fn put(&self, handler: Box<dyn Handler>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(handler);
        }
    }

    fn take(&self) -> Option<Box<dyn Handler>> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A handled batch on its way to the committer.
struct Handled {
    events: Vec<Event>,
    outcomes: Vec<Outcome>,
    /// The version of the handler that produced the outcomes.
    version: String,
    /// The handler reads state: commit the batch all-or-nothing (see [`commit`]).
    strict: bool,
}

impl JobRunner {
    pub fn new(
        (reader, committer): (StreamReader, StreamCommitter),
        handler: Box<dyn Handler>,
        policy: ReadPolicy,
        delivery: DeliveryPolicy,
    ) -> Self {
        JobRunner {
            reader,
            handler,
            next: HandlerSlot::default(),
            committer,
            policy,
            delivery,
            observer: None,
        }
    }

    /// Where to send a new handler: the batch being handled finishes (and is committed) with
    /// the old one, the next batch uses the new one.
    pub fn swapper(&self) -> HandlerSlot {
        self.next.clone()
    }

    pub fn with_observer(mut self, observer: Arc<dyn CommitObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Run until `stop` turns true and every batch read so far is committed. An error means
    /// the handler panicked: the job stops, the batches it held stay pending.
    pub async fn run(self, stop: watch::Receiver<bool>) -> anyhow::Result<RunnerStats> {
        let job = self.reader.job().job.clone();
        let stream = self.reader.job().stream.clone();
        tracing::info!(job = &*job, stream = %stream, consumer = %self.reader.job().consumer, "job running");
        let (read_tx, read_rx) = mpsc::channel::<Vec<Event>>(1);
        let (handled_tx, handled_rx) = mpsc::channel::<Handled>(1);
        // Commits done so far; a handler that reads state waits for the previous batch's.
        let (committed_tx, committed_rx) = watch::channel(0u64);
        // Ids read and not yet committed: never taken back from ourselves, kept fresh.
        let in_flight = InFlight::default();
        let keeper = tokio::spawn(keep_fresh(
            self.committer.refresher(),
            in_flight.clone(),
            self.policy.claim_idle_ms,
        ));
        let reader = tokio::spawn(read_stage(
            self.reader,
            self.policy,
            stop,
            read_tx,
            in_flight.clone(),
        ));
        let max = self.delivery.max_deliveries;
        let handler = tokio::spawn(handle_stage(
            self.handler,
            self.next,
            max,
            read_rx,
            handled_tx,
            committed_rx,
        ));
        let stats = commit_stage(
            self.committer,
            self.delivery,
            handled_rx,
            self.observer,
            committed_tx,
            in_flight,
        )
        .await;
        keeper.abort();
        // The committer ends when the handler stage has ended, which ends after the reader.
        let handled = handler.await;
        let _ = reader.await;
        tracing::info!(
            job = &*job,
            stream = %stream,
            batches = stats.batches,
            acked = stats.committed.acked,
            failed = stats.committed.failed,
            "job stopped"
        );
        match handled {
            Ok(Ok(())) if stats.superseded => Err(anyhow::anyhow!(
                "superseded: a newer run of the job has begun"
            )),
            Ok(Ok(())) => Ok(stats),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("the handler stage panicked: {e}")),
        }
    }
}

/// The ids a runner has read and not yet committed.
#[derive(Debug, Clone, Default)]
struct InFlight(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl InFlight {
    fn add(&self, events: &[Event]) {
        if let Ok(mut set) = self.0.lock() {
            set.extend(events.iter().map(|e| e.id.clone()));
        }
    }
    fn remove(&self, events: &[Event]) {
        if let Ok(mut set) = self.0.lock() {
            for e in events {
                set.remove(&e.id);
            }
        }
    }
    fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Every third of `claim_idle_ms`, reset the idle time of the entries still in flight here
/// (when they are still ours), so that a slow batch, or one waiting in the pipeline, is not
/// taken over by another host while it is being handled.
async fn keep_fresh(mut committer: StreamCommitter, in_flight: InFlight, claim_idle_ms: u64) {
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

async fn read_stage(
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
                for events in batches {
                    in_flight.add(&events);
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

async fn handle_stage(
    mut handler: Box<dyn Handler>,
    next: HandlerSlot,
    max_deliveries: u32,
    mut input: mpsc::Receiver<Vec<Event>>,
    out: mpsc::Sender<Handled>,
    mut committed: watch::Receiver<u64>,
) -> anyhow::Result<()> {
    let mut handled = 0u64;
    while let Some(events) = input.recv().await {
        // A new version takes over between batches: everything handled so far is on its way
        // to the committer with the old version's name on it.
        if let Some(next) = next.take() {
            let started = Instant::now();
            let from = handler.version().to_string();
            let old = std::mem::replace(&mut handler, next);
            // Dropping the old handler frees its instance; count it in the pause.
            drop(old);
            tracing::info!(
                from = crate::model::short(&from),
                to = crate::model::short(handler.version()),
                pause_us = started.elapsed().as_micros() as u64,
                "plugin swapped: the next batch runs on the new version"
            );
        }
        let reads_state = handler.reads_state();
        if reads_state {
            // Every earlier batch must be in Redis before this one reads state.
            while *committed.borrow_and_update() < handled {
                if committed.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
        handled += 1;
        let (h, events, outcomes) = tokio::task::spawn_blocking(move || {
            let outcomes = handle_batch(handler.as_mut(), &events, max_deliveries);
            (handler, events, outcomes)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the handler panicked: {e}"))?;
        handler = h;
        let batch = Handled {
            events,
            outcomes,
            version: handler.version().to_string(),
            strict: reads_state,
        };
        if out.send(batch).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Hand the batch to the handler, except events delivered more than `max_deliveries` times
/// (their hosts died while handling them): those fail as abandoned without running again.
fn handle_batch(handler: &mut dyn Handler, events: &[Event], max_deliveries: u32) -> Vec<Outcome> {
    if events.iter().all(|e| e.delivery_count <= max_deliveries) {
        return handler.handle_batch(events);
    }
    let (fresh, _): (Vec<Event>, Vec<Event>) = events
        .iter()
        .cloned()
        .partition(|e| e.delivery_count <= max_deliveries);
    let mut handled = handler.handle_batch(&fresh).into_iter();
    events
        .iter()
        .map(|e| {
            if e.delivery_count <= max_deliveries {
                handled.next().unwrap_or_else(|| {
                    Outcome::failed(
                        FailureKind::Abandoned,
                        "the handler returned too few outcomes",
                    )
                })
            } else {
                Outcome::failed(
                    FailureKind::Abandoned,
                    format!(
                        "delivered {} times without a result (the hosts handling it stopped)",
                        e.delivery_count
                    ),
                )
            }
        })
        .collect()
}

async fn commit_stage(
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
