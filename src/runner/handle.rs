//! The handler stage: each batch on a blocking thread, a new plugin version taken between
//! batches, and (for plugins that read state) each batch only after the previous one is
//! committed.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::priority::{Priority, Turn};
use super::{Handled, HandlerSlot, Read, Stamps};
use crate::model::{DeliveryPolicy, Event, FailureKind, Handler, Outcome};

/// How the handler stage handles: its handler, where a new version waits, the job's
/// delivery policy, and its priority group's turns.
pub(super) struct Handling {
    pub handler: Box<dyn Handler>,
    pub next: HandlerSlot,
    pub delivery: DeliveryPolicy,
    pub priority: Option<Priority>,
}

pub(super) async fn handle_stage(
    Handling {
        mut handler,
        next,
        delivery,
        priority,
    }: Handling,
    mut input: mpsc::Receiver<Read>,
    out: mpsc::Sender<Handled>,
    mut committed: watch::Receiver<u64>,
    mut redo: mpsc::UnboundedReceiver<Vec<Event>>,
) -> anyhow::Result<()> {
    let mut handled = 0u64;
    // With a priority group: the turn held, and how many more batches it lasts.
    let mut turn: Option<(Turn, u32)> = None;
    loop {
        // A turn is kept while the next batch is ready, let go before waiting for one.
        let read = match input.try_recv() {
            Ok(read) => read,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                turn = None;
                match input.recv().await {
                    Some(read) => read,
                    None => break,
                }
            }
        };
        let Read { events: batch, at } = read;
        // A new version takes over between batches: everything handled so far is on its way
        // to the committer with the old version's name on it.
        if let Some(next) = next.take() {
            let started = Instant::now();
            let from = handler.version().to_string();
            let old = std::mem::replace(&mut handler, next);
            // Dropping the old handler frees its instances (one per lane): on a blocking
            // thread, not this async worker; the next batch does not wait for it.
            tokio::task::spawn_blocking(move || drop(old));
            tracing::info!(
                from = crate::model::short(&from),
                to = crate::model::short(handler.version()),
                pause_us = started.elapsed().as_micros() as u64,
                "plugin swapped: the next batch runs on the new version"
            );
        }
        // A handler may stop part-way through a batch (its outcomes would hold too much):
        // the rest goes on as a batch of its own.
        let mut pieces = VecDeque::from([batch]);
        let mut read_at = at;
        while let Some(mut events) = pieces.pop_front() {
            let reads_state = handler.reads_state();
            if reads_state && committed.wait_for(|c| *c >= handled).await.is_err() {
                // Every earlier batch must be in Redis before this one reads state.
                return Ok(());
            }
            handled += 1;
            if let Some(p) = &priority {
                if turn.as_ref().is_none_or(|(_, left)| *left == 0) {
                    // Its turn used up: back in the queue (holding it would wait forever).
                    drop(turn.take());
                    turn = Some((p.gate.turn().await, p.weight.max(1)));
                }
                if let Some((_, left)) = turn.as_mut() {
                    *left -= 1;
                }
            }
            loop {
                let started = Instant::now();
                let (h, mut evs, outcomes, reads) = tokio::task::spawn_blocking(move || {
                    let outcomes = handle_batch(handler.as_mut(), &events, &delivery);
                    let reads = handler.take_reads();
                    (handler, events, outcomes, reads)
                })
                .await
                .map_err(|e| anyhow::anyhow!("the handler panicked: {e}"))?;
                handler = h;
                if let Some(e) = evs.first() {
                    crate::metrics::handled(&e.job, outcomes.len(), started.elapsed());
                }
                if outcomes.len() < evs.len() {
                    pieces.push_front(evs.split_off(outcomes.len()));
                }
                let batch = Handled {
                    events: evs,
                    outcomes,
                    version: handler.version().to_string(),
                    reads: reads_state.then_some(reads),
                    stamps: Stamps {
                        read: read_at,
                        handled: Instant::now(),
                    },
                };
                if out.send(batch).await.is_err() {
                    return Ok(());
                }
                if !reads_state {
                    break;
                }
                // A state-reading batch is committed, or comes back (what is left of it) when
                // another host wrote what it read: then it is handled again, on fresh state.
                tokio::select! {
                    done = committed.wait_for(|c| *c >= handled) => {
                        if done.is_err() {
                            return Ok(());
                        }
                        break;
                    }
                    Some(again) = redo.recv() => {
                        events = again;
                        read_at = Instant::now();
                    }
                }
            }
        }
    }
    Ok(())
}

/// Hand the batch to the handler, except events delivered more than `max_deliveries` times
/// (their hosts died while handling them: those fail as abandoned without running again) and
/// entries over `max_entry_bytes` (dead-lettered unhandled). The outcomes are those of a
/// prefix of `events`, never empty: as far as the handler went.
fn handle_batch(
    handler: &mut dyn Handler,
    events: &[Event],
    delivery: &DeliveryPolicy,
) -> Vec<Outcome> {
    let refusal = |e: &Event| -> Option<Outcome> {
        if e.duplicate {
            return Some(Outcome::Handled {
                disposition: crate::model::Disposition::Skip,
                effects: Vec::new(),
            });
        }
        let bytes = e.size();
        if bytes > delivery.max_entry_bytes {
            return Some(Outcome::failed(
                FailureKind::Oversized,
                format!(
                    "the entry takes {bytes} bytes, over the job's max_entry_bytes of {}",
                    delivery.max_entry_bytes
                ),
            ));
        }
        (e.delivery_count > delivery.max_deliveries).then(|| {
            Outcome::failed(
                FailureKind::Abandoned,
                format!(
                    "delivered {} times without a result (the hosts handling it stopped)",
                    e.delivery_count
                ),
            )
        })
    };
    let refused: Vec<Option<Outcome>> = events.iter().map(refusal).collect();
    let mut handled = if refused.iter().all(Option::is_none) {
        handler.handle_batch(events)
    } else {
        let fresh: Vec<Event> = events
            .iter()
            .zip(&refused)
            .filter(|(_, r)| r.is_none())
            .map(|(e, _)| e.clone())
            .collect();
        if fresh.is_empty() {
            Vec::new()
        } else {
            handler.handle_batch(&fresh)
        }
    }
    .into_iter();
    let mut outcomes = Vec::with_capacity(events.len());
    for refused in refused {
        match refused {
            Some(outcome) => outcomes.push(outcome),
            None => match handled.next() {
                Some(outcome) => outcomes.push(outcome),
                None => break,
            },
        }
    }
    if outcomes.is_empty() {
        outcomes.push(Outcome::failed(
            FailureKind::Abandoned,
            "the handler returned no outcome",
        ));
    }
    outcomes
}
