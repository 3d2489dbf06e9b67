//! [`PluginHandler`]: the [`Handler`] a job uses to run its events through a plugin.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::host::{Budget, GuestContext, Overlay};
use super::instance::PluginInstance;
use super::plugin::LoadedPlugin;
use crate::model::{Event, Handler, MAX_COMMIT_COST, Outcome, ReadSet};

/// Replace an instance after this many calls, bounding what a leaky guest can hoard.
const RECYCLE_AFTER_CALLS: u64 = 100_000;

/// Runs events through one plugin for one job, keeping instances alive across events and
/// batches, and replacing one after a trap or after [`RECYCLE_AFTER_CALLS`] calls.
///
/// With a concurrency of N (and a plugin that reads no job state) it keeps N instances, its
/// lanes, each on a thread of its own: they take a batch's events one at a time from a
/// shared cursor, and the outcomes are put back together in the batch's order.
pub struct PluginHandler {
    /// The plugin version in use.
    plugin: Arc<LoadedPlugin>,
    /// The job's name, config and limits, handed to every instance.
    guest: Arc<GuestContext>,
    /// The live instance of each lane, if any; made on demand. Never empty.
    lanes: Vec<Option<PluginInstance>>,
    /// State writes of the current batch's acked events, seen by later events' reads.
    overlay: Overlay,
    /// Use the plugin's `handle-batch`, when it has one (on by default).
    batch_calls: bool,
}

impl PluginHandler {
    pub fn new(plugin: Arc<LoadedPlugin>, guest: GuestContext) -> Self {
        PluginHandler {
            batch_calls: plugin.handles_batches(),
            plugin,
            guest: Arc::new(guest),
            lanes: vec![None],
            overlay: Overlay::default(),
        }
    }

    /// Hand events to the plugin one per call even when it exports `handle-batch` (for
    /// measuring what batch calls buy).
    pub fn without_batch_calls(mut self) -> Self {
        self.batch_calls = false;
        self
    }

    /// True when batches go to the plugin's `handle-batch`.
    pub fn batch_calls(&self) -> bool {
        self.batch_calls
    }

    /// Run up to `n` instances in parallel. A plugin that reads job state keeps one: each of
    /// its events must see the writes of the events before it.
    pub fn with_concurrency(mut self, n: u32) -> Self {
        let n = if self.plugin.stateful {
            if n > 1 {
                tracing::warn!(
                    job = &*self.guest.job,
                    plugin = &*self.guest.plugin,
                    concurrency = n,
                    "the plugin reads job state: its events are handled on one instance, in order"
                );
            }
            1
        } else {
            n.max(1)
        };
        self.lanes.resize_with(n as usize, || None);
        self
    }

    /// The plugin version this handler runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// How many instances handle a batch in parallel.
    pub fn concurrency(&self) -> usize {
        self.lanes.len()
    }

    /// Make the first lane's instance now (running `init`), so a plugin that cannot start
    /// for this job is refused before the job reads anything. The other lanes make theirs
    /// when a batch first reaches them.
    /// Blocks: call it from a blocking thread, never from an async task.
    pub fn prepare(&mut self) -> Result<(), crate::model::Failure> {
        if self.lanes[0].is_none() {
            self.lanes[0] = Some(super::block_on(PluginInstance::new(
                &self.plugin,
                self.guest.clone(),
                self.overlay.clone(),
            ))?);
        }
        Ok(())
    }
}

/// What one lane needs of its handler: shared, read-only.
struct Shared<'a> {
    plugin: &'a Arc<LoadedPlugin>,
    guest: &'a Arc<GuestContext>,
    overlay: &'a Overlay,
    /// Whole runs of events go to the plugin's `handle-batch` in one call.
    batch_calls: bool,
}

