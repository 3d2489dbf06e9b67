//! A job's view of a stream it reads through its consumer group: [`StreamJob`] names it,
//! [`open`] creates the group and registers the job, [`read`] takes entries (new ones, due
//! retries, entries idle on dead consumers), [`commit`] writes a handled batch's effects,
//! acks, retries, dead letters, status records and counters in one atomic step.
//!
//! This is the source seam: every kind of input a job reads is a stream here (a Redis
//! stream, a sluice queue's stream, the job's lifecycle stream), and [`Entries`] says how its
//! entries become events; the runner never knows which.
//!
//! Keys touched (see [`Keys`]): the stream, [`Keys::jobs`], [`Keys::job`], [`Keys::retry`],
//! [`Keys::dlq`], [`Keys::event_prefix`], every stream plugins emit to, the channel
//! [`Keys::events_channel`].

mod commit;
mod flow;
mod read;

pub use commit::{BadTarget, Committed, Refused, StreamCommitter};
pub use flow::{Gatekeeper, Head, Take, flow_part};
pub use read::{StreamReader, parse_read_reply};

use std::sync::Arc;

use crate::store::Conn;
use redis::AsyncCommands;

use super::StoreError;
use super::keys::Keys;
use crate::model::spec::defaults;
use crate::model::{
    Event, Field, KIND_JOB_FINISHED, KIND_JOB_STARTED, KIND_STREAM_ENTRY, Settle, Start, fed_kind,
    now_ms,
};

/// The first two fields of an entry a feed writes (see [`Entries::Fed`]).
pub const FED_KIND: &str = "sluice:kind";
pub const FED_SOURCE: &str = "sluice:source";
/// The next three, when the entry's acknowledgement settles something ([`Settle`]): a hash
/// of the job's, a field, a value (empty: delete the field).
pub const SETTLE_KEY: &str = "sluice:settle-key";
pub const SETTLE_FIELD: &str = "sluice:settle-field";
pub const SETTLE_VALUE: &str = "sluice:settle-value";

/// The identity and names of one job on its source stream.
#[derive(Debug, Clone)]
pub struct StreamJob {
    /// The job's name.
    pub job: Arc<str>,
    /// The plugin it runs, recorded in the job hash.
    pub plugin: String,
    /// The stream read: the source stream (or the job's lifecycle stream).
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
    /// The job's outbox ([`Keys::outbox`]): on a Redis Cluster, effects aimed at other
    /// slots are appended there, and forwarded ([`crate::store::forward`]).
    pub outbox_key: String,
    /// Source entries dead letters refer to ([`Keys::held`]).
    pub held_key: String,
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
    /// What the stream's entries are: the job's input, or its lifecycle notices.
    pub entries: Entries,
    /// The job run this runner serves: its commits are refused once the job hash names a
    /// newer run (`lifecycle_run`), so a host that has not yet seen a restart of the job
    /// cannot commit entries of the new run before its `job-started`. None: no fence.
    pub run: Option<u64>,
    /// Replicas that must have a commit's writes (WAIT) before the batch counts as
    /// committed (0: do not wait).
    pub wait_replicas: u32,
    /// How long one WAIT may block, in ms; it is repeated until the replicas have it.
    pub wait_timeout_ms: u64,
    /// Idempotency keys, per-key ordering, rate limits (none for a lifecycle stream).
    pub flow: crate::model::FlowOptions,
    /// The aggregates its acked events count into (none for a lifecycle or fired stream).
    pub aggregates: Vec<crate::model::Aggregate>,
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
            outbox_key: keys.outbox(job, stream),
            held_key: keys.held(stream),
            event_prefix: keys.event_prefix(job, stream),
            channel: keys.events_channel(job),
            status_ttl_s: defaults::STATUS_TTL_S,
            done_ttl_s: defaults::DONE_TTL_S,
            keys: keys.clone(),
            delayed_key: None,
            entries: Entries::Source,
            run: None,
            wait_replicas: 0,
            wait_timeout_ms: defaults::WAIT_TIMEOUT_MS,
            flow: crate::model::FlowOptions::default(),
            aggregates: Vec::new(),
        }
    }

    /// A job's fired stream (its aggregates' `threshold-reached` entries) as a source of its
    /// own, like the lifecycle stream: read through the job's group, with its own retries,
    /// counters and status records.
    pub fn fired(keys: &Keys, job: &str, plugin: &str, source: &str, consumer: &str) -> Self {
        let stream = super::aggregate::fired_stream(&keys.job(job, source));
        StreamJob {
            retry_key: format!("{stream}:retry"),
            counters_key: format!("{stream}:counters"),
            event_prefix: format!("{stream}:event:"),
            channel: format!("{}:fired", keys.events_channel(job)),
            entries: Entries::Fired,
            ..StreamJob::new(keys, job, plugin, &stream, consumer)
        }
    }

    /// The key of `what` (`dedupe`, `order`, `rate`) for the value of `field` in `event`,
    /// in the job's slot; None when the event has no such field.
    pub fn flow_key(&self, what: &str, field: Option<&str>, event: &Event) -> Option<String> {
        let field = field?;
        let (_, value) = event.fields.iter().find(|(name, _)| name == field)?;
        Some(format!("{}:{what}:{}", self.job_key, flow_part(value)))
    }

    /// The event's idempotency key (`flow.dedupe_by`), if it has one.
    pub fn dedupe_key(&self, event: &Event) -> Option<String> {
        self.flow_key("dedupe", self.flow.dedupe_by.as_deref(), event)
    }

    /// The list of pending entries of the event's key (`flow.order_by`), if it has one.
    pub fn order_key(&self, event: &Event) -> Option<String> {
        self.flow_key("order", self.flow.order_by.as_deref(), event)
    }

    /// The job's lifecycle stream as a source of its own ([`Entries::Lifecycle`]): read
    /// through the job's group, with its own retries, counters, status records and channel
    /// (its events are not the job's input).
    pub fn lifecycle(keys: &Keys, job: &str, plugin: &str, source: &str, consumer: &str) -> Self {
        let stream = keys.lifecycle(job, source);
        StreamJob {
            retry_key: format!("{stream}:retry"),
            counters_key: format!("{stream}:counters"),
            event_prefix: format!("{stream}:event:"),
            channel: format!("{}:lifecycle", keys.events_channel(job)),
            entries: Entries::Lifecycle {
                source: source.to_string(),
            },
            ..StreamJob::new(keys, job, plugin, &stream, consumer)
        }
    }

    /// Where the settling writes of this job's fed events may go: its scan's seen-cache.
    fn settle_prefix(&self) -> String {
        self.keys.scan_seen(&self.job, b"")
    }

    /// The event an entry of this stream is.
    fn event(&self, id: String, fields: Vec<Field>, delivery_count: u32) -> Event {
        let (kind, source, fields, settle) = match &self.entries {
            Entries::Source => (KIND_STREAM_ENTRY, self.stream.clone(), fields, None),
            Entries::Fed | Entries::Fired => self.fed(fields),
            Entries::Lifecycle { source } => {
                let finished = fields
                    .iter()
                    .any(|(k, v)| k == "kind" && v == KIND_JOB_FINISHED.as_bytes());
                let kind = if finished {
                    KIND_JOB_FINISHED
                } else {
                    KIND_JOB_STARTED
                };
                (kind, source.clone(), fields, None)
            }
        };
        Event {
            kind,
            id,
            source,
            fields,
            delivery_count,
            job: self.job.clone(),
            settle,
            duplicate: false,
        }
    }

    /// A fed entry's kind, source, the fields the plugin sees, and its settling write.
    fn fed(
        &self,
        mut fields: Vec<Field>,
    ) -> (&'static str, String, Vec<Field>, Option<Box<Settle>>) {
        let origin = match fields.as_slice() {
            [(k, kind), (s, source), ..] if k == FED_KIND && s == FED_SOURCE => {
                fed_kind(kind).map(|kind| (kind, String::from_utf8_lossy(source).into_owned()))
            }
            _ => None,
        };
        let Some((kind, source)) = origin else {
            // Not written by a feed (a replay of an older letter, a hand-made entry): an
            // entry of the stream, shown whole.
            return (KIND_STREAM_ENTRY, self.stream.clone(), fields, None);
        };
        fields.drain(..2);
        let settle = match fields.as_slice() {
            [(k, key), (f, field), (v, value), ..]
                if k == SETTLE_KEY && f == SETTLE_FIELD && v == SETTLE_VALUE =>
            {
                let settle = Settle {
                    key: String::from_utf8_lossy(key).into_owned(),
                    field: field.clone(),
                    value: (!value.is_empty()).then(|| value.clone()),
                };
                fields.drain(..3);
                // Only the job's own keys: an entry cannot make a commit write anywhere else.
                settle
                    .key
                    .starts_with(&self.settle_prefix())
                    .then(|| Box::new(settle))
            }
            _ => None,
        };
        (kind, source, fields, settle)
    }
}

