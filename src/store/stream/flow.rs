//! Flow control on a job's stream (`flow.*`, see [`FlowOptions`](crate::model::FlowOptions)):
//! what the runner's gate asks Redis before it hands entries to the plugin. Idempotency keys
//! are checked here and recorded by the commit; ordered entries are listed per key as they are
//! read (`order_read.lua`) and only the first of a key is handled (`order_heads.lua`); rate
//! limits are a GCRA per key on Redis's clock (`rate_take.lua`).

use std::sync::Arc;

use redis::Value;

use super::{StreamCommitter, StreamJob, StreamReader, parse_read_reply};
use crate::model::{Event, Rate};
use crate::store::{Conn, StoreError, scripts};

/// Field values longer than this are named by their SHA-1 in flow keys.
pub const FLOW_PART_MAX: usize = 128;

/// A field's value as the end of a flow key: bytes outside ASCII 33–126, `#` and `%` written
/// `%XX`; a value longer than [`FLOW_PART_MAX`] bytes is `#` and its SHA-1 (a key name stays
/// short whatever producers send). One-to-one; `order_read.lua` writes the same.
pub fn flow_part(value: &[u8]) -> String {
    if value.len() > FLOW_PART_MAX {
        return format!("#{}", sha1_smol::Sha1::from(value).digest());
    }
    let mut out = String::with_capacity(value.len());
    for &b in value {
        if (0x21..=0x7e).contains(&b) && b != b'%' && b != b'#' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where an ordered entry stands in its key's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// First: it may be handled.
    Free,
    /// Behind an entry being handled (on some host).
    Behind,
    /// Behind an entry scheduled to be retried at this time (ms since the epoch).
    BehindRetry(u64),
}

/// One take of a rate key: units (events; negative: units given back) and a time before
/// which its next unit may not go.
#[derive(Debug, Clone)]
pub struct Take {
    pub key: String,
    pub rate: Rate,
    pub units: i64,
    /// ms from now; 0: none.
    pub not_before_ms: u64,
}

impl Take {
    pub fn of(key: &str, rate: Rate, units: i64) -> Self {
        Take {
            key: key.to_string(),
            rate,
            units,
            not_before_ms: 0,
        }
    }
}

/// Asks Redis what the job's flow control allows; its own connection (never a blocking one).
pub struct Gatekeeper {
    conn: Conn,
    job: Arc<StreamJob>,
}

impl StreamCommitter {
    pub fn gatekeeper(&self) -> Gatekeeper {
        Gatekeeper {
            conn: self.conn.clone(),
            job: self.job.clone(),
        }
    }

    /// Pause the job's run (its breaker tripped), with the reason: true if this call paused
    /// it, false if it was not running that run any more (another host paused it first).
    pub async fn pause(&mut self, reason: &str) -> anyhow::Result<bool> {
        let Some(run) = self.job.run else {
            return Ok(false);
        };
        let mut registry =
            crate::store::control::Registry::new(self.conn.clone(), self.job.keys.clone());
        Ok(registry.pause_job(&self.job.job, run, reason).await?)
    }

    /// Slow keys down (a plugin answered `retry(after)`): their next unit waits that long.
    pub async fn slow(&mut self, takes: Vec<Take>) -> Result<(), StoreError> {
        self.gatekeeper().take(takes).await.map(|_| ())
    }
}

impl Gatekeeper {
    pub fn job(&self) -> &StreamJob {
        &self.job
    }

    pub fn shared_job(&self) -> Arc<StreamJob> {
        self.job.clone()
    }

    /// Which of `events` have an idempotency key committed already.
    pub async fn committed(&mut self, events: &[Event]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<Option<String>> = events.iter().map(|e| self.job.dedupe_key(e)).collect();
        let mut pipe = redis::pipe();
        for key in keys.iter().flatten() {
            pipe.exists(key);
        }
        let found: Vec<bool> = if pipe.is_empty() {
            Vec::new()
        } else {
            self.conn
                .pipeline_on_node_of(&self.job.job_key, &pipe)
                .await?
                .into_iter()
                .map(|v| redis::from_redis_value::<bool>(v).unwrap_or(false))
                .collect()
        };
        let mut found = found.into_iter();
        Ok(keys
            .iter()
            .map(|k| k.is_some() && found.next().unwrap_or(false))
            .collect())
    }

    /// Take units of rate keys: how long (ms) to wait before each take's units may go.
    pub async fn take(&mut self, takes: Vec<Take>) -> Result<Vec<u64>, StoreError> {
        if takes.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = scripts::RATE_TAKE.prepare_invoke();
        for t in &takes {
            invocation
                .key(&t.key)
                .arg(t.rate.interval_us())
                .arg(t.units)
                .arg(t.not_before_ms);
        }
        Ok(invocation.invoke_async(&mut self.conn).await?)
    }

    /// Which of `events` (all with an order key) are first of their key.
    pub async fn heads(&mut self, events: &[&Event]) -> Result<Vec<Head>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = scripts::ORDER_HEADS.prepare_invoke();
        invocation
            .key(&self.job.stream)
            .key(&self.job.retry_key)
            .arg(&self.job.group);
        for e in events {
            invocation
                .key(self.job.order_key(e).unwrap_or_default())
                .arg(&e.id);
        }
        let answers: Vec<i64> = invocation.invoke_async(&mut self.conn).await?;
        Ok(answers
            .into_iter()
            .map(|a| match a {
                0 => Head::Free,
                a if a > 0 => Head::BehindRetry(a as u64),
                _ => Head::Behind,
            })
            .collect())
    }

    /// Let entries this host holds go (a stop): their idle time set past the job's takeover
    /// time, so that any host takes them over at once.
    pub async fn let_go(&mut self, ids: &[String], idle_ms: u64) -> Result<(), StoreError> {
        for chunk in ids.chunks(1000) {
            let _: Value = redis::cmd("XCLAIM")
                .arg(&self.job.stream)
                .arg(&self.job.group)
                .arg(&self.job.consumer)
                .arg(0)
                .arg(chunk)
                .arg("IDLE")
                .arg(idle_ms)
                .arg("JUSTID")
                .query_async(&mut self.conn)
                .await?;
        }
        Ok(())
    }
}