impl Shared<'_> {
    /// Events per `handle-batch` call, at most: what the lanes take at once from the batch.
    fn chunk(&self, events: usize, lanes: usize) -> usize {
        if !self.batch_calls {
            return 1;
        }
        // With several lanes, a few takes each, so that a slow run holds up only its lane.
        let per_take = if lanes > 1 {
            events.div_ceil(lanes * 4)
        } else {
            events
        };
        per_take.max(1)
    }

    /// How far from `start` one `handle-batch` call goes: at most `max` events, and as many
    /// bytes as leave the guest room to work (the batch is lowered into its memory at once;
    /// a big event goes alone, as it would to `handle`).
    fn call_end(&self, events: &[Event], start: usize, max: usize) -> usize {
        if !self.batch_calls {
            return start + 1;
        }
        let room = (self.guest.limits.memory_bytes / 8).clamp(64 << 10, 4 << 20);
        let mut bytes = 0;
        let mut end = start;
        for e in events[start..].iter().take(max) {
            bytes += e.size() + e.id.len() + e.source.len() + e.job.len() + 64;
            if end > start && bytes > room {
                break;
            }
            end += 1;
        }
        end
    }

    /// Handle `events` in order on `lane` (in `handle-batch` calls of a few at most, or
    /// one by one) until they are all handled or `budget` is spent; the outcomes of a prefix.
    /// A trapped instance is dropped (giving its memory back at once) and the next call gets
    /// a fresh one.
    async fn handle_run(
        &self,
        lane: &mut Option<PluginInstance>,
        events: &[Event],
        budget: &Budget,
    ) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        // Events per `handle-batch` call: halved after a call that failed before finishing
        // any event (it could not say which one was at fault), down to one.
        let mut most = events.len();
        // The first event is always handled (a lane that took it must give its outcome).
        while outcomes.len() < events.len() && (outcomes.is_empty() || !budget.is_spent()) {
            let mut instance = match lane.take() {
                Some(i) if i.is_usable() && i.calls() < RECYCLE_AFTER_CALLS => i,
                old => {
                    if old.is_some_and(|i| i.is_usable()) {
                        crate::metrics::recycle(&self.guest.job, "calls");
                    }
                    let made =
                        PluginInstance::new(self.plugin, self.guest.clone(), self.overlay.clone());
                    match made.await {
                        Ok(i) => i,
                        Err(failure) => {
                            let outcome = Outcome::Failed(failure);
                            budget.spend(outcome.cost(&events[outcomes.len()]));
                            outcomes.push(outcome);
                            continue;
                        }
                    }
                }
            };
            let start = outcomes.len();
            let end = self.call_end(events, start, most);
            let got = if self.batch_calls {
                instance.handle_batch(&events[start..end], budget).await
            } else {
                let event = &events[start];
                let outcome = instance.handle(event).await;
                budget.spend(outcome.cost(event));
                vec![outcome]
            };
            if instance.is_usable() {
                *lane = Some(instance);
            } else {
                crate::metrics::recycle(&self.guest.job, "failed");
            }
            if got.is_empty() {
                // Only a call of several events comes back empty: smaller calls now.
                most = ((end - start) / 2).max(1);
                continue;
            }
            outcomes.extend(got);
        }
        outcomes
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
        let shared = Shared {
            plugin: &self.plugin,
            guest: &self.guest,
            overlay: &self.overlay,
            batch_calls: self.batch_calls,
        };
        let budget = Budget::new(max_batch);
        let lanes = self.lanes.len().min(events.len());
        if lanes <= 1 {
            return super::block_on(shared.handle_run(&mut self.lanes[0], events, &budget));
        }
        // Lanes take the batch's events a few at a time (one at a time without batch calls),
        // in order, from a shared cursor, and stop taking once the outcomes so far spend the
        // budget: what was taken is a prefix of the batch, handled whole, and a slow event
        // holds up only its own lane. This thread is the first lane; each other runs on a
        // thread of its own.
        let take = shared.chunk(events.len(), lanes);
        let next = AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<Option<Outcome>>> =
            events.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let work = |lane: &mut Option<PluginInstance>| {
            super::block_on(async {
                while !budget.is_spent() {
                    let i = next.fetch_add(take, Ordering::AcqRel);
                    if i >= events.len() {
                        break;
                    }
                    let end = (i + take).min(events.len());
                    let outcomes = shared.handle_run(lane, &events[i..end], &budget).await;
                    for (slot, outcome) in slots[i..].iter().zip(outcomes) {
                        if let Ok(mut slot) = slot.lock() {
                            *slot = Some(outcome);
                        }
                    }
                }
            })
        };
        let runtime = super::runtime_handle();
        std::thread::scope(|scope| {
            let (first, others) = self.lanes[..lanes].split_first_mut().expect("two lanes");
            for lane in others {
                let (work, runtime) = (&work, &runtime);
                // Without a thread (the system refused one) the other lanes do its share.
                let _ = std::thread::Builder::new()
                    .name("sluice-lane".into())
                    .spawn_scoped(scope, move || {
                        let _entered = runtime.enter();
                        work(lane)
                    });
            }
            work(first);
        });
        // The handled prefix, in the batch's order (a panic in a lane ended the scope above).
        slots
            .into_iter()
            .map_while(|slot| slot.into_inner().ok().flatten())
            .collect()
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
