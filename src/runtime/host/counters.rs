//! `sluice:plugin/counters`: the job's counters and sliding windows. Updates are buffered
//! effects; a read adds this event's and the batch's earlier acked events' updates to Redis.

use super::super::bindings::sluice::plugin::counters::Host;
use super::HostState;
use crate::model::{Effect, now_ms};

/// Largest counter step: ±2^40 (a counter would need 2^23 maximal steps to overflow).
const MAX_DELTA: u64 = 1 << 40;

impl HostState {
    /// Buffer a counter update, within the limits.
    fn add_to_counter(
        &mut self,
        what: &str,
        name: &str,
        delta: i64,
        ttl_s: Option<u32>,
    ) -> Result<(), String> {
        self.check_name(what, name)?;
        // Far from i64's ends, so that no INCRBY in the commit can overflow in practice (a
        // failing command half-way through the commit script would leave partial writes).
        if delta.unsigned_abs() > MAX_DELTA {
            return Err(self.violate(format!(
                "{what} `{name}`: a delta of {delta} is over the limit of ±{MAX_DELTA}"
            )));
        }
        let ttl_s = ttl_s.filter(|t| *t > 0);
        self.buffer(
            what,
            Effect::CounterAdd {
                name: name.to_string(),
                delta,
                ttl_s,
            },
        )
    }
}

impl Host for HostState {
    async fn counter_add(
        &mut self,
        name: String,
        delta: i64,
        ttl_s: Option<u32>,
    ) -> Result<i64, String> {
        self.add_to_counter("counter-add", &name, delta, ttl_s)?;
        self.counter_get(name).await
    }

    fn counter_incr(&mut self, name: String, delta: i64, ttl_s: Option<u32>) -> Result<(), String> {
        self.add_to_counter("counter-incr", &name, delta, ttl_s)
    }

    async fn counter_get(&mut self, name: String) -> Result<i64, String> {
        self.check_name("counter-get", &name)?;
        self.counter_value(&name).await
    }

    fn window_add(&mut self, name: String, id: String) -> Result<(), String> {
        self.check_name("window-add", &name)?;
        self.check_name("window-add id", &id)?;
        let at_ms = now_ms();
        self.buffer("window-add", Effect::WindowAdd { name, id, at_ms })
    }

    async fn window_count(&mut self, name: String, seconds: u32) -> Result<u64, String> {
        self.check_name("window-count", &name)?;
        let since_ms = now_ms().saturating_sub(u64::from(seconds) * 1000);
        let fresh = self.written_window_ids(&name, since_ms);
        let stored = self.stored_window_count(&name, since_ms).await?;
        // Ids written in this batch that the window already held in range are counted once.
        let known = if fresh.is_empty() {
            0
        } else {
            self.stored_window_scores(&name, &fresh)
                .await?
                .into_iter()
                .filter(|s| s.is_some_and(|s| s >= since_ms))
                .count()
        };
        Ok(stored + (fresh.len() - known.min(fresh.len())) as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Limits;
    use super::super::kv::tests::MemoryState;
    use super::super::test_support::with_reader;
    use super::*;

    #[tokio::test]
    async fn counters_add_to_the_stored_value() {
        let store = Arc::new(MemoryState::default());
        store.apply(&[Effect::CounterAdd {
            name: "hits".into(),
            delta: 40,
            ttl_s: None,
        }]);
        let mut s = with_reader(&[], Limits::default(), Some(store));
        assert_eq!(s.counter_add("hits".into(), 1, None).await.unwrap(), 41);
        assert_eq!(
            s.counter_add("hits".into(), 1, Some(86_400)).await.unwrap(),
            42
        );
        assert_eq!(s.counter_get("other".into()).await.unwrap(), 0);
        assert_eq!(s.call.effects.len(), 2);
    }

    #[tokio::test]
    async fn a_stored_counter_is_read_once_per_batch() {
        let store = Arc::new(MemoryState::default());
        let mut s = with_reader(&[], Limits::default(), Some(store.clone()));
        assert_eq!(s.counter_add("hits".into(), 1, None).await.unwrap(), 1);
        // Written behind the batch's back (another host): not seen until the next batch.
        store.apply(&[Effect::CounterAdd {
            name: "hits".into(),
            delta: 10,
            ttl_s: None,
        }]);
        assert_eq!(s.counter_add("hits".into(), 1, None).await.unwrap(), 2);
        s.overlay.lock().unwrap().clear();
        s.call = Default::default();
        assert_eq!(s.counter_get("hits".into()).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn windows_count_distinct_ids_within_the_span() {
        let store = Arc::new(MemoryState::default());
        let now = now_ms();
        store.apply(&[
            Effect::WindowAdd {
                name: "w".into(),
                id: "a".into(),
                at_ms: now - 1000,
            },
            Effect::WindowAdd {
                name: "w".into(),
                id: "old".into(),
                at_ms: now - 120_000,
            },
        ]);
        let mut s = with_reader(&[], Limits::default(), Some(store));
        assert_eq!(s.window_count("w".into(), 60).await.unwrap(), 1);
        s.window_add("w".into(), "a".into()).unwrap(); // already counted
        s.window_add("w".into(), "b".into()).unwrap();
        s.window_add("w".into(), "b".into()).unwrap(); // same id twice
        assert_eq!(s.window_count("w".into(), 60).await.unwrap(), 2);
        assert_eq!(s.window_count("w".into(), 3600).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_increment_reads_nothing_so_it_never_conflicts() {
        let store = Arc::new(MemoryState::default());
        let mut s = with_reader(&[], Limits::default(), Some(store));
        s.counter_incr("hot".into(), 1, None).unwrap();
        assert!(s.overlay.lock().unwrap().reads.is_empty());
        assert_eq!(s.counter_add("hot".into(), 1, None).await.unwrap(), 2);
        assert_eq!(
            s.overlay.lock().unwrap().reads.counters.get("hot"),
            Some(&0)
        );
        assert_eq!(s.call.effects.len(), 2);
    }
}
