//! The reader's gate (`flow.*`): between reading entries and handing them to the plugin.
//! Duplicates (`dedupe_by`) go on marked, to be skipped without the plugin; rate limits
//! (`rate_limit`, `key_rate_limit`) give each entry a time, and it is held until then; with
//! `order_by`, an entry is held until it is first of its key. Held entries stay pending on
//! this consumer, kept fresh like any in flight; at a stop they are let go (any host takes
//! them over at once) and the rate units they took are given back. Nothing is ever dropped
//! here: an entry a Redis failure left undecided is held and asked about again.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::model::{Event, Rate};
use crate::store::stream::{Gatekeeper, Head, Take};

/// How often entries held behind others of their key being handled (on any host) are asked
/// about again (sooner when this host commits); behind a retry, they wait for its time.
pub(super) const ORDER_POLL: Duration = Duration::from_millis(10);
/// How long entries wait after Redis failed to tell whether they may go.
const FAILED_RETRY: Duration = Duration::from_millis(500);

/// Why an entry is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Its rate time has not come.
    Rate,
    /// Behind an entry of its key being handled: asked again soon, or when this host commits.
    Behind,
    /// Behind a retry, or undecided after a Redis failure: asked again at its time only.
    Later,
}

/// An entry held back, from when it may go (or be asked about again), and the rate keys it
/// took a unit of (given back if it is let go).
struct Held {
    event: Event,
    at: Instant,
    why: Why,
    units: Vec<(String, Rate)>,
    /// Its order key, when it waits for its turn.
    key: Option<String>,
}

impl Held {
    fn behind(event: Event, key: String, at: Instant, why: Why) -> Self {
        Held {
            event,
            at,
            why,
            units: Vec::new(),
            key: Some(key),
        }
    }
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
    /// (one read takes its units at once, and is held until the last of them conforms).
    pub fn read_count(&self, count: usize) -> usize {
        match self.job_rate {
            Some(rate) => count.min((rate.per_second() / 10.0).ceil().max(1.0) as usize),
            None => count,
        }
    }

    /// Whether to read new entries: not while a read waits for the job's rate (it would
    /// take units further ahead), nor past `max` held entries.
    pub fn reads(&self, max: usize) -> bool {
        self.held.len() < max
            && !(self.job_rate.is_some()
                && self
                    .held
                    .iter()
                    .any(|h| h.units.iter().any(|(k, _)| *k == self.rate_key)))
    }

