//! A job's view of its source stream: the consumer group, batched reads, and the commit
//! script that writes a batch's effects, acks and counters in one atomic step.
//!
//! Keys touched: the source stream, the job hash ([`Keys::job`]), the registry
//! ([`Keys::jobs`]), and every stream plugins emit to.

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};

use super::keys::Keys;
use super::{StoreError, now_ms};
use crate::event::{Disposition, Effect, Event, KIND_STREAM_ENTRY, Outcome};

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
    /// The job hash ([`Keys::job`]).
    pub job_key: String,
    /// The job registry ([`Keys::jobs`]).
    pub registry_key: String,
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
            registry_key: keys.jobs(),
        }
    }
}

/// What one commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub acked: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Events no longer pending for this consumer (committed before, or reclaimed):
    /// nothing of them was written.
    pub stale: u64,
}

/// A commit refused because an emit target holds something other than a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTarget {
    pub key: String,
    pub kind: String,
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
    Ok((
        StreamReader {
            conn: read_conn,
            job: job.clone(),
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

/// Reads a job's new entries through its consumer group.
pub struct StreamReader {
    /// Its own connection: `XREADGROUP … BLOCK` holds it while waiting.
    conn: ConnectionManager,
    job: Arc<StreamJob>,
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
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => {
                // The stream or group was deleted under us: recreate it and read again later.
                tracing::warn!(job = &*self.job.job, stream = %self.job.stream, "consumer group vanished; recreating it");
                ensure_group(&mut self.conn, &self.job, StartFrom::Beginning).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        parse_read_reply(reply, &self.job.job)
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

    /// Commit a handled batch: `outcomes[i]` belongs to `events[i]`.
    ///
    /// Acked events get their effects written and are acknowledged, skipped ones are
    /// acknowledged, failed ones (and, until retries exist, `retry`/`dead-letter` answers)
    /// are counted and stay pending. All in one script: all of it happens, or none.
    pub async fn commit(
        &mut self,
        events: &[Event],
        outcomes: &[Outcome],
    ) -> Result<Result<Committed, BadTarget>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation.key(&self.job.stream).key(&self.job.job_key);
        invocation.arg(&self.job.group).arg(&self.job.consumer);
        let ids = events.iter().filter_map(|e| parse_id(&e.id));
        let (min, max) = ids.fold(((u64::MAX, u64::MAX), (0, 0)), |(lo, hi), id| {
            (lo.min(id), hi.max(id))
        });
        invocation
            .arg(format!("{}-{}", min.0, min.1))
            .arg(format!("{}-{}", max.0, max.1));
        let mut targets: HashMap<&str, usize> = HashMap::new();
        for (event, outcome) in events.iter().zip(outcomes) {
            let (flag, effects): (&str, &[Effect]) = match outcome {
                Outcome::Handled {
                    disposition: Disposition::Ack,
                    effects,
                } => ("a", effects),
                Outcome::Handled {
                    disposition: Disposition::Skip,
                    ..
                } => ("s", &[]),
                _ => ("f", &[]),
            };
            invocation.arg(&event.id).arg(flag).arg(effects.len());
            for Effect::Emit { stream, fields } in effects {
                let next = targets.len() + 3;
                let index = *targets.entry(stream.as_str()).or_insert_with(|| {
                    invocation.key(stream.as_str());
                    next
                });
                invocation.arg(index).arg(fields.len());
                for (name, value) in fields {
                    invocation.arg(name).arg(value);
                }
            }
        }
        let reply: redis::RedisResult<(u64, u64, u64, u64)> =
            invocation.invoke_async(&mut self.conn).await;
        match reply {
            Ok((acked, skipped, failed, stale)) => Ok(Ok(Committed {
                acked,
                skipped,
                failed,
                stale,
            })),
            Err(e) if e.code() == Some("SLUICE_BADTARGET") => {
                let detail = e.detail().unwrap_or_default();
                let mut words = detail.split(' ');
                let key = words.next().unwrap_or_default().to_string();
                let kind = words.next().unwrap_or_default().to_string();
                Ok(Err(BadTarget { key, kind }))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A stream entry id `<ms>-<seq>` as numbers, for ordering.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Turn an `XREADGROUP` reply (RESP2 or RESP3 arrays) into events.
pub fn parse_read_reply(reply: Value, job: &Arc<str>) -> Result<Vec<Event>, StoreError> {
    type Entry = (String, Option<Vec<Vec<u8>>>);
    let streams: Option<Vec<(String, Vec<Entry>)>> = redis::from_redis_value(reply)?;
    let mut events = Vec::new();
    for (stream, entries) in streams.unwrap_or_default() {
        events.reserve(entries.len());
        for (id, flat) in entries {
            let flat = flat.unwrap_or_default();
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(name), Some(value)) = (it.next(), it.next()) {
                let name = String::from_utf8(name)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                fields.push((name, value));
            }
            events.push(Event {
                kind: KIND_STREAM_ENTRY,
                id,
                source: stream.clone(),
                fields,
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
