//! The data the Redis side and the WebAssembly side share: events in, outcomes out.
//!
//! Neither `store/` nor `runtime/` depends on the other; both depend on this module. An
//! [`Event`] is what a source produced; an [`Outcome`] is what handling it decided, with the
//! [`Effect`]s to commit in the same transaction as its acknowledgement.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Event kind of an entry read from a Redis stream.
pub const KIND_STREAM_ENTRY: &str = "stream-entry";
/// Event kind of an item of a Redis list (a `list:KEY` job).
pub const KIND_LIST_ITEM: &str = "list-item";
/// Event kind of a message published on a Redis pub/sub channel (a `channel:NAME` job).
pub const KIND_CHANNEL_MESSAGE: &str = "channel-message";

/// Event kinds of a scan job (`scan:PATH`): a file (or link, socket, …) that appeared,
/// changed or went since the last pass, and, when asked, a directory that appeared or went.
pub const KIND_FILE_CREATED: &str = "file-created";
pub const KIND_FILE_MODIFIED: &str = "file-modified";
pub const KIND_FILE_DELETED: &str = "file-deleted";
pub const KIND_DIR_CREATED: &str = "dir-created";
pub const KIND_DIR_DELETED: &str = "dir-deleted";

/// Event kind of a timer job's due time (`every:<period>`, `cron:<expression>`).
pub const KIND_TICK: &str = "tick";
/// Event kind of an aggregate's window reaching its threshold (`[[job.aggregate]]`).
pub const KIND_THRESHOLD_REACHED: &str = "threshold-reached";

/// The kinds sluice's own feeds write into a job's stream (`sluice:kind`, see
/// `store::stream::Entries::Fed`): the kind named `name`, if it is one.
pub fn fed_kind(name: &[u8]) -> Option<&'static str> {
    [
        KIND_LIST_ITEM,
        KIND_CHANNEL_MESSAGE,
        KIND_FILE_CREATED,
        KIND_FILE_MODIFIED,
        KIND_FILE_DELETED,
        KIND_DIR_CREATED,
        KIND_DIR_DELETED,
        KIND_TICK,
        KIND_THRESHOLD_REACHED,
    ]
    .into_iter()
    .find(|k| k.as_bytes() == name)
}

/// A write that settles a fed event: made in the commit that acknowledges the event (acked
/// or skipped), never otherwise. A scan's change cache entry is one: a file is marked seen
/// only once its plugin handled it. `value` None deletes the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    /// A hash of the job's own (in its slot).
    pub key: String,
    pub field: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Event kind delivered once per job run, before its first event.
pub const KIND_JOB_STARTED: &str = "job-started";
/// Event kind delivered once when a finite job has handled its whole source.
pub const KIND_JOB_FINISHED: &str = "job-finished";

/// One field of an event: a name and binary-safe value.
pub type Field = (String, Vec<u8>);

/// One unit of input, as handed to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Which kind of input this is (see `wit/types.wit`), e.g. [`KIND_STREAM_ENTRY`].
    pub kind: &'static str,
    /// Unique within `source`: for a stream entry, its entry id.
    pub id: String,
    /// Where it came from: for a stream entry, the stream key.
    pub source: String,
    /// The payload, in the order the producer wrote it.
    pub fields: Vec<Field>,
    /// Deliveries so far, this one included (1 on first delivery).
    pub delivery_count: u32,
    /// The job delivering it; shared by every event of the job.
    pub job: Arc<str>,
    /// What its acknowledgement writes besides the plugin's effects (fed events only).
    pub settle: Option<Box<Settle>>,
    /// Its idempotency key (`flow.dedupe_by`) was found committed when it was read: it is
    /// acknowledged as a duplicate without running the plugin (the commit checks again).
    pub duplicate: bool,
}

impl Event {
    /// The payload's bytes: field names and values.
    pub fn size(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// What the plugin answered for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Commit the effects and acknowledge.
    Ack,
    /// Deliver again, after this many milliseconds (None: the job's backoff).
    Retry(Option<u32>),
    /// Move to the dead-letter stream with this reason.
    DeadLetter(String),
    /// Acknowledge without committing effects.
    Skip,
}

/// A write the plugin asked for while handling an event; committed with the event's ack.
/// Names of keys, counters and windows are the plugin's own: the store puts them under the
/// job's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `XADD stream [MAXLEN ~ max_len] * fields…`
    Emit {
        stream: String,
        fields: Vec<Field>,
        /// Trim the stream to about this many entries.
        max_len: Option<u64>,
    },
    /// Set a key of the job's key-value store, expiring after `ttl_s` if given.
    KvSet {
        key: String,
        value: Vec<u8>,
        ttl_s: Option<u32>,
    },
    /// Delete a key of the job's key-value store.
    KvDelete { key: String },
    /// Add to a job counter, which expires `ttl_s` after this update if given.
    CounterAdd {
        name: String,
        delta: i64,
        ttl_s: Option<u32>,
    },
    /// Record `id` in a job window at `at_ms` (ms since the epoch).
    WindowAdd {
        name: String,
        id: String,
        at_ms: u64,
    },
    /// Push a task (`payload`) onto queue `queue`, after `delay_ms` if not 0.
    Enqueue {
        queue: String,
        payload: Vec<u8>,
        delay_ms: u32,
    },
}

