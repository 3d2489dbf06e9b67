//! A job's view of its source stream: the consumer group, batched reads of new entries,
//! redelivery of due retries and of entries idle on dead consumers (`claim.lua`), and the
//! commit script that writes a batch's effects, acks, retries, dead letters, status records
//! and counters in one atomic step (`commit.lua`).
//!
//! Keys touched: the source stream, the registry ([`Keys::jobs`]), the job hash
//! ([`Keys::job`]), its retry set ([`Keys::retry`]), dead-letter stream ([`Keys::dlq`]) and
//! event status records ([`Keys::event_prefix`]), every stream plugins emit to, and the
//! channel [`Keys::events_channel`].

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};

use super::keys::Keys;
use super::{StoreError, now_ms};
use crate::event::{Effect, Event, Field, KIND_STREAM_ENTRY, Outcome};
use crate::policy::Decision;

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Every entry already in the stream, then new ones (`XGROUP CREATE … 0`).
    #[default]
    Beginning,
    /// Only entries added after the group is created (`XGROUP CREATE … $`).
    New,
}

/// The identity and names of one job on its source stream.
#[derive(Debug, Clone)]
pub struct StreamJob {
    /// The job's name.
    pub job: Arc<str>,
    /// The plugin it runs, recorded in the job hash.
    pub plugin: String,
    /// The source stream key.
    pub stream: String,
    /// The consumer group ([`Keys::group`]).
    pub group: String,
    /// This host's consumer name in the group.
    pub consumer: String,
    /// The job hash ([`Keys::job`]): the namespace of the plugin's state.
    pub job_key: String,
    /// The hash the scripts count deliveries in: the job hash, except for a job's lifecycle
    /// stream, whose events are not the job's input and are counted apart.
    pub counters_key: String,
    /// The job registry ([`Keys::jobs`]).
    pub registry_key: String,
    /// Scheduled retries ([`Keys::retry`]).
    pub retry_key: String,
    /// Dead letters ([`Keys::dlq`]).
    pub dlq_key: String,
    /// Prefix of event status records ([`Keys::event_prefix`]).
    pub event_prefix: String,
    /// Where finished events are announced ([`Keys::events_channel`]).
    pub channel: String,
    /// TTL in seconds of the status records of events that ever failed; 0 writes none.
    pub status_ttl_s: u64,
    /// TTL in seconds of the status records of events done on their first delivery; 0 writes none.
    pub done_ttl_s: u64,
    /// Builds queue keys for `enqueue` effects.
    pub keys: Keys,
    /// When the source is a sluice queue: its delayed tasks, moved in when due.
    pub delayed_key: Option<String>,
    /// Record the job in the registry and its hash when opened (false for a job's
    /// lifecycle stream, which is not the job's source).
    pub register: bool,
    /// The job run this runner serves: its commits are refused once the job hash names a
    /// newer run (`lifecycle_run`), so a host that has not yet seen a restart of the job
    /// cannot commit entries of the new run before its `job-started`. None: no fence.
    pub run: Option<u64>,
}

impl StreamJob {
    pub fn new(keys: &Keys, job: &str, plugin: &str, stream: &str, consumer: &str) -> Self {
        StreamJob {
            job: job.into(),
            plugin: plugin.into(),
            stream: stream.into(),
            group: keys.group(job),
            consumer: consumer.into(),
            job_key: keys.job(job, stream),
            counters_key: keys.job(job, stream),
            registry_key: keys.jobs(),
            retry_key: keys.retry(job, stream),
            dlq_key: keys.dlq(job, stream),
            event_prefix: keys.event_prefix(job, stream),
            channel: keys.events_channel(job),
            status_ttl_s: 86_400,
            done_ttl_s: 0,
            keys: keys.clone(),
            delayed_key: None,
            register: true,
            run: None,
        }
    }
}

/// What one commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub acked: u64,
    pub skipped: u64,
    pub retried: u64,
    pub failed: u64,
    pub dead: u64,
    /// Events no longer pending for this consumer (committed before, or reclaimed):
    /// nothing of them was written.
    pub stale: u64,
}

/// Why a commit wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A key it writes holds another type than the effect needs.
    BadTarget(BadTarget),
    /// (strict commits) An event is no longer this consumer's.
    Stale,
    /// A newer run of the job has begun (see [`StreamJob::run`]): this runner must stop.
    Superseded,
}

/// A commit refused because a key it writes holds another type than the effect needs
/// (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTarget {
    pub key: String,
    pub kind: String,
    /// Indices of the batch's events that write that key.
    pub events: Vec<usize>,
}

