//! The handler stage: each batch on a blocking thread, a new plugin version taken between
//! batches, and (for plugins that read state) each batch only after the previous one is
//! committed.

use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::{Handled, HandlerSlot};
use crate::model::{Event, FailureKind, Handler, Outcome};

pub(super) async fn handle_stage(
    mut handler: Box<dyn Handler>,
    next: HandlerSlot,
    max_deliveries: u32,
    mut input: mpsc::Receiver<Vec<Event>>,
    out: mpsc::Sender<Handled>,
    mut committed: watch::Receiver<u64>,
    mut redo: mpsc::UnboundedReceiver<Vec<Event>>,
) -> anyhow::Result<()> {
    let mut handled = 0u64;
    while let Some(mut events) = input.recv().await {
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
        if reads_state && committed.wait_for(|c| *c >= handled).await.is_err() {
            // Every earlier batch must be in Redis before this one reads state.
            return Ok(());
        }
        handled += 1;
        loop {
            let (h, evs, outcomes, reads) = tokio::task::spawn_blocking(move || {
                let outcomes = handle_batch(handler.as_mut(), &events, max_deliveries);
                let reads = handler.take_reads();
                (handler, events, outcomes, reads)
            })
            .await
            .map_err(|e| anyhow::anyhow!("the handler panicked: {e}"))?;
            handler = h;
            let batch = Handled {
                events: evs,
                outcomes,
                version: handler.version().to_string(),
                reads: reads_state.then_some(reads),
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
                Some(again) = redo.recv() => events = again,
            }
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