/// What one argument of the commit script costs beyond its own bytes: its framing in the
/// request, its Lua string, its place in the command's argument vector. An empty field is
/// not free: 1000 emits of 1000 empty fields are two million arguments.
pub const ARG_COST: usize = 32;

/// What one Redis command the commit script runs for an effect costs, in the same unit:
/// measured, a command (an INCRBY, a SET, a one-field XADD) takes Redis about as long as 25
/// arguments take to pass, so a script of small effects is bounded by its commands.
pub const COMMAND_COST: usize = 512;

/// Most cost sent in one commit script call: what keeps one script's Redis time short
/// (measured in README's limits table), whatever the events hold.
pub const MAX_COMMIT_COST: usize = 4 << 20;

impl Effect {
    /// The effect's own bytes: names, fields, values.
    pub fn size(&self) -> usize {
        match self {
            Effect::Emit { stream, fields, .. } => {
                stream.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            }
            Effect::KvSet { key, value, .. } => key.len() + value.len(),
            Effect::KvDelete { key } => key.len(),
            Effect::CounterAdd { name, .. } => name.len() + 8,
            Effect::WindowAdd { name, id, .. } => name.len() + id.len() + 8,
            Effect::Enqueue { queue, payload, .. } => queue.len() + payload.len(),
        }
    }

    /// Arguments of the commit script the effect takes (its key is counted once more).
    pub fn args(&self) -> usize {
        1 + match self {
            Effect::Emit { fields, .. } => 4 + 2 * fields.len(),
            Effect::KvSet { .. } | Effect::CounterAdd { .. } | Effect::WindowAdd { .. } => 4,
            Effect::KvDelete { .. } => 2,
            Effect::Enqueue { delay_ms: 0, .. } => 3,
            Effect::Enqueue { .. } => 4,
        }
    }

    /// Redis commands the commit script runs for the effect.
    pub fn commands(&self) -> usize {
        match self {
            Effect::WindowAdd { .. } => 2,
            Effect::CounterAdd { ttl_s: Some(_), .. } => 2,
            _ => 1,
        }
    }

    /// What the effect costs the host (buffered), the request and Redis (the script's work),
    /// in bytes: its own, plus [`ARG_COST`] per argument and [`COMMAND_COST`] per command.
    /// The limits per event and per batch and the split of commits are all in this one unit.
    pub fn cost(&self) -> usize {
        self.size() + ARG_COST * self.args() + COMMAND_COST * self.commands()
    }
}

/// Where a plugin's reads of its job state (key-value, counters, windows) go. Implemented by
/// the store against Redis; reads of what the current batch wrote are answered by the runtime
/// before asking it.
#[async_trait::async_trait]
pub trait StateReader: Send + Sync {
    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn counter_get(&self, name: &str) -> Result<i64, String>;
    /// When (ms) each of `ids` was added to window `name`, if it is there.
    async fn window_scores(&self, name: &str, ids: &[String]) -> Result<Vec<Option<u64>>, String>;
    /// How many ids window `name` holds from `since_ms` on.
    async fn window_count(&self, name: &str, since_ms: u64) -> Result<u64, String>;
}

/// What a batch read of its job's stored state (Redis, before the batch's own writes), each
/// read once per batch: later reads of the same thing in the batch see the same value
/// (repeatable reads). The commit writes the batch only if every value is still what was
/// read, so a state-reading job is serializable across a fleet of hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadSet {
    /// kv key → its stored value (None: absent).
    pub kv: BTreeMap<String, Option<Vec<u8>>>,
    /// Counter → its stored value (absent counts as 0).
    pub counters: BTreeMap<String, i64>,
    /// (window, id) → when the id was added (None: not in the window).
    pub window_ids: BTreeMap<(String, String), Option<u64>>,
    /// (window, since ms) → how many ids the window held from then on.
    pub window_counts: BTreeMap<(String, u64), u64>,
}

