//! Job state held in memory: what `sluice plugin test` gives a plugin instead of Redis.
//! [`MemoryState::apply`] plays the part of the commit (an acked event's effects become
//! visible to later events).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::{Effect, StateReader};

/// Entries older than this leave a window (as in the commit script).
const WINDOW_SPAN_MS: u64 = 86_400_000;

#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<State>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    pub kv: HashMap<String, Vec<u8>>,
    pub counters: HashMap<String, i64>,
    /// Window name → (id → time in ms).
    pub windows: HashMap<String, HashMap<String, u64>>,
}

impl MemoryState {
    /// Apply an acked event's state effects (emits and enqueues are ignored here).
    pub fn apply(&self, effects: &[Effect]) {
        let Ok(mut s) = self.inner.lock() else { return };
        for effect in effects {
            match effect {
                Effect::Emit { .. } | Effect::Enqueue { .. } => {}
                Effect::KvSet { key, value, .. } => {
                    s.kv.insert(key.clone(), value.clone());
                }
                Effect::KvDelete { key } => {
                    s.kv.remove(key);
                }
                Effect::CounterAdd { name, delta, .. } => {
                    let c = s.counters.entry(name.clone()).or_default();
                    *c = c.saturating_add(*delta);
                }
                Effect::WindowAdd { name, id, at_ms } => {
                    let w = s.windows.entry(name.clone()).or_default();
                    w.insert(id.clone(), *at_ms);
                    w.retain(|_, t| *t + WINDOW_SPAN_MS > *at_ms);
                }
            }
        }
    }

    /// A copy of the state.
    pub fn snapshot(&self) -> State {
        self.inner.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl MemoryState {
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, String> {
        let s = self
            .inner
            .lock()
            .map_err(|_| "job state lock poisoned".to_string())?;
        Ok(f(&s))
    }
}

#[async_trait::async_trait]
impl StateReader for MemoryState {
    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.read(|s| s.kv.get(key).cloned())
    }

    async fn counter_get(&self, name: &str) -> Result<i64, String> {
        self.read(|s| s.counters.get(name).copied().unwrap_or(0))
    }

    async fn window_scores(&self, name: &str, ids: &[String]) -> Result<Vec<Option<u64>>, String> {
        self.read(|s| {
            let w = s.windows.get(name);
            ids.iter()
                .map(|id| w.and_then(|w| w.get(id).copied()))
                .collect()
        })
    }

    async fn window_count(&self, name: &str, since_ms: u64) -> Result<u64, String> {
        self.read(|s| {
            s.windows
                .get(name)
                .map_or(0, |w| w.values().filter(|t| **t >= since_ms).count() as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn applies_effects_like_the_commit() {
        let m = MemoryState::default();
        m.apply(&[
            Effect::KvSet {
                key: "k".into(),
                value: b"v".to_vec(),
                ttl_s: None,
            },
            Effect::CounterAdd {
                name: "c".into(),
                delta: 2,
                ttl_s: None,
            },
            Effect::CounterAdd {
                name: "c".into(),
                delta: 3,
                ttl_s: None,
            },
            Effect::WindowAdd {
                name: "w".into(),
                id: "a".into(),
                at_ms: 1000,
            },
        ]);
        assert_eq!(m.kv_get("k").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(m.counter_get("c").await.unwrap(), 5);
        assert_eq!(m.window_count("w", 0).await.unwrap(), 1);
        assert_eq!(
            m.window_scores("w", &["a".into(), "b".into()])
                .await
                .unwrap(),
            vec![Some(1000), None]
        );
        m.apply(&[Effect::KvDelete { key: "k".into() }]);
        assert_eq!(m.kv_get("k").await.unwrap(), None);
    }
}
