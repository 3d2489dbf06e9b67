//! The batch overlay: state writes (kv, counters, windows) not yet in Redis, so that an
//! event's reads see its own writes and those of the batch's earlier acked events, and the
//! stored counter values read so far in the batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::{Effect, ReadSet};

/// State writes not yet in Redis (kv, counters, windows), indexed by name so that a read
/// costs a lookup, not a scan of every buffered effect.
#[derive(Debug, Default)]
pub struct Writes {
    /// Key → last value written (None: deleted).
    pub kv: HashMap<String, Option<Vec<u8>>>,
    /// Counter → sum of the deltas added.
    pub counters: HashMap<String, i64>,
    /// Window → id → time added (ms).
    pub windows: HashMap<String, HashMap<String, u64>>,
}

impl Writes {
    /// Record one effect (emits and enqueues are not state and are ignored).
    pub fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::KvSet { key, value, .. } => {
                self.kv.insert(key.clone(), Some(value.clone()));
            }
            Effect::KvDelete { key } => {
                self.kv.insert(key.clone(), None);
            }
            Effect::CounterAdd { name, delta, .. } => {
                let sum = self.counters.entry(name.clone()).or_default();
                *sum = sum.saturating_add(*delta);
            }
            Effect::WindowAdd { name, id, at_ms } => {
                self.windows
                    .entry(name.clone())
                    .or_default()
                    .insert(id.clone(), *at_ms);
            }
            Effect::Emit { .. } | Effect::Enqueue { .. } => {}
        }
    }

    pub(super) fn window_ids_since<'a>(
        &'a self,
        name: &str,
        since_ms: u64,
    ) -> impl Iterator<Item = &'a String> {
        self.windows
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(_, at)| **at >= since_ms)
            .map(|(id, _)| id)
    }
}

/// What the current batch knows of its job's state beyond Redis: the writes of its acked
/// events (later events must see them before they are committed), and every stored value it
/// read, each read from Redis once per batch. Those reads are the batch's [`ReadSet`]: the
/// commit checks they still hold (another host may have written meanwhile) and refuses the
/// batch otherwise, so reading each value once also makes a batch's reads repeatable.
#[derive(Debug, Default)]
pub struct BatchState {
    pub writes: Writes,
    pub reads: ReadSet,
    /// Bytes of `reads` (names and values), bounded by the job's limits.
    pub read_bytes: usize,
}

impl BatchState {
    /// Forget everything: a new batch begins (the previous one is in Redis).
    pub fn clear(&mut self) {
        self.writes = Writes::default();
        self.reads = ReadSet::default();
        self.read_bytes = 0;
    }

    /// An acked event's effects: they will be committed with this batch.
    pub fn acked(&mut self, effects: &[Effect]) {
        for effect in effects {
            self.writes.apply(effect);
        }
    }
}

/// The current batch's [`BatchState`], shared by the handler and its instances (an instance
/// replaced mid-batch keeps seeing it).
pub type Overlay = Arc<Mutex<BatchState>>;
