//! The reader's gate (`flow.*`): between reading entries and handing them to the plugin.
//! Duplicates (`dedupe_by`) go on marked, to be skipped without the plugin; the job's rate
//! (`rate_limit`) delays a whole read; a key's rate (`key_rate_limit`) and its order
//! (`order_by`) hold single entries back until their time comes or they are first of their
//! key. Held entries stay pending on this consumer, kept fresh like any in flight, and are
//! let go at a stop (any host takes them over at once). Nothing is ever dropped here: an
//! entry a Redis failure left undecided is held and asked about again.

use std::time::{Duration, Instant};

use crate::model::{Event, Rate};
use crate::store::stream::{Gatekeeper, Head, Take};

/// How often entries held behind others of their key being handled (on any host) are asked
/// about again; behind a retry, they wait for its time.
const ORDER_POLL: Duration = Duration::from_millis(10);
/// How long entries wait after Redis failed to tell whether they may go.
const FAILED_RETRY: Duration = Duration::from_millis(500);

/// An entry held back, and from when it may go (for an ordered one: be asked about again).
struct Held {
    event: Event,
    at: Instant,
}

pub(super) struct Flow {
    gate: Gatekeeper,
    job_rate: Option<Rate>,
    key_rate: Option<(String, Rate)>,
    ordered: bool,
    dedupe: bool,
    held: Vec<Held>,
    /// The job's rate key.
    rate_key: String,
}

impl Flow {
    /// The job's gate, or None when it has no flow control (nothing to ask).
    pub fn new(gate: Gatekeeper) -> Option<Flow> {
        let flow = &gate.job().flow;
        if !flow.is_active() {
            return None;
        }
        Some(Flow {
            job_rate: flow.job_rate(),
            key_rate: flow.key_rate(),
            ordered: flow.order_by.is_some(),
            dedupe: flow.dedupe_by.is_some(),
            rate_key: format!("{}:rate", gate.job().job_key),
            held: Vec::new(),
            gate,
        })
    }

    /// How many entries to read at most: under a job rate, about a tenth of a second's worth
    /// (one read takes its units at once, and waits for the last of them).
    pub fn read_count(&self, count: usize) -> usize {
        match self.job_rate {
            Some(rate) => count.min((rate.per_second() / 10.0).ceil().max(1.0) as usize),
            None => count,
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When the next held entry may go (or be asked about again).
    pub fn next_wake(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.at).min()
    }

    /// Entries just read: those to handle now, and how long to wait before handing them on
    /// (the job's rate). The others are held.
    pub async fn admit(&mut self, mut events: Vec<Event>) -> (Vec<Event>, Duration) {
        let job = self.gate.job().job.clone();
        if self.dedupe {
            match self.gate.committed(&events).await {
                Ok(found) => {
                    for (e, dup) in events.iter_mut().zip(found) {
                        e.duplicate = dup;
                    }
                }
                // The commit checks again: a duplicate runs the plugin, and writes nothing.
                Err(e) => tracing::debug!(job = &*job, "checking idempotency keys failed: {e}"),
            }
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        let mut takes = Vec::new();
        let units = events.iter().filter(|e| !e.duplicate).count() as u64;
        if let (Some(rate), true) = (self.job_rate, units > 0) {
            takes.push(Take {
                key: self.rate_key.clone(),
                rate,
                units,
                not_before_ms: 0,
            });
        }
        // One unit per event of a key: each of its events gets its own time.
        let mut keyed = Vec::new();
        if let Some((field, rate)) = &self.key_rate {
            for (i, e) in events.iter().enumerate() {
                if e.duplicate {
                    continue;
                }
                if let Some(key) = self.gate.job().flow_key("rate", Some(field), e) {
                    keyed.push(i);
                    takes.push(Take {
                        key,
                        rate: *rate,
                        units: 1,
                        not_before_ms: 0,
                    });
                }
            }
        }
        let mut not_before = vec![now; events.len()];
        if !takes.is_empty() {
            match self.gate.take(takes).await {
                Ok(waits) => {
                    let mut waits = waits.into_iter();
                    if self.job_rate.is_some() && units > 0 {
                        wait = Duration::from_millis(waits.next().unwrap_or(0));
                    }
                    for (i, ms) in keyed.into_iter().zip(waits) {
                        not_before[i] = now + Duration::from_millis(ms);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        job = &*job,
                        "taking rate limit units failed; the entries wait: {e}"
                    );
                    self.hold(events, now + FAILED_RETRY);
                    return (Vec::new(), Duration::ZERO);
                }
            }
        }
        let mut ready = Vec::new();
        for (event, at) in events.into_iter().zip(not_before) {
            if at > now {
                self.held.push(Held { event, at });
            } else {
                ready.push(event);
            }
        }
        (self.first_of_keys(ready).await, wait)
    }

    /// Held entries whose time came, and ordered ones now first of their key.
    pub async fn release(&mut self) -> Vec<Event> {
        let now = Instant::now();
        if self.held.iter().all(|h| h.at > now) {
            return Vec::new();
        }
        let (due, later): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.at <= now);
        self.held = later;
        self.first_of_keys(due.into_iter().map(|h| h.event).collect())
            .await
    }

    /// Of `events`, those that may go now; the rest are held (ordered ones behind others of
    /// their key, asked about again soon).
    async fn first_of_keys(&mut self, events: Vec<Event>) -> Vec<Event> {
        if !self.ordered || events.is_empty() {
            return events;
        }
        let job = self.gate.job();
        let (keyed, mut free): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| !e.duplicate && job.order_key(e).is_some());
        let asked: Vec<&Event> = keyed.iter().collect();
        match self.gate.heads(&asked).await {
            Ok(heads) => {
                let now = Instant::now();
                for (event, head) in keyed.into_iter().zip(heads) {
                    let at = match head {
                        Head::Free => {
                            free.push(event);
                            continue;
                        }
                        Head::Behind => now + ORDER_POLL,
                        Head::BehindRetry(due) => {
                            now + crate::store::timer::until(due).max(ORDER_POLL)
                        }
                    };
                    self.held.push(Held { event, at });
                }
            }
            Err(e) => {
                tracing::warn!(
                    job = &*self.gate.job().job,
                    "asking which entries are first of their key failed; they wait: {e}"
                );
                self.hold(keyed, Instant::now() + FAILED_RETRY);
            }
        }
        // In stream order, as read (a batch mixes fresh and released entries).
        free.sort_by_key(|e| crate::store::groups::parse_id(&e.id));
        free
    }

    fn hold(&mut self, events: Vec<Event>, at: Instant) {
        self.held
            .extend(events.into_iter().map(|event| Held { event, at }));
    }

    /// At a stop: let the held entries go, so that any host takes them over at once.
    pub async fn let_go(mut self, in_flight: &super::InFlight, idle_ms: u64) {
        let events: Vec<Event> = self.held.drain(..).map(|h| h.event).collect();
        if events.is_empty() {
            return;
        }
        // No longer kept fresh here.
        in_flight.remove(&events);
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        if let Err(e) = self.gate.let_go(&ids, idle_ms).await {
            tracing::warn!(
                job = &*self.gate.job().job,
                "letting held entries go failed (they are taken over once idle): {e}"
            );
        }
    }
}