/// What the entries of a job's stream are: the seam where a kind of input becomes events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entries {
    /// The job's input (a stream, or a sluice queue's stream): each entry is a
    /// `stream-entry` event from that stream. Opening such a stream registers the job.
    Source,
    /// The job's input, written by one of sluice's feeds (a list's, a channel's, a scan's):
    /// each entry starts with the fields `sluice:kind` and `sluice:source`, which become the
    /// event's kind (one of [`fed_kind`]'s) and source, then optionally the three fields of
    /// a [`Settle`] (`sluice:settle-key`, `-field`, `-value`); none of these is among the
    /// fields the plugin sees. Registers the job as [`Entries::Source`] does.
    Fed,
    /// The job's lifecycle stream: each entry `{kind, run}` is a `job-started` or
    /// `job-finished` event from the job's source stream `source`.
    Lifecycle { source: String },
    /// The job's fired stream: its aggregates' `threshold-reached` entries, written as a
    /// feed writes ([`Entries::Fed`]), but not the job's input (not registered, not counted
    /// as its events).
    Fired,
}

impl Entries {
    /// Whether the stream is the job's input: what registers the job and what its event
    /// counts and metrics are of.
    pub fn is_input(&self) -> bool {
        matches!(self, Entries::Source | Entries::Fed)
    }
}

/// Open a job's stream: create the consumer group (and the stream) if missing, register
/// the job, and return its reader and committer, each on its own connection (a blocking
/// read must not hold up a commit).
pub async fn open(
    read_conn: Conn,
    mut commit_conn: Conn,
    job: StreamJob,
    start: Start,
) -> Result<(StreamReader, StreamCommitter), StoreError> {
    let job = Arc::new(job);
    ensure_group(&mut commit_conn, &job, start).await?;
    if job.entries.is_input() {
        // Two commands: the index and the job hash are in different slots of a cluster.
        let _: () = commit_conn
            .hset(&job.registry_key, &*job.job, &job.stream)
            .await?;
        let _: () = redis::pipe()
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
        },
        StreamCommitter {
            conn: commit_conn,
            job,
            stop: None,
        },
    ))
}

pub(super) async fn ensure_group(
    conn: &mut Conn,
    job: &StreamJob,
    start: Start,
) -> Result<(), StoreError> {
    let id = match start {
        Start::Beginning => "0",
        Start::New => "$",
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
