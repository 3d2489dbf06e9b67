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
//! the host's grace period runs out, in which case the batch stays pending in Redis.

pub mod breaker;
mod commit;
mod flow;
mod handle;
pub mod priority;
mod read;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use self::commit::commit_stage;
use self::handle::handle_stage;
use self::read::{keep_fresh, read_stage};
use crate::model::{DeliveryPolicy, Event, Handler, Outcome};
use crate::store::stream::{Committed, StreamCommitter, StreamReader};

/// Told about every committed batch; used by the benchmark to time publish→ack and where a
/// batch's time went.
pub trait CommitObserver: Send + Sync {
    fn committed(&self, events: &[Event], outcomes: &[Outcome], stamps: &Stamps);
}

/// When a batch passed the stages before its commit (the commit ends as the observer is told).
#[derive(Debug, Clone, Copy)]
pub struct Stamps {
    /// Its read returned (for a batch handled again, when it came back to the handler).
    pub read: Instant,
    /// Its handler returned.
    pub handled: Instant,
}

/// A batch read, on its way to the handler.
pub(crate) struct Read {
    pub events: Vec<Event>,
    pub at: Instant,
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

/// The idle time given to entries a runner lets go: past any job's `claim_idle_ms`, so that
/// any host takes them over at once.
const LET_GO_IDLE_MS: u64 = 86_400_000;

/// How often to look for due retries when no retry is known to be due sooner.
pub(crate) const RETRY_POLL: Duration = Duration::from_millis(100);

/// What a runner did over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerStats {
    pub batches: u64,
    pub committed: Committed,
    /// The runner stopped because a newer run of its job began.
    pub superseded: bool,
    /// The runner stopped because the job's breaker tripped (the job is paused).
    pub paused: bool,
    /// Commits refused because another host wrote what the batch read (each handled again).
    pub conflicts: u64,
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
    /// Its priority group's turns on this host, if it has one.
    priority: Option<priority::Priority>,
    /// The job's circuit breaker, judging each batch before it is committed.
    breaker: Option<crate::model::BreakerOptions>,
}

