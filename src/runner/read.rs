//! The reader stage: due retries, entries idle on other consumers, then new entries; and the
//! keeper that resets the idle time of the entries in flight here.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::flow::Flow;
use super::{InFlight, RETRY_POLL, Read, ReadPolicy, redis_backoff};
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

/// Input bytes one read should bring at most: with up to five batches in the pipeline
/// (reader, two channels, handler, committer), what the host holds of its input stays near
/// five times this, whatever size the producers' entries are.
const MAX_READ_BYTES: usize = 8 << 20;

/// How many entries to ask for in one read: the job's batch, fewer when entries are big, so
/// a read brings about [`MAX_READ_BYTES`] at most. Until sizes are known, a small read (4
/// entries). It adapts after each read: a read mixing many big entries among small ones can
/// still bring its count times their size.
struct ReadSize {
    batch: usize,
    /// Average bytes of the entries seen lately (None: nothing read yet).
    average: Option<usize>,
}

impl ReadSize {
    fn new(batch: usize) -> Self {
        ReadSize {
            batch,
            average: None,
        }
    }

    fn count(&self) -> usize {
        match self.average {
            None => self.batch.min(4),
            Some(avg) => (MAX_READ_BYTES / avg.max(1)).clamp(1, self.batch),
        }
    }

    fn observe(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let avg = events.iter().map(|e| e.size() + 64).sum::<usize>() / events.len();
        // Big entries count at once; small ones bring the average down over a few reads.
        self.average = Some(match self.average {
            Some(old) if avg < old => (old * 3 + avg) / 4,
            _ => avg,
        });
    }
}

/// Most entries the gate holds back (behind their key, or their key's rate) per entry of a
/// batch: past that, no new entries are read until some go.
const HELD_PER_BATCH: usize = 10;

pub(super) async fn read_stage(
    mut reader: StreamReader,
    policy: ReadPolicy,
    mut stop: watch::Receiver<bool>,
    out: mpsc::Sender<Read>,
    in_flight: InFlight,
    mut flow: Option<Flow>,
    mut committed: watch::Receiver<u64>,
) {
    let job = reader.job().job.clone();
    let mut backoff = redis_backoff();
    // Due retries and idle entries are both looked for at once: a restarted host first picks
    // up what a dead one left.
    let mut schedule = Schedule {
        next_retry_check: Instant::now(),
        next_reclaim: Instant::now(),
        cursor: "-".to_string(),
        reclaim_every: Duration::from_millis(policy.claim_idle_ms / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(5)),
    };
    let mut size = ReadSize::new(policy.batch);
    while !*stop.borrow() {
        let mut wake = None;
        let mut fresh = true;
        let mut count = size.count();
        if let Some(flow) = flow.as_mut() {
            let events = flow.release().await;
            if !events.is_empty() {
                let at = Instant::now();
                if out.send(Read { events, at }).await.is_err() {
                    return;
                }
            }
            wake = flow.next_wake();
            count = flow.read_count(count);
            // Full, or a read waiting for the job's rate: no new entries until held ones go
            // (due retries and takeovers still come: what is held may wait for entries a
            // dead host left).
            fresh = flow.reads(HELD_PER_BATCH * policy.batch.max(100));
        }
        let step = read_step(
            &mut reader,
            &policy,
            count,
            &mut schedule,
            &in_flight,
            (wake, fresh),
        )
        .await;
        match step {
            Ok(batches) => {
                let at = Instant::now();
                backoff = redis_backoff();
                let none = batches.iter().all(Vec::is_empty);
                // All of them in flight (kept fresh) before any waits for the handler: a batch
                // waiting behind another must not go idle and be taken over.
                for events in &batches {
                    in_flight.add(events);
                    size.observe(events);
                }
                for events in batches {
                    let events = match flow.as_mut() {
                        Some(flow) if !events.is_empty() => flow.admit(events).await,
                        _ => events,
                    };
                    if !events.is_empty() && out.send(Read { events, at }).await.is_err() {
                        // The handler stage is gone (it panicked): these stay pending.
                        return;
                    }
                }
                // Entries held behind others of their key: asked about again soon, or as
                // soon as this host commits (the one they wait for may be its own).
                if let (true, Some(flow), Some(wake)) = (none, flow.as_mut(), wake)
                    && wake <= Instant::now() + super::flow::ORDER_POLL
                {
                    tokio::select! {
                        () = tokio::time::sleep_until(wake.into()) => {}
                        Ok(()) = committed.changed() => flow.nudge(),
                        _ = stop.changed() => {}
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
    // Entries held back are not this runner's to finish: any host takes them over at once.
    if let Some(flow) = flow {
        flow.let_go(&in_flight, policy.claim_idle_ms).await;
    }
}

/// When the reader looks for due retries and for idle entries to take over.
struct Schedule {
    next_retry_check: Instant,
    next_reclaim: Instant,
    /// Where the scan for idle entries goes on.
    cursor: String,
    reclaim_every: Duration,
}

/// One round of reading (`count` entries at most each): due retries, then (when it is time)
/// entries idle on other consumers, then new entries, blocking no longer than the next due
/// retry or reclaim.
async fn read_step(
    reader: &mut StreamReader,
    policy: &ReadPolicy,
    count: usize,
    schedule: &mut Schedule,
    in_flight: &InFlight,
    (wake, fresh): (Option<Instant>, bool),
) -> Result<Vec<Vec<Event>>, StoreError> {
    let Schedule {
        next_retry_check,
        next_reclaim,
        cursor,
        reclaim_every,
    } = schedule;
    let reclaim_every = *reclaim_every;
    let mut batches = Vec::new();
    let now = Instant::now();
    if now >= *next_retry_check {
        let (due, next_due) = reader.take_due(count).await?;
        let until_next = next_due
            .map(|at| Duration::from_millis(at.saturating_sub(crate::model::now_ms())))
            .unwrap_or(RETRY_POLL);
        *next_retry_check = now + until_next.min(RETRY_POLL);
        batches.push(due);
    }
    if now >= *next_reclaim {
        let idle = reader
            .reclaim(count, policy.claim_idle_ms, cursor, in_flight.ids())
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
            .min(wake.unwrap_or(*next_reclaim))
            .saturating_duration_since(Instant::now());
        // Entries held for a moment: the reader waits for them itself (or for a commit),
        // not in Redis (which times blocking reads out only every 100 ms, at its default hz).
        let soon = wake.is_some_and(|w| w <= Instant::now() + super::flow::ORDER_POLL);
        let block = match soon {
            true => 0,
            false => (wait.as_millis() as u64).clamp(1, policy.block_ms),
        };
        if fresh {
            batches.push(reader.read(count, block).await?);
        } else if !soon {
            tokio::time::sleep(Duration::from_millis(block)).await;
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize, bytes: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                kind: crate::model::KIND_STREAM_ENTRY,
                id: format!("{i}-0"),
                source: "s".into(),
                fields: vec![("f".into(), vec![0; bytes])],
                delivery_count: 1,
                job: "j".into(),
                settle: None,
                duplicate: false,
            })
            .collect()
    }

    #[test]
    fn reads_ask_for_fewer_entries_when_they_are_big() {
        let mut size = ReadSize::new(256);
        assert_eq!(size.count(), 4, "small until sizes are known");
        size.observe(&entries(16, 100));
        assert_eq!(size.count(), 256);
        size.observe(&entries(4, 1 << 20));
        assert_eq!(size.count(), 7, "about 8 MiB of 1 MiB entries");
        for _ in 0..20 {
            size.observe(&entries(15, 100));
        }
        assert_eq!(size.count(), 256, "and back once they are small again");
    }
}
