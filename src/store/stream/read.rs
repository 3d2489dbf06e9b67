//! Reading a job's stream through its consumer group: new entries (`XREADGROUP`), due retries
//! and entries idle on other consumers (`claim.lua`), and recovery from a vanished group.

use crate::store::Conn;
use redis::{AsyncCommands, Value};

use super::{StreamJob, ensure_group};
use crate::model::{Event, Field, Start, now_ms};
use crate::store::{StoreError, scripts};
use std::sync::Arc;

/// Reads a job's entries through its consumer group: new ones, due retries, idle ones.
pub struct StreamReader {
    /// Its own connection: `XREADGROUP … BLOCK` holds it while waiting.
    pub(super) conn: Conn,
    pub(super) job: Arc<StreamJob>,
}

impl StreamReader {
    pub fn job(&self) -> &StreamJob {
        &self.job
    }

    /// Read up to `count` new entries, waiting up to `block_ms` for the first one (0: not
    /// waiting at all).
    pub async fn read(&mut self, count: usize, block_ms: u64) -> Result<Vec<Event>, StoreError> {
        if let Some(field) = self.job.flow.order_by.clone() {
            return match self.read_ordered(&field, count, block_ms).await {
                Ok(events) => Ok(events),
                Err(e) => self.recover(e).await.map(|()| Vec::new()),
            };
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.job.group)
            .arg(&self.job.consumer)
            .arg("COUNT")
            .arg(count);
        if block_ms > 0 {
            read.arg("BLOCK").arg(block_ms);
        }
        let reply: redis::RedisResult<Value> = read
            .arg("STREAMS")
            .arg(&self.job.stream)
            .arg(">")
            .query_async(&mut self.conn)
            .await;
        match reply {
            Ok(reply) => parse_read_reply(reply, &self.job),
            Err(e) => self.recover(e).await.map(|()| Vec::new()),
        }
    }
}

impl StreamReader {
    /// Claim retries whose time has come (at most `count`); also returns when the next
    /// scheduled retry is due (ms since the epoch), if any.
    pub async fn take_due(
        &mut self,
        count: usize,
    ) -> Result<(Vec<Event>, Option<u64>), StoreError> {
        let (next, events) = self.claim(count, &["due".into()]).await?;
        Ok((events, next.parse().ok()))
    }

    /// Take over entries idle for longer than `min_idle_ms` (at most `count`), except those
    /// this consumer holds that are `in_flight` here, scanning from `cursor` (`-` to start);
    /// returns them and the cursor to go on from (`-` when the scan went round).
    pub async fn reclaim(
        &mut self,
        count: usize,
        min_idle_ms: u64,
        cursor: &str,
        in_flight: Vec<String>,
    ) -> Result<(Vec<Event>, String), StoreError> {
        let mut mode = vec!["idle".into(), min_idle_ms.to_string(), cursor.into()];
        mode.extend(in_flight);
        let (cursor, events) = self.claim(count, &mode).await?;
        Ok((events, cursor))
    }

    /// Run `claim.lua` in a mode (its ARGV from 5 on); returns its head value and events.
    async fn claim(
        &mut self,
        count: usize,
        mode: &[String],
    ) -> Result<(String, Vec<Event>), StoreError> {
        let mut invocation = scripts::CLAIM.prepare_invoke();
        invocation
            .key(&self.job.stream)
            .key(&self.job.retry_key)
            .key(&self.job.counters_key)
            .key(&self.job.dlq_key);
        if let Some(delayed) = &self.job.delayed_key {
            invocation.key(delayed);
        }
        invocation
            .arg(&self.job.group)
            .arg(&self.job.consumer)
            .arg(now_ms())
            .arg(count);
        for arg in mode {
            invocation.arg(arg);
        }
        let reply: redis::RedisResult<Value> = invocation.invoke_async(&mut self.conn).await;
        match reply {
            Ok(reply) => parse_claim_reply(reply, &self.job),
            Err(e) => self
                .recover(e)
                .await
                .map(|()| ("-".to_string(), Vec::new())),
        }
    }

