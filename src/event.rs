//! The data the Redis side and the WebAssembly side share: events in, outcomes out.
//!
//! Neither `store/` nor `runtime/` depends on the other; both depend on this module. An
//! [`Event`] is what a source produced; an [`Outcome`] is what handling it decided, with the
//! [`Effect`]s to commit in the same transaction as its acknowledgement.

use std::fmt;
use std::sync::Arc;

/// Event kind of an entry read from a Redis stream.
pub const KIND_STREAM_ENTRY: &str = "stream-entry";

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `XADD stream [MAXLEN ~ max_len] * fields…`
    Emit {
        stream: String,
        fields: Vec<Field>,
        /// Trim the stream to about this many entries.
        max_len: Option<u64>,
    },
}

impl Effect {
    /// The stream this effect appends to.
    pub fn stream(&self) -> &str {
        match self {
            Effect::Emit { stream, .. } => stream,
        }
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
}

impl FailureKind {
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
    /// Handle every event of the batch, in order; returns one outcome per event.
    fn handle_batch(&mut self, events: &[Event]) -> Vec<Outcome>;
}