impl ReadSet {
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
            && self.counters.is_empty()
            && self.window_ids.is_empty()
            && self.window_counts.is_empty()
    }

    /// How many values the commit checks.
    pub fn len(&self) -> usize {
        self.kv.len() + self.counters.len() + self.window_ids.len() + self.window_counts.len()
    }
}

/// Why handling an event failed. Each is a failure of that event only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The plugin returned `err(handler-error)`.
    Error,
    /// The plugin trapped (a panic, `unreachable`, an out-of-bounds access…).
    Trap,
    /// The plugin ran past the job's per-event deadline.
    Timeout,
    /// The plugin tried to grow its memory past the job's cap.
    Memory,
    /// The plugin asked for an effect outside the host's limits.
    Limit,
    /// The plugin could not be instantiated or its `init` failed.
    Init,
    /// Delivered more than `max_deliveries` times without a result: the hosts handling it
    /// died or lost it. Not handed to the plugin again.
    Abandoned,
    /// The batch's reads of job state kept being changed by other hosts before it could
    /// commit (see [`ReadSet`]): handled again later on fresh state.
    Conflict,
    /// A read of job state met Redis trouble: not the event's fault. The event is handled
    /// again after a pause, never charged a delivery for it.
    Unavailable,
    /// The input entry is over the job's `max_entry_bytes`: dead-lettered at once, never
    /// handed to the plugin (another delivery would be refused the same way).
    Oversized,
}

impl FailureKind {
    /// A failure no later delivery can change: the event is dead-lettered at once.
    pub fn is_final(self) -> bool {
        matches!(self, FailureKind::Oversized)
    }

    /// A stable lower-case name, used in logs, counters and status records.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Limit => "limit",
            FailureKind::Init => "init",
            FailureKind::Abandoned => "abandoned",
            FailureKind::Conflict => "conflict",
            FailureKind::Oversized => "oversized",
            FailureKind::Unavailable => "unavailable",
        }
    }
}

/// A failed event: what kind of failure and the message to keep for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for Failure {}

/// The result of handling one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin returned a disposition; `effects` are what it buffered meanwhile.
    Handled {
        disposition: Disposition,
        effects: Vec<Effect>,
    },
    /// Handling failed; nothing of this event is committed and it stays pending.
    Failed(Failure),
}

impl Outcome {
    /// What committing `event` with this outcome costs (see [`Effect::cost`]): its record
    /// (seven arguments, an ack or a status write), its effects, and for an outcome that may
    /// end in the dead-letter stream (a failure, a dead-letter answer) the copy of the entry
    /// there. The batch limit and the split of commits count this.
    pub fn cost(&self, event: &Event) -> usize {
        self.cost_for(event.size(), event.fields.len())
    }

    /// [`Outcome::cost`] for an event of `size` bytes in `fields` fields.
    pub fn cost_for(&self, size: usize, fields: usize) -> usize {
        let record = 7 * ARG_COST + COMMAND_COST;
        let copy = size + ARG_COST * 2 * fields;
        match self {
            Outcome::Handled {
                disposition: Disposition::DeadLetter(reason),
                ..
            } => record + reason.len() + copy,
            Outcome::Handled { effects, .. } => {
                record + effects.iter().map(Effect::cost).sum::<usize>()
            }
            Outcome::Failed(f) if f.kind == FailureKind::Oversized => record + f.message.len(),
            Outcome::Failed(f) => record + f.message.len() + copy,
        }
    }

    /// Shorthand for a failure.
    pub fn failed(kind: FailureKind, message: impl Into<String>) -> Self {
        Outcome::Failed(Failure {
            kind,
            message: message.into(),
        })
    }
}

/// Something that handles a batch of events: a WebAssembly plugin in production, a native
/// function in the benchmark's baseline. Called on a blocking thread; it may take its time.
pub trait Handler: Send + 'static {
    /// Handle the batch's events in order; returns one outcome per event handled: for all of
    /// them, or for a prefix (at least the first) when the outcomes would hold more than a
    /// batch may. The runner hands the rest over as a batch of its own.
    fn handle_batch(&mut self, events: &[Event]) -> Vec<Outcome>;

    /// True when handling reads state that earlier batches write: the runner then commits a
    /// batch before handling the next (no pipelining), so reads see every earlier write.
    fn reads_state(&self) -> bool {
        false
    }

    /// The version of the code handling events (a plugin's sha256), recorded with each
    /// event's status and dead letter.
    fn version(&self) -> &str {
        ""
    }

    /// What the last batch read of stored job state, for the commit to check (taken: the
    /// next batch starts a new read set).
    fn take_reads(&mut self) -> ReadSet {
        ReadSet::default()
    }
}
