//! How an instance reads its job's state: what this event and the batch's earlier acked
//! events wrote, else the stored value — read from Redis once per batch and kept in the
//! batch's [`ReadSet`] (repeatable reads, bounded by the job's limits), which the commit
//! checks is still true.

use std::sync::Arc;

use super::HostState;
use crate::model::{ReadSet, StateReader};

impl HostState {
    /// A key's value as this call must see it, if written in this event or batch: the
    /// event's own last write, else the batch's (None: not written, read Redis).
    pub(super) fn written_kv(&self, key: &str) -> Option<Option<Vec<u8>>> {
        if let Some(value) = self.call.writes.kv.get(key) {
            return Some(value.clone());
        }
        let batch = self.overlay.lock().ok()?;
        batch.writes.kv.get(key).cloned()
    }

    /// A counter as this call must see it: stored value (read once per batch) plus the
    /// batch's and the event's deltas — what Redis will hold once the batch commits, since
    /// the commit refuses the batch if the stored value changed meanwhile.
    pub(super) async fn counter_value(&mut self, name: &str) -> Result<i64, String> {
        let own = self.call.writes.counters.get(name).copied().unwrap_or(0);
        let batch = self
            .overlay
            .lock()
            .map(|b| b.writes.counters.get(name).copied().unwrap_or(0))
            .unwrap_or(0);
        let owned = name.to_string();
        let stored = self
            .stored(
                |r| r.counters.get(name).copied(),
                |reader| async move { reader.counter_get(&owned).await },
                |_| name.len() + 8,
                |r, v| {
                    r.counters.insert(name.to_string(), v);
                },
            )
            .await?;
        Ok(stored.saturating_add(batch).saturating_add(own))
    }

    /// A kv key's stored value (read once per batch).
    pub(super) async fn stored_kv(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let owned = key.to_string();
        self.stored(
            |r| r.kv.get(key).cloned(),
            |reader| async move { reader.kv_get(&owned).await },
            |v| key.len() + v.as_ref().map_or(0, Vec::len),
            |r, v| {
                r.kv.insert(key.to_string(), v);
            },
        )
        .await
    }

    /// How many ids window `name` holds from `since_ms` on (read once per batch and time).
    pub(super) async fn stored_window_count(
        &mut self,
        name: &str,
        since_ms: u64,
    ) -> Result<u64, String> {
        let at = (name.to_string(), since_ms);
        let owned = name.to_string();
        self.stored(
            |r| r.window_counts.get(&at).copied(),
            |reader| async move { reader.window_count(&owned, since_ms).await },
            |_| name.len() + 16,
            |r, v| {
                r.window_counts.insert(at.clone(), v);
            },
        )
        .await
    }

    /// When each of `ids` was added to window `name`, if it is there (each read once per
    /// batch).
    pub(super) async fn stored_window_scores(
        &mut self,
        name: &str,
        ids: &[String],
    ) -> Result<Vec<Option<u64>>, String> {
        let key = |id: &String| (name.to_string(), id.clone());
        let unknown: Vec<String> = match self.overlay.lock() {
            Ok(b) => ids
                .iter()
                .filter(|id| !b.reads.window_ids.contains_key(&key(id)))
                .cloned()
                .collect(),
            Err(_) => ids.to_vec(),
        };
        if !unknown.is_empty() {
            let bytes = unknown.iter().map(|id| name.len() + id.len() + 8).sum();
            self.check_reads(unknown.len(), bytes)?;
            let reader = self.reader()?;
            self.call.reading = true;
            let scores = reader.window_scores(name, &unknown).await;
            self.call.reading = false;
            let scores = scores.map_err(|e| self.state_failed(e))?;
            if let Ok(mut b) = self.overlay.lock() {
                b.read_bytes += bytes;
                for (id, score) in unknown.iter().zip(scores) {
                    b.reads.window_ids.insert(key(id), score);
                }
            }
        }
        let scores = match self.overlay.lock() {
            Ok(b) => Ok(ids
                .iter()
                .map(|id| b.reads.window_ids.get(&key(id)).copied().flatten())
                .collect()),
            Err(_) => Err(()),
        };
        scores.map_err(|()| self.state_failed("the batch's state lock is poisoned".into()))
    }

    /// A stored value: from the batch's read set if read before, else from Redis (and
    /// recorded in the read set, for the commit to check).
    async fn stored<T: Clone, F: Future<Output = Result<T, String>>>(
        &mut self,
        cached: impl FnOnce(&ReadSet) -> Option<T>,
        read: impl FnOnce(Arc<dyn StateReader>) -> F,
        size: impl FnOnce(&T) -> usize,
        record: impl FnOnce(&mut ReadSet, T),
    ) -> Result<T, String> {
        if let Some(v) = self.overlay.lock().ok().and_then(|b| cached(&b.reads)) {
            return Ok(v);
        }
        self.check_reads(1, 0)?;
        let reader = self.reader()?;
        self.call.reading = true;
        let v = read(reader).await;
        self.call.reading = false;
        let v = v.map_err(|e| self.state_failed(e))?;
        let bytes = size(&v);
        self.check_reads(1, bytes)?;
        if let Ok(mut b) = self.overlay.lock() {
            b.read_bytes += bytes;
            record(&mut b.reads, v.clone());
        }
        Ok(v)
    }

    /// May the batch keep `more` more stored values of `bytes` bytes? Else the event fails:
    /// every value read is held for the batch and checked by its commit.
    fn check_reads(&mut self, more: usize, bytes: usize) -> Result<(), String> {
        let (reads, read_bytes) = self
            .overlay
            .lock()
            .map(|b| (b.reads.len(), b.read_bytes))
            .unwrap_or((0, 0));
        let limits = &self.guest.limits;
        if reads + more > limits.max_batch_reads {
            let max = limits.max_batch_reads;
            return Err(self.violate(format!(
                "job state: more than {max} distinct values read in one batch"
            )));
        }
        if read_bytes + bytes > limits.max_batch_read_bytes {
            let max = limits.max_batch_read_bytes;
            return Err(self.violate(format!(
                "job state: the values read in one batch would take over {max} bytes"
            )));
        }
        Ok(())
    }

    /// Ids added to window `name` at or after `since_ms` in this event or batch, sorted.
    pub(super) fn written_window_ids(&self, name: &str, since_ms: u64) -> Vec<String> {
        let mut ids: Vec<String> = self
            .call
            .writes
            .window_ids_since(name, since_ms)
            .cloned()
            .collect();
        if let Ok(b) = self.overlay.lock() {
            ids.extend(b.writes.window_ids_since(name, since_ms).cloned());
        }
        ids.sort();
        ids.dedup();
        ids
    }
}