    /// After a failed read: if the group is gone (NOGROUP) and the stream is empty or gone,
    /// create it again and report nothing read. A group gone from a stream that still holds
    /// entries is not recreated: its acks are lost with it, so starting at the beginning
    /// would handle entries again and starting at the end would skip some. The job stalls,
    /// loudly, until an operator recreates the group or restarts the host (which creates it
    /// from the job's `start`). Any other error is returned as it is.
    async fn recover(&mut self, e: redis::RedisError) -> Result<(), StoreError> {
        let nogroup =
            e.code() == Some("NOGROUP") || e.detail().is_some_and(|d| d.contains("NOGROUP"));
        if !nogroup {
            return Err(e.into());
        }
        let len: u64 = self.conn.xlen(&self.job.stream).await.unwrap_or(0);
        if len > 0 {
            return Err(StoreError::GroupGone(format!(
                "consumer group `{}` vanished while stream `{}` holds {len} entries; not \
                 recreating it (its acks are gone): recreate it with XGROUP CREATE, or restart \
                 the host to create it from the job's `start`",
                self.job.group, self.job.stream
            )));
        }
        // Redis lost its data (the registry's epoch went with it): the host starts its jobs
        // afresh from the registry within a second; a group made here now could be one of a
        // job that is no more, left behind for good.
        let epoch: bool = self
            .conn
            .exists(self.job.keys.ctl_epoch())
            .await
            .unwrap_or(true);
        if !epoch {
            return Err(StoreError::GroupGone(
                "Redis lost its data (the control registry's epoch is gone): not recreating the \
                 group; the host starts its jobs afresh from the registry"
                    .into(),
            ));
        }
        tracing::warn!(job = &*self.job.job, stream = %self.job.stream, "consumer group vanished with the stream empty; creating it again");
        ensure_group(&mut self.conn, &self.job, Start::Beginning).await
    }
}

/// Turn a `claim.lua` reply into its head value and events.
fn parse_claim_reply(reply: Value, job: &StreamJob) -> Result<(String, Vec<Event>), StoreError> {
    type Claimed = (String, u32, Vec<Vec<u8>>);
    let (head, entries): (Option<String>, Vec<Claimed>) = redis::from_redis_value(reply)?;
    let events = entries
        .into_iter()
        .map(|(id, deliveries, flat)| job.event(id, pair_fields(flat), deliveries))
        .collect();
    Ok((head.unwrap_or_default(), events))
}

/// `[name, value, name, value, …]` → fields; names that are not UTF-8 are converted lossily.
fn pair_fields(flat: Vec<Vec<u8>>) -> Vec<Field> {
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let name = String::from_utf8(name)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        fields.push((name, value));
    }
    fields
}

/// Turn an `XREADGROUP` reply (RESP2 or RESP3 arrays) into events.
pub fn parse_read_reply(reply: Value, job: &StreamJob) -> Result<Vec<Event>, StoreError> {
    type Entry = (String, Option<Vec<Vec<u8>>>);
    let streams: Option<Vec<(String, Vec<Entry>)>> = redis::from_redis_value(reply)?;
    let mut events = Vec::new();
    for (_, entries) in streams.unwrap_or_default() {
        events.reserve(entries.len());
        for (id, flat) in entries {
            events.push(job.event(id, pair_fields(flat.unwrap_or_default()), 1));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KIND_JOB_FINISHED, KIND_JOB_STARTED};
    use crate::store::Keys;
    use crate::store::stream::StreamJob;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_in_order_with_binary_values() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![
                        bulk("b"),
                        bulk("2"),
                        bulk("a"),
                        Value::BulkString(vec![0xff, 0]),
                    ]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let job = StreamJob::new(&Keys::new("sluice"), "j", "p", "events", "c");
        let events = parse_read_reply(reply, &job).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, "1-0");
        assert_eq!(events[0].source, "events");
        assert_eq!(
            events[0].fields,
            vec![("b".into(), b"2".to_vec()), ("a".into(), vec![0xff, 0])]
        );
        assert!(events[1].fields.is_empty());
    }

    #[test]
    fn a_timed_out_read_is_empty() {
        let job = StreamJob::new(&Keys::new("sluice"), "j", "p", "events", "c");
        assert!(parse_read_reply(Value::Nil, &job).unwrap().is_empty());
    }

    #[test]
    fn lifecycle_entries_are_events_of_their_kind_from_the_jobs_source() {
        let job = StreamJob::lifecycle(&Keys::new("sluice"), "j", "p", "events", "c");
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(&job.stream),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![
                        bulk("kind"),
                        bulk("job-started"),
                        bulk("run"),
                        bulk("1"),
                    ]),
                ]),
                Value::Array(vec![
                    bulk("2-0"),
                    Value::Array(vec![
                        bulk("kind"),
                        bulk("job-finished"),
                        bulk("run"),
                        bulk("1"),
                    ]),
                ]),
            ]),
        ])]);
        let events = parse_read_reply(reply, &job).unwrap();
        assert_eq!(events[0].kind, KIND_JOB_STARTED);
        assert_eq!(events[1].kind, KIND_JOB_FINISHED);
        assert!(events.iter().all(|e| e.source == "events"));
    }
}