/// Open a job's stream: create the consumer group (and the stream) if missing, register
/// the job, and return its reader and committer, each on its own connection (a blocking
/// read must not hold up a commit).
pub async fn open(
    read_conn: ConnectionManager,
    mut commit_conn: ConnectionManager,
    job: StreamJob,
    start: StartFrom,
) -> Result<(StreamReader, StreamCommitter), StoreError> {
    let job = Arc::new(job);
    ensure_group(&mut commit_conn, &job, start).await?;
    if job.register {
        let _: () = redis::pipe()
            .hset(&job.registry_key, &*job.job, &job.stream)
            .hset_multiple(
                &job.job_key,
                &[
                    ("source", job.stream.as_str()),
                    ("plugin", job.plugin.as_str()),
                    ("group", job.group.as_str()),
                ],
            )
            .hset(&job.job_key, "started_at", now_ms())
            .query_async(&mut commit_conn)
            .await?;
    }
    Ok((
        StreamReader {
            conn: read_conn,
            job: job.clone(),
            claim: Script::new(include_str!("claim.lua")),
        },
        StreamCommitter {
            conn: commit_conn,
            job,
            script: Script::new(include_str!("commit.lua")),
        },
    ))
}

async fn ensure_group(
    conn: &mut ConnectionManager,
    job: &StreamJob,
    start: StartFrom,
) -> Result<(), StoreError> {
    let id = match start {
        StartFrom::Beginning => "0",
        StartFrom::New => "$",
    };
    let created: redis::RedisResult<()> = conn
        .xgroup_create_mkstream(&job.stream, &job.group, id)
        .await;
    match created {
        Ok(()) => {
            tracing::info!(job = &*job.job, stream = %job.stream, group = %job.group, "created consumer group");
            Ok(())
        }
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads a job's entries through its consumer group: new ones, due retries, idle ones.
pub struct StreamReader {
    /// Its own connection: `XREADGROUP … BLOCK` holds it while waiting.
    conn: ConnectionManager,
    job: Arc<StreamJob>,
    /// The claim script (EVALSHA, loaded on first use).
    claim: Script,
}

impl StreamReader {
    pub fn job(&self) -> &StreamJob {
        &self.job
    }

    /// Read up to `count` new entries, waiting up to `block_ms` for the first one.
    pub async fn read(&mut self, count: usize, block_ms: u64) -> Result<Vec<Event>, StoreError> {
        let reply: redis::RedisResult<Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.job.group)
            .arg(&self.job.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.job.stream)
            .arg(">")
            .query_async(&mut self.conn)
            .await;
        match reply {
            Ok(reply) => parse_read_reply(reply, &self.job.job),
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
        let mut invocation = self.claim.prepare_invoke();
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
        tracing::warn!(job = &*self.job.job, stream = %self.job.stream, "consumer group vanished with the stream empty; creating it again");
        ensure_group(&mut self.conn, &self.job, StartFrom::Beginning).await
    }
}

/// Turn a `claim.lua` reply into its head value and events.
fn parse_claim_reply(reply: Value, job: &StreamJob) -> Result<(String, Vec<Event>), StoreError> {
    type Claimed = (String, u32, Vec<Vec<u8>>);
    let (head, entries): (Option<String>, Vec<Claimed>) = redis::from_redis_value(reply)?;
    let events = entries
        .into_iter()
        .map(|(id, deliveries, flat)| Event {
            kind: KIND_STREAM_ENTRY,
            id,
            source: job.stream.clone(),
            fields: pair_fields(flat),
            delivery_count: deliveries,
            job: job.job.clone(),
        })
        .collect();
    Ok((head.unwrap_or_default(), events))
}

impl StreamCommitter {
    /// Reset the idle time of `ids` this consumer still holds and that have been idle for
    /// `min_idle_ms` or more, so that other hosts do not take over entries still being handled.
    pub async fn refresh(&mut self, ids: &[String], min_idle_ms: u64) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let script = Script::new(include_str!("refresh.lua"));
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.job.stream)
            .key(&self.job.job_key)
            .arg(min_idle_ms)
            .arg(&self.job.consumer)
            .arg(&self.job.group);
        for id in ids {
            invocation.arg(id);
        }
        Ok(invocation.invoke_async(&mut self.conn).await?)
    }

    /// A handle for [`StreamCommitter::refresh`] from another task (same connection).
    pub fn refresher(&self) -> StreamCommitter {
        StreamCommitter {
            conn: self.conn.clone(),
            job: self.job.clone(),
            script: self.script.clone(),
        }
    }
}

