//! `sluice:plugin/kv`: the job's key-value store. Writes are buffered effects; a read sees
//! this event's writes, then the batch's earlier acked events', then Redis.

use super::super::bindings::sluice::plugin::kv::Host;
use super::HostState;
use crate::model::Effect;

impl Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        self.check_name("kv get", &key)?;
        if let Some(value) = self.written_kv(&key) {
            return Ok(value);
        }
        self.stored_kv(&key).await
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_s: Option<u32>) -> Result<(), String> {
        self.check_name("kv set", &key)?;
        if value.len() > self.guest.limits.max_payload_bytes {
            return Err(self.violate(format!(
                "kv set `{key}`: a value of {} bytes exceeds the limit of {}",
                value.len(),
                self.guest.limits.max_payload_bytes
            )));
        }
        let ttl_s = ttl_s.filter(|t| *t > 0);
        self.buffer("kv set", Effect::KvSet { key, value, ttl_s })
    }

    fn delete(&mut self, key: String) -> Result<(), String> {
        self.check_name("kv delete", &key)?;
        self.buffer("kv delete", Effect::KvDelete { key })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::super::Limits;
    use super::super::test_support::with_reader;
    use super::*;

    pub use crate::runtime::memory::MemoryState;

    #[tokio::test]
    async fn reads_see_the_events_own_writes_before_the_store() {
        let store = Arc::new(MemoryState::default());
        store.apply(&[Effect::KvSet {
            key: "a".into(),
            value: b"stored".to_vec(),
            ttl_s: None,
        }]);
        let mut s = with_reader(&[], Limits::default(), Some(store));
        assert_eq!(s.get("a".into()).await.unwrap(), Some(b"stored".to_vec()));
        s.set("a".into(), b"new".to_vec(), Some(60)).unwrap();
        assert_eq!(s.get("a".into()).await.unwrap(), Some(b"new".to_vec()));
        s.delete("a".into()).unwrap();
        assert_eq!(s.get("a".into()).await.unwrap(), None);
        assert_eq!(s.get("missing".into()).await.unwrap(), None);
        assert_eq!(s.call.effects.len(), 2);
    }

    #[tokio::test]
    async fn reads_see_the_batchs_earlier_writes() {
        let mut s = with_reader(
            &[],
            Limits::default(),
            Some(Arc::new(MemoryState::default())),
        );
        s.overlay.lock().unwrap().acked(&[Effect::KvSet {
            key: "k".into(),
            value: b"from an earlier event".to_vec(),
            ttl_s: None,
        }]);
        assert_eq!(
            s.get("k".into()).await.unwrap(),
            Some(b"from an earlier event".to_vec())
        );
    }

    #[tokio::test]
    async fn without_a_store_reads_fail_the_event() {
        let mut s = with_reader(&[], Limits::default(), None);
        assert!(s.get("a".into()).await.is_err());
        assert!(s.call.state_error.is_some());
    }

    #[test]
    fn oversized_values_and_empty_names_are_refused() {
        let limits = Limits {
            max_payload_bytes: 4,
            ..Limits::default()
        };
        let mut s = with_reader(&[], limits, None);
        assert!(s.set("k".into(), vec![0; 5], None).is_err());
        assert!(s.set("".into(), vec![0; 1], None).is_err());
        assert!(s.call.effects.is_empty());
        assert!(s.call.violation.is_some());
    }

    #[tokio::test]
    async fn a_batch_reads_each_stored_value_once_and_records_it_for_the_commit() {
        let store = Arc::new(MemoryState::default());
        store.apply(&[Effect::KvSet {
            key: "a".into(),
            value: b"1".to_vec(),
            ttl_s: None,
        }]);
        let mut s = with_reader(&[], Limits::default(), Some(store.clone()));
        assert_eq!(s.get("a".into()).await.unwrap(), Some(b"1".to_vec()));
        // Another host writes meanwhile: the batch keeps seeing what it read (the commit
        // will refuse it), never a mix of two states.
        store.apply(&[Effect::KvSet {
            key: "a".into(),
            value: b"2".to_vec(),
            ttl_s: None,
        }]);
        assert_eq!(s.get("a".into()).await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get("missing".into()).await.unwrap(), None);
        let reads = s.overlay.lock().unwrap().reads.clone();
        assert_eq!(reads.kv.get("a"), Some(&Some(b"1".to_vec())));
        assert_eq!(reads.kv.get("missing"), Some(&None));
        assert_eq!(reads.len(), 2);
    }

    #[tokio::test]
    async fn a_batch_may_read_only_so_many_values() {
        let limits = Limits {
            max_batch_reads: 2,
            ..Limits::default()
        };
        let mut s = with_reader(&[], limits, Some(Arc::new(MemoryState::default())));
        assert!(s.get("a".into()).await.is_ok());
        assert!(s.get("b".into()).await.is_ok());
        // Read again: no new value to keep.
        assert!(s.get("a".into()).await.is_ok());
        assert!(s.get("c".into()).await.is_err());
        assert!(s.call.violation.as_deref().unwrap().contains("more than 2"));
    }
}
