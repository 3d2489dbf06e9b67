//! The job runner: joins a source ([`store`](crate::store)) and a [`Handler`]
//! (a plugin from [`runtime`](crate::runtime), or a native one): read a batch, handle it on a
//! blocking thread, commit it, repeat until told to stop.
//!
//! Invariants: a batch is committed before the next is read; nothing is acknowledged unless
//! the commit script wrote its effects in the same step; a batch that was read is always
//! handled and committed, even when a stop arrives meanwhile (a stop is only checked between
//! batches). A commit that fails on the connection is retried (the script skips events it
//! already committed) until it succeeds or the service's grace period runs out, in which
//! case the batch simply stays pending in Redis.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;

use crate::event::{Effect, Event, FailureKind, Handler, Outcome};
use crate::store::StoreError;
use crate::store::stream::{Committed, StreamSource};

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
}

/// What a runner did over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerStats {
    pub batches: u64,
    pub committed: Committed,
}

pub struct JobRunner {
    source: StreamSource,
    /// Taken while a batch runs on a blocking thread, put back after.
    handler: Option<Box<dyn Handler>>,
    policy: ReadPolicy,
    observer: Option<Arc<dyn CommitObserver>>,
}

/// Delays between attempts while Redis is unreachable: 50 ms doubling to 5 s, with jitter.
fn redis_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

impl JobRunner {
    pub fn new(source: StreamSource, handler: Box<dyn Handler>, policy: ReadPolicy) -> Self {
        JobRunner {
            source,
            handler: Some(handler),
            policy,
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn CommitObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Run until `stop` turns true; returns what was done. An error means the handler
    /// panicked: the job stops, its last batch stays pending.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> anyhow::Result<RunnerStats> {
        let job = self.source.job().job.clone();
        let mut stats = RunnerStats::default();
        let mut backoff = redis_backoff();
        tracing::info!(job = &*job, stream = %self.source.job().stream, consumer = %self.source.job().consumer, "job running");
        while !*stop.borrow() {
            let events = match self
                .source
                .read(self.policy.batch, self.policy.block_ms)
                .await
            {
                Ok(events) => {
                    backoff = redis_backoff();
                    events
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(job = &*job, "reading failed, retrying in {delay:?}: {e}");
                    let _ = tokio::time::timeout(delay, stop.changed()).await;
                    continue;
                }
            };
            if events.is_empty() {
                continue;
            }
            let (events, mut outcomes) = self.handle(events).await?;
            for (event, outcome) in events.iter().zip(&outcomes) {
                if let Outcome::Failed(failure) = outcome {
                    tracing::warn!(job = &*job, event = %event.id, kind = failure.kind.as_str(), "event failed: {}", failure.message);
                }
            }
            let committed = self.commit(&events, &mut outcomes).await;
            if let Some(observer) = &self.observer {
                observer.committed(&events, &outcomes);
            }
            stats.batches += 1;
            stats.committed.acked += committed.acked;
            stats.committed.skipped += committed.skipped;
            stats.committed.failed += committed.failed;
            stats.committed.stale += committed.stale;
            if committed.stale > 0 {
                tracing::info!(
                    job = &*job,
                    stale = committed.stale,
                    "events already committed or reclaimed elsewhere were not written again"
                );
            }
        }
        tracing::info!(
            job = &*job,
            batches = stats.batches,
            acked = stats.committed.acked,
            failed = stats.committed.failed,
            "job stopped"
        );
        Ok(stats)
    }

    async fn handle(&mut self, events: Vec<Event>) -> anyhow::Result<(Vec<Event>, Vec<Outcome>)> {
        let Some(mut handler) = self.handler.take() else {
            anyhow::bail!("the handler was lost by an earlier panic");
        };
        let (handler, events, outcomes) = tokio::task::spawn_blocking(move || {
            let outcomes = handler.handle_batch(&events);
            (handler, events, outcomes)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the handler panicked: {e}"))?;
        self.handler = Some(handler);
        Ok((events, outcomes))
    }

    /// Commit until it succeeds. An emit target holding a non-stream fails the events that
    /// emit to it (they stay pending) and the rest is committed.
    async fn commit(&mut self, events: &[Event], outcomes: &mut [Outcome]) -> Committed {
        let job = self.source.job().job.clone();
        let mut backoff = redis_backoff();
        loop {
            match self.source.commit(events, outcomes).await {
                Ok(Ok(committed)) => return committed,
                Ok(Err(bad)) => {
                    let message = format!(
                        "emit target `{}` holds a {}, not a stream",
                        bad.key, bad.kind
                    );
                    for (event, outcome) in events.iter().zip(outcomes.iter_mut()) {
                        let emits_there = matches!(outcome, Outcome::Handled { effects, .. }
                            if effects.iter().any(|Effect::Emit { stream, .. }| *stream == bad.key));
                        if emits_there {
                            tracing::warn!(job = &*job, event = %event.id, "event failed: {message}");
                            *outcome = Outcome::failed(FailureKind::Limit, message.clone());
                        }
                    }
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    log_commit_error(&job, &e, delay);
                    tokio::time::sleep(delay).await;
                }
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