/// Commits a job's handled batches with the commit script.
pub struct StreamCommitter {
    conn: ConnectionManager,
    job: Arc<StreamJob>,
    /// The commit script (EVALSHA, loaded on first use).
    script: Script,
}

impl StreamCommitter {
    pub fn job(&self) -> &StreamJob {
        &self.job
    }

    /// Commit a handled batch: `outcomes[i]` and `decisions[i]` belong to `events[i]`.
    /// Everything happens in one script: all of it, or none.
    /// `strict` (for plugins that read state): if any event is no longer this consumer's,
    /// nothing is written and [`Refused::Stale`] comes back. `version` (the plugin's sha256)
    /// is recorded in status records and dead letters.
    pub async fn commit(
        &mut self,
        events: &[Event],
        outcomes: &[Outcome],
        decisions: &[Decision],
        strict: bool,
        version: &str,
    ) -> Result<Result<Committed, Refused>, StoreError> {
        let j = &self.job;
        let now = now_ms();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&j.stream)
            .key(&j.counters_key)
            .key(&j.retry_key)
            .key(&j.dlq_key);
        let ids = events.iter().filter_map(|e| parse_id(&e.id));
        let (min, max) = ids.fold(((u64::MAX, u64::MAX), (0, 0)), |(lo, hi), id| {
            (lo.min(id), hi.max(id))
        });
        invocation
            .arg(&j.group)
            .arg(&j.consumer)
            .arg(format!("{}-{}", min.0, min.1))
            .arg(format!("{}-{}", max.0, max.1))
            .arg(now)
            .arg(version)
            .arg(j.status_ttl_s)
            .arg(&j.event_prefix)
            .arg(&j.channel)
            .arg(j.done_ttl_s);
        // Effects are written only for acked events.
        let effects_of = |i: usize| -> &[Effect] {
            match (&decisions[i], &outcomes[i]) {
                (Decision::Ack, Outcome::Handled { effects, .. }) => effects,
                _ => &[],
            }
        };
        // First pass: every key beyond the first four, once, with its type and the events
        // writing it (KEYS and their types go before the records).
        let mut targets: HashMap<String, (usize, Vec<usize>)> = HashMap::new();
        let mut key_types = String::new();
        for i in 0..events.len() {
            for effect in effects_of(i) {
                let (key, kind) = target(j, effect);
                let next = targets.len() + 5;
                let entry = targets.entry(key.clone()).or_insert_with_key(|key| {
                    invocation.key(key.as_str());
                    key_types.push(kind);
                    (next, Vec::new())
                });
                if entry.1.last() != Some(&i) {
                    entry.1.push(i);
                }
                // One key written as two types (a stream and a kv key, say) could only fail
                // half-way through the script: refuse it before Redis sees anything.
                if key_types.as_bytes()[entry.0 - 5] != kind as u8 {
                    return Ok(Err(Refused::BadTarget(BadTarget {
                        key,
                        kind: "key written as two different types".into(),
                        events: entry.1.clone(),
                    })));
                }
            }
        }
        invocation
            .arg(&key_types)
            .arg(if strict { "1" } else { "0" })
            .arg(j.run.map(|r| r.to_string()).unwrap_or_default());
        // Second pass: one record per event.
        for (i, ((event, outcome), decision)) in
            events.iter().zip(outcomes).zip(decisions).enumerate()
        {
            let (flag, due, text) = match decision {
                Decision::Ack => ("a", 0, ""),
                Decision::Skip => ("s", 0, ""),
                Decision::Retry { delay, error } => {
                    ("r", now + delay.as_millis() as u64, error.as_str())
                }
                Decision::Dead { reason } => ("d", 0, reason.as_str()),
            };
            let effects = effects_of(i);
            let failed = matches!(outcome, Outcome::Failed(_));
            invocation
                .arg(&event.id)
                .arg(flag)
                .arg(if failed { "1" } else { "0" })
                .arg(event.delivery_count)
                .arg(due)
                .arg(text)
                .arg(effects.len());
            for (n, effect) in effects.iter().enumerate() {
                let index = targets[&target(j, effect).0].0;
                match effect {
                    Effect::Emit {
                        fields, max_len, ..
                    } => {
                        let max_len = max_len.map(|m| m.to_string()).unwrap_or_default();
                        invocation
                            .arg("x")
                            .arg(index)
                            .arg(max_len)
                            .arg(fields.len());
                        for (name, value) in fields {
                            invocation.arg(name).arg(value);
                        }
                    }
                    Effect::KvSet { value, ttl_s, .. } => {
                        invocation
                            .arg("k")
                            .arg(index)
                            .arg(ttl_s.unwrap_or(0))
                            .arg(value);
                    }
                    Effect::KvDelete { .. } => {
                        invocation.arg("K").arg(index);
                    }
                    Effect::CounterAdd { delta, ttl_s, .. } => {
                        invocation
                            .arg("c")
                            .arg(index)
                            .arg(delta)
                            .arg(ttl_s.unwrap_or(0));
                    }
                    Effect::WindowAdd { id, at_ms, .. } => {
                        invocation.arg("w").arg(index).arg(id).arg(at_ms);
                    }
                    Effect::Enqueue {
                        payload,
                        delay_ms: 0,
                        ..
                    } => {
                        invocation.arg("q").arg(index).arg(payload);
                    }
                    Effect::Enqueue {
                        payload, delay_ms, ..
                    } => {
                        // Unique per event and effect, so equal payloads do not merge.
                        let mut member = format!("{}/{}/{n}\n", j.job, event.id).into_bytes();
                        member.extend_from_slice(payload);
                        invocation
                            .arg("Q")
                            .arg(index)
                            .arg(now + u64::from(*delay_ms))
                            .arg(member);
                    }
                }
            }
        }
        let reply: redis::RedisResult<(u64, u64, u64, u64, u64, u64)> =
            invocation.invoke_async(&mut self.conn).await;
        match reply {
            Ok((acked, skipped, retried, failed, dead, stale)) => Ok(Ok(Committed {
                acked,
                skipped,
                retried,
                failed,
                dead,
                stale,
            })),
            Err(e) if e.code() == Some("SLUICE_BADTARGET") => {
                // "<index into KEYS> <type>": the index, not the name (Redis rewrites newlines
                // in error replies, so a name may not come back as it went).
                let detail = e.detail().unwrap_or_default();
                let (index, kind) = detail.split_once(' ').unwrap_or((detail, ""));
                let index: usize = index.parse().unwrap_or(0);
                let (key, events) = targets
                    .iter()
                    .find(|(_, t)| t.0 == index)
                    .map(|(k, t)| (k.clone(), t.1.clone()))
                    .unwrap_or_default();
                Ok(Err(Refused::BadTarget(BadTarget {
                    key,
                    kind: kind.to_string(),
                    events,
                })))
            }
            Err(e) if e.code() == Some("SLUICE_STALE") => Ok(Err(Refused::Stale)),
            Err(e) if e.code() == Some("SLUICE_SUPERSEDED") => Ok(Err(Refused::Superseded)),
            Err(e) => Err(e.into()),
        }
    }
}