    /// When the next held entry may go (or be asked about again).
    pub fn next_wake(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.at).min()
    }

    /// This host committed: entries behind others of their key are asked about at once.
    pub fn nudge(&mut self) {
        let now = Instant::now();
        for h in &mut self.held {
            if h.why == Why::Behind {
                h.at = h.at.min(now);
            }
        }
    }

    /// Entries just read: those to handle now. The others are held.
    pub async fn admit(&mut self, mut events: Vec<Event>) -> Vec<Event> {
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
        // The units each event takes: one of the job's rate, one of its key's.
        let mut units: Vec<Vec<(String, Rate)>> = vec![Vec::new(); events.len()];
        for (e, u) in events.iter().zip(units.iter_mut()) {
            if e.duplicate {
                continue;
            }
            if let Some(rate) = self.job_rate {
                u.push((self.rate_key.clone(), rate));
            }
            if let Some((field, rate)) = &self.key_rate
                && let Some(key) = self.gate.job().flow_key("rate", Some(field), e)
            {
                u.push((key, *rate));
            }
        }
        let mut not_before = vec![now; events.len()];
        if units.iter().any(|u| !u.is_empty()) {
            // The job's units in one take (the read waits for its last), each key's one by one.
            let job_units = units
                .iter()
                .filter(|u| u.iter().any(|(k, _)| *k == self.rate_key))
                .count() as u64;
            let mut takes = Vec::new();
            if let (Some(rate), true) = (self.job_rate, job_units > 0) {
                takes.push(Take::of(&self.rate_key, rate, job_units as i64));
            }
            let mut keyed = Vec::new();
            for (i, u) in units.iter().enumerate() {
                for (key, rate) in u.iter().filter(|(k, _)| *k != self.rate_key) {
                    keyed.push(i);
                    takes.push(Take::of(key, *rate, 1));
                }
            }
            match self.gate.take(takes).await {
                Ok(waits) => {
                    let mut waits = waits.into_iter();
                    if job_units > 0 {
                        let all = now + Duration::from_millis(waits.next().unwrap_or(0));
                        not_before.iter_mut().for_each(|t| *t = all);
                    }
                    for (i, ms) in keyed.into_iter().zip(waits) {
                        not_before[i] = not_before[i].max(now + Duration::from_millis(ms));
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        job = &*job,
                        "taking rate limit units failed; the entries wait: {e}"
                    );
                    self.hold(events, now + FAILED_RETRY);
                    return Vec::new();
                }
            }
        }
        let mut ready = Vec::new();
        for ((event, at), units) in events.into_iter().zip(not_before).zip(units) {
            if at > now {
                self.held.push(Held {
                    event,
                    at,
                    why: Why::Rate,
                    units,
                    key: None,
                });
            } else {
                ready.push(event);
            }
        }
        self.first_of_keys(ready).await
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

    /// Of `events`, those that may go now; the rest are held. Of an ordered key's entries,
    /// only the first this host holds is asked about (the others cannot be first before it
    /// is done): one question per key, however many entries wait behind it.
    async fn first_of_keys(&mut self, events: Vec<Event>) -> Vec<Event> {
        if !self.ordered || events.is_empty() {
            return events;
        }
        let job = self.gate.shared_job();
        let mut free = Vec::new();
        let mut by_key: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for e in events {
            match job.order_key(&e) {
                Some(key) if !e.duplicate => by_key.entry(key).or_default().push(e),
                _ => free.push(e),
            }
        }
        // The earliest entry of each key still held, with its time.
        let mut held_first: HashMap<&str, ((u64, u64), Instant)> = HashMap::new();
        for h in &self.held {
            if let Some(key) = h.key.as_deref() {
                let id = crate::store::groups::parse_id(&h.event.id).unwrap_or_default();
                let e = held_first.entry(key).or_insert((id, h.at));
                if id < e.0 {
                    *e = (id, h.at);
                }
            }
        }
        let now = Instant::now();
        let mut firsts = Vec::new();
        let mut behind = Vec::new();
        for (key, mut entries) in by_key {
            entries.sort_by_key(|e| crate::store::groups::parse_id(&e.id));
            let first_id = crate::store::groups::parse_id(&entries[0].id).unwrap_or_default();
            // Behind an earlier entry of its key held here: wait with it, unasked.
            let waits_with = held_first
                .get(key.as_str())
                .filter(|(id, _)| *id < first_id)
                .map(|(_, at)| *at);
            let mut rest = entries.into_iter();
            if waits_with.is_none()
                && let Some(first) = rest.next()
            {
                firsts.push((key.clone(), first));
            }
            let at = waits_with.unwrap_or(now + ORDER_POLL);
            behind.extend(rest.map(|e| (key.clone(), e, at)));
        }
        for (key, event, at) in behind {
            self.held.push(Held::behind(event, key, at, Why::Behind));
        }
        let asked: Vec<&Event> = firsts.iter().map(|(_, e)| e).collect();
        match self.gate.heads(&asked).await {
            Ok(heads) => {
                let mut waiting: HashMap<String, (Instant, Why)> = HashMap::new();
                for ((key, event), head) in firsts.into_iter().zip(heads) {
                    let (at, why) = match head {
                        Head::Free => {
                            free.push(event);
                            continue;
                        }
                        Head::Behind => (now + ORDER_POLL, Why::Behind),
                        Head::BehindRetry(due) => (
                            now + crate::store::timer::until(due).max(ORDER_POLL),
                            Why::Later,
                        ),
                    };
                    waiting.insert(key.clone(), (at, why));
                    self.held.push(Held::behind(event, key, at, why));
                }
                // What waits behind a key's first on this host waits as long.
                for h in &mut self.held {
                    if let Some(w) = h.key.as_ref().and_then(|k| waiting.get(k))
                        && h.why == Why::Behind
                    {
                        (h.at, h.why) = *w;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    job = &*job.job,
                    "asking which entries are first of their key failed; they wait: {e}"
                );
                let at = Instant::now() + FAILED_RETRY;
                for (key, event) in firsts {
                    self.held.push(Held::behind(event, key, at, Why::Later));
                }
            }
        }
        // In stream order, as read (a batch mixes fresh and released entries).
        free.sort_by_key(|e| crate::store::groups::parse_id(&e.id));
        free
    }

    fn hold(&mut self, events: Vec<Event>, at: Instant) {
        self.held.extend(events.into_iter().map(|event| Held {
            event,
            at,
            why: Why::Later,
            units: Vec::new(),
            key: None,
        }));
    }

    /// At a stop: give back the rate units held entries took, and let them go, so that any
    /// host takes them over at once.
    pub async fn let_go(mut self, in_flight: &super::InFlight, idle_ms: u64) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        let mut unused: BTreeMap<String, (Rate, i64)> = BTreeMap::new();
        for (key, rate) in held.iter().flat_map(|h| h.units.iter()) {
            unused.entry(key.clone()).or_insert((*rate, 0)).1 += 1;
        }
        let back: Vec<Take> = unused
            .iter()
            .map(|(key, (rate, n))| Take::of(key, *rate, -n))
            .collect();
        let job = self.gate.job().job.clone();
        if let Err(e) = self.gate.take(back).await {
            tracing::debug!(job = &*job, "giving back rate units failed: {e}");
        }
        let events: Vec<Event> = held.into_iter().map(|h| h.event).collect();
        // No longer kept fresh here.
        in_flight.remove(&events);
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        if let Err(e) = self.gate.let_go(&ids, idle_ms).await {
            tracing::warn!(
                job = &*job,
                "letting held entries go failed (they are taken over once idle): {e}"
            );
        }
    }
}