impl StreamReader {
    /// [`StreamReader::read`] of a job with `flow.order_by`: new entries read and listed
    /// under their keys in one step; when there are none, wait up to `block_ms` for the
    /// stream to grow (without reading), then read once more.
    pub(super) async fn read_ordered(
        &mut self,
        field: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Event>, redis::RedisError> {
        let prefix = format!("{}:order:", self.job.job_key);
        for round in 0..2 {
            let (reply, last): (Value, String) = scripts::ORDER_READ
                .key(&self.job.stream)
                .arg(&self.job.group)
                .arg(&self.job.consumer)
                .arg(count)
                .arg(field)
                .arg(&prefix)
                .invoke_async(&mut self.conn)
                .await?;
            if last.is_empty() {
                return parse_read_reply(reply, &self.job).map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Parse, "reading", e.to_string()))
                });
            }
            if round == 1 || block_ms == 0 {
                break;
            }
            // Wait for an entry after the stream's last one (read nothing: XREAD).
            let _: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&self.job.stream)
                .arg(&last)
                .query_async(&mut self.conn)
                .await?;
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_parts_are_one_to_one_and_readable() {
        assert_eq!(flow_part(b"acct-42"), "acct-42");
        assert_eq!(flow_part(b"100%"), "100%25");
        assert_eq!(flow_part(b"a b\xff"), "a%20b%FF");
        assert_eq!(flow_part(b"#1"), "%231");
        assert_ne!(flow_part(b"%20"), flow_part(b" "));
        let long = vec![b'x'; 1000];
        assert_eq!(flow_part(&long).len(), 41);
        assert!(flow_part(&long).starts_with('#'));
    }
}