/// Delays between attempts while Redis is unreachable: 50 ms doubling to 5 s, with jitter.
pub(crate) fn redis_backoff() -> impl Iterator<Item = Duration> {
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

    pub(crate) fn take(&self) -> Option<Box<dyn Handler>> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A handled batch on its way to the committer.
pub(crate) struct Handled {
    pub events: Vec<Event>,
    pub outcomes: Vec<Outcome>,
    /// The version of the handler that produced the outcomes.
    pub version: String,
    pub stamps: Stamps,
    /// The handler reads state: what it read, for the commit to check, which also commits
    /// the batch all-or-nothing (see [`commit`]). None for handlers that read no state.
    pub reads: Option<crate::model::ReadSet>,
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
            priority: None,
            breaker: None,
        }
    }

    /// Judge each batch with the job's breaker before committing it.
    pub fn with_breaker(mut self, breaker: crate::model::BreakerOptions) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Take turns with the other jobs of a priority group on this host.
    pub fn with_priority(mut self, priority: priority::Priority) -> Self {
        self.priority = Some(priority);
        self
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
    pub async fn run(mut self, stop: watch::Receiver<bool>) -> anyhow::Result<RunnerStats> {
        self.committer.set_stop(stop.clone());
        let job = self.reader.job().job.clone();
        let stream = self.reader.job().stream.clone();
        tracing::info!(job = &*job, stream = %stream, consumer = %self.reader.job().consumer, "job running");
        let (read_tx, read_rx) = mpsc::channel::<Read>(1);
        let (handled_tx, handled_rx) = mpsc::channel::<Handled>(1);
        // State-reading batches that lost to another host's writes, back to the handler.
        let (redo_tx, redo_rx) = mpsc::unbounded_channel::<Vec<Event>>();
        // Commits done so far; a handler that reads state waits for the previous batch's.
        let (committed_tx, committed_rx) = watch::channel(0u64);
        // Ids read and not yet committed: never taken back from ourselves, kept fresh.
        let in_flight = InFlight::default();
        let keeper = tokio::spawn(keep_fresh(
            self.committer.refresher(),
            in_flight.clone(),
            self.policy.claim_idle_ms,
        ));
        let flow = flow::Flow::new(self.committer.gatekeeper());
        let mut gate = self.committer.gatekeeper();
        let mut reader = tokio::spawn(read_stage(
            self.reader,
            self.policy,
            stop,
            read_tx,
            in_flight.clone(),
            flow,
            committed_rx.clone(),
        ));
        let handler = tokio::spawn(handle_stage(
            handle::Handling {
                handler: self.handler,
                next: self.next,
                delivery: self.delivery,
                priority: self.priority,
            },
            read_rx,
            handled_tx,
            committed_rx,
            redo_rx,
        ));
        let stats = commit_stage(
            self.committer,
            (self.delivery, self.breaker.map(breaker::LocalBreaker::new)),
            handled_rx,
            self.observer,
            committed_tx,
            in_flight.clone(),
            redo_tx,
        )
        .await;
        keeper.abort();
        // The committer ends when the handler stage has ended, which ends after the reader —
        // or early, when a newer run has begun: then the stages before it are ended here (an
        // idle reader would otherwise wait for entries it could never commit). What they
        // hold stays pending for the new run.
        if stats.superseded || stats.paused {
            reader.abort();
            handler.abort();
        }
        // Paused by its breaker: what the runner read and did not commit goes back at once
        // for any host to take once the job is resumed (not after `claim_idle_ms`).
        if stats.paused {
            // The reader is ended first: nothing more comes in flight meanwhile.
            let _ = (&mut reader).await;
            let ids = in_flight.ids();
            if let Err(e) = gate.let_go(&ids, LET_GO_IDLE_MS).await {
                tracing::debug!(job = &*job, "letting entries go failed: {e}");
            }
        }
        let handled = handler.await;
        if !stats.paused {
            let _ = reader.await;
        }
        tracing::info!(
            job = &*job,
            stream = %stream,
            batches = stats.batches,
            acked = stats.committed.acked,
            failed = stats.committed.failed,
            "job stopped"
        );
        match handled {
            _ if stats.superseded => Err(anyhow::anyhow!(
                "superseded: a newer run of the job has begun"
            )),
            // Its breaker paused the job: the stages before the committer were ended.
            _ if stats.paused => Ok(stats),
            Ok(Ok(())) => Ok(stats),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("the handler stage panicked: {e}")),
        }
    }
}

/// The ids a runner has read and not yet committed.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

impl InFlight {
    /// Count deliveries, not ids: the same entry can be in two batches of the pipeline (a
    /// due retry read again), and committing the first must not forget the second.
    pub fn add(&self, events: &[Event]) {
        if let Ok(mut set) = self.0.lock() {
            for e in events {
                *set.entry(e.id.clone()).or_default() += 1;
            }
        }
    }
    pub fn remove(&self, events: &[Event]) {
        if let Ok(mut set) = self.0.lock() {
            for e in events {
                if let Some(n) = set.get_mut(&e.id) {
                    *n -= 1;
                    if *n == 0 {
                        set.remove(&e.id);
                    }
                }
            }
        }
    }
    pub fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
        Event {
            kind: crate::model::KIND_STREAM_ENTRY,
            id: id.into(),
            source: "s".into(),
            fields: Vec::new(),
            delivery_count: 1,
            job: "j".into(),
            settle: None,
            duplicate: false,
        }
    }

    #[test]
    fn an_entry_in_two_batches_stays_in_flight_until_both_commit() {
        let in_flight = InFlight::default();
        let first = vec![event("1-0"), event("2-0")];
        let again = vec![event("2-0")];
        in_flight.add(&first);
        in_flight.add(&again);
        in_flight.remove(&first);
        assert_eq!(in_flight.ids(), vec!["2-0".to_string()]);
        in_flight.remove(&again);
        assert!(in_flight.ids().is_empty());
    }
}