/// The full key an effect writes, and its type letter for the commit script.
fn target(job: &StreamJob, effect: &Effect) -> (String, char) {
    let job_key = job.job_key.as_str();
    match effect {
        Effect::Enqueue {
            queue, delay_ms: 0, ..
        } => (job.keys.queue(queue), 's'),
        Effect::Enqueue { queue, .. } => (Keys::delayed(&job.keys.queue(queue)), 'z'),
        Effect::Emit { stream, .. } => (stream.clone(), 's'),
        Effect::KvSet { key, .. } | Effect::KvDelete { key } => (Keys::kv(job_key, key), 't'),
        Effect::CounterAdd { name, .. } => (Keys::counter(job_key, name), 't'),
        Effect::WindowAdd { name, .. } => (Keys::window(job_key, name), 'z'),
    }
}

/// A stream entry id `<ms>-<seq>` as numbers, for ordering.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
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
pub fn parse_read_reply(reply: Value, job: &Arc<str>) -> Result<Vec<Event>, StoreError> {
    type Entry = (String, Option<Vec<Vec<u8>>>);
    let streams: Option<Vec<(String, Vec<Entry>)>> = redis::from_redis_value(reply)?;
    let mut events = Vec::new();
    for (stream, entries) in streams.unwrap_or_default() {
        events.reserve(entries.len());
        for (id, flat) in entries {
            events.push(Event {
                kind: KIND_STREAM_ENTRY,
                id,
                source: stream.clone(),
                fields: pair_fields(flat.unwrap_or_default()),
                delivery_count: 1,
                job: job.clone(),
            });
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let job: Arc<str> = "j".into();
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
    fn ids_order_numerically() {
        assert!(parse_id("10-0") > parse_id("9-5"));
        assert!(parse_id("1-10") > parse_id("1-9"));
        assert_eq!(parse_id("x"), None);
    }

    #[test]
    fn a_timed_out_read_is_empty() {
        let job: Arc<str> = "j".into();
        assert!(parse_read_reply(Value::Nil, &job).unwrap().is_empty());
    }
}
