//! [`PluginHandler`]: the [`Handler`] a job uses to run its events through a plugin.

use std::sync::Arc;

use super::host::{GuestContext, Overlay};
use super::instance::PluginInstance;
use super::plugin::LoadedPlugin;
use crate::model::{Disposition, Event, Handler, MAX_COMMIT_COST, Outcome, ReadSet};

/// Replace an instance after this many calls, bounding what a leaky guest can hoard.
const RECYCLE_AFTER_CALLS: u64 = 100_000;

/// Runs events through one plugin for one job, keeping an instance alive across events and
/// batches, and replacing it after a trap or after [`RECYCLE_AFTER_CALLS`] calls.
pub struct PluginHandler {
    /// The plugin version in use.
    plugin: Arc<LoadedPlugin>,
    /// The job's name, config and limits, handed to every instance.
    guest: Arc<GuestContext>,
    /// The live instance, if any; made on demand.
    instance: Option<PluginInstance>,
    /// State writes of the current batch's acked events, seen by later events' reads.
    overlay: Overlay,
}

impl PluginHandler {
    pub fn new(plugin: Arc<LoadedPlugin>, guest: GuestContext) -> Self {
        PluginHandler {
            plugin,
            guest: Arc::new(guest),
            instance: None,
            overlay: Overlay::default(),
        }
    }

    /// The plugin version this handler runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Make the first instance now (running `init`), so a plugin that cannot start for this
    /// job is refused before the job reads anything.
    /// Blocks: call it from a blocking thread, never from an async task.
    pub fn prepare(&mut self) -> Result<(), crate::model::Failure> {
        if self.instance.is_none() {
            self.instance = Some(super::block_on(PluginInstance::new(
                &self.plugin,
                self.guest.clone(),
                self.overlay.clone(),
            ))?);
        }
        Ok(())
    }

    async fn handle_one(&mut self, event: &Event) -> Outcome {
        let mut instance = match self.instance.take() {
            Some(i) if i.is_usable() && i.calls() < RECYCLE_AFTER_CALLS => i,
            old => {
                if old.is_some_and(|i| i.is_usable()) {
                    crate::metrics::recycle(&self.guest.job, "calls");
                }
                let made =
                    PluginInstance::new(&self.plugin, self.guest.clone(), self.overlay.clone());
                match made.await {
                    Ok(i) => i,
                    Err(failure) => return Outcome::Failed(failure),
                }
            }
        };
        let outcome = instance.handle(event).await;
        // A trapped instance is dropped here, giving its memory back at once.
        if instance.is_usable() {
            self.instance = Some(instance);
        } else {
            crate::metrics::recycle(&self.guest.job, "failed");
        }
        outcome
    }
}

impl Handler for PluginHandler {
    /// Blocks (on the calling thread's runtime): the runner calls it on a blocking thread.
    /// Stops after the event whose outcome takes the batch's buffered effects past
    /// `max_batch_bytes`: the runner hands the rest over as a batch of its own.
    fn handle_batch(&mut self, events: &[Event]) -> Vec<Outcome> {
        if let Ok(mut batch) = self.overlay.lock() {
            batch.clear();
        }
        // A state-reading batch is checked whole by its first commit: what does not fit in
        // one commit script is handled again, so its pieces are kept to about half of one.
        let max_batch = if self.plugin.stateful {
            self.guest.limits.max_batch_bytes.min(MAX_COMMIT_COST / 2)
        } else {
            self.guest.limits.max_batch_bytes
        };
        super::block_on(async {
            let mut outcomes = Vec::with_capacity(events.len());
            let mut cost = 0usize;
            for e in events {
                if cost >= max_batch {
                    break;
                }
                let outcome = self.handle_one(e).await;
                cost += outcome.cost(e);
                // An acked event's state writes will be committed: later events must see them.
                if let Outcome::Handled {
                    disposition: Disposition::Ack,
                    effects,
                } = &outcome
                    && let Ok(mut batch) = self.overlay.lock()
                {
                    batch.acked(effects);
                }
                outcomes.push(outcome);
            }
            outcomes
        })
    }

    fn reads_state(&self) -> bool {
        self.plugin.stateful
    }

    fn version(&self) -> &str {
        &self.plugin.sha256
    }

    fn take_reads(&mut self) -> ReadSet {
        self.overlay
            .lock()
            .map(|mut b| std::mem::take(&mut b.reads))
            .unwrap_or_default()
    }
}
