//! What a plugin instance may use: [`Limits`] per job (deadline, memory, effect sizes, the
//! streams it may write), and the [`MemoryLimiter`] that enforces the memory cap.

use std::time::Duration;

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use crate::model::spec::defaults;

/// What a plugin instance may use, per job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one `handle`, whatever the guest does (computes, sleeps, polls,
    /// waits for a state read).
    pub deadline: Duration,
    /// Wall-clock budget of making an instance: instantiating it and running `init`.
    pub init_timeout: Duration,
    /// Most linear memory an instance may hold, all its memories together.
    pub memory_bytes: usize,
    /// Most effects one event may buffer.
    pub max_effects: usize,
    /// Longest stream or key name a guest may name.
    pub max_name_bytes: usize,
    /// Largest total size of the fields of one `emit`.
    pub max_payload_bytes: usize,
    /// Largest cost of all the effects of one event, in bytes, each argument of the commit
    /// counted as its bytes plus [`ARG_COST`](crate::model::ARG_COST).
    pub max_event_bytes: usize,
    /// Largest cost of the effects one batch holds in the host: past it, the batch is cut
    /// after the event that crossed it and the rest is handled as a batch of its own.
    pub max_batch_bytes: usize,
    /// Longest log message kept (longer ones are cut).
    pub max_log_bytes: usize,
    /// Most fields in one emitted entry.
    pub max_fields: usize,
    /// Longest string a guest hands the host that the host keeps: an error message, a
    /// dead-letter reason, an `init` refusal (longer ones are cut, with a marker saying so).
    pub max_guest_string_bytes: usize,
    /// Most distinct stored values (kv keys, counters, window entries and counts) one batch
    /// may read: every one is kept for the batch and checked by its commit.
    pub max_batch_reads: usize,
    /// Largest total size of those values (names and bytes) in one batch.
    pub max_batch_read_bytes: usize,
    /// Streams the plugin may emit to: exact names, or prefixes ending in `*`. Empty: any
    /// stream except sluice's own keys (those under the key prefix).
    pub allowed_streams: Vec<String>,
    /// Queues the plugin may enqueue to: exact names, or prefixes ending in `*`. Empty: any.
    pub allowed_queues: Vec<String>,
    /// sluice's key prefix followed by `:`; never writable by a plugin unless allowed explicitly.
    pub reserved_prefix: String,
    /// The stream the job reads: never writable by its plugin (the job would read what it
    /// emits, without end). Empty: none.
    pub own_source: String,
}

/// `s` cut to at most `max` bytes (on a character boundary) with a marker saying how long it
/// was: what a guest says goes into dead letters, status records and logs, never unbounded.
pub fn clamp(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let len = s.len();
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(&format!("… (cut: {len} bytes)"));
    // Give the rest back: a 60 MiB message cut to 4 KiB must not keep 60 MiB until the batch
    // commits.
    s.shrink_to_fit();
    s
}

/// Does `name` match one of `patterns` (exact names, or prefixes ending in `*`)?
fn matches(patterns: &[String], name: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| crate::model::spec::name_matches(pattern, name))
}

impl Limits {
    /// May the plugin append to `stream`?
    pub fn stream_allowed(&self, stream: &str) -> bool {
        if stream == self.own_source {
            return false;
        }
        if self.allowed_streams.is_empty() {
            return self.reserved_prefix.is_empty() || !stream.starts_with(&self.reserved_prefix);
        }
        matches(&self.allowed_streams, stream)
    }

    /// May the plugin enqueue to `queue`?
    pub fn queue_allowed(&self, queue: &str) -> bool {
        self.allowed_queues.is_empty() || matches(&self.allowed_queues, queue)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(defaults::DEADLINE_MS),
            init_timeout: Duration::from_millis(defaults::INIT_TIMEOUT_MS),
            memory_bytes: (defaults::MEMORY_MB as usize) << 20,
            max_effects: 1000,
            max_name_bytes: 512,
            max_payload_bytes: 1 << 20,
            max_event_bytes: 2 << 20,
            max_batch_bytes: 32 << 20,
            max_log_bytes: 8 << 10,
            max_fields: 1000,
            max_guest_string_bytes: 4096,
            max_batch_reads: 10_000,
            max_batch_read_bytes: 16 << 20,
            allowed_streams: Vec::new(),
            allowed_queues: Vec::new(),
            reserved_prefix: "sluice:".into(),
            own_source: String::new(),
        }
    }
}

/// The memory cap of one instance, over all its linear memories together (a component may
/// have many: a cap per memory would let 16 memories take 16 times the cap), plus a note of
/// whether it was hit, so a failure can be reported as "memory cap exceeded" rather than as
/// an anonymous trap. Tables are bounded by wasmtime's [`StoreLimits`].
pub struct MemoryLimiter {
    limits: StoreLimits,
    /// The cap, for messages.
    pub(crate) cap: usize,
    /// Set when a growth past the cap was refused.
    pub(crate) exceeded: bool,
    /// Bytes of linear memory the instance holds now, all memories together.
    pub(crate) total: usize,
    /// Largest `total` reached.
    pub(crate) peak: usize,
}

impl MemoryLimiter {
    pub fn new(cap: usize) -> Self {
        MemoryLimiter {
            limits: StoreLimitsBuilder::new().trap_on_grow_failure(true).build(),
            cap,
            exceeded: false,
            total: 0,
            peak: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = desired.saturating_sub(current);
        let total = self.total.saturating_add(grown);
        if total > self.cap || maximum.is_some_and(|max| desired > max) {
            self.exceeded = total > self.cap;
            return Err(wasmtime::Error::msg(format!(
                "memory: growing to {desired} bytes would take the instance to {total} bytes, \
                 over its cap of {}",
                self.cap
            )));
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

// `sluice:plugin/types` holds only types; its (empty) host trait still needs an impl.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_any_stream_but_sluices_own_keys() {
        let l = Limits::default();
        assert!(l.stream_allowed("events:out"));
        assert!(!l.stream_allowed("sluice:{events}:job:x:dlq"));
        let l = Limits {
            allowed_streams: vec!["a".into(), "b:*".into()],
            ..Limits::default()
        };
        assert!(l.stream_allowed("a") && l.stream_allowed("b:1"));
        assert!(!l.stream_allowed("ab") && !l.stream_allowed("c"));
        // Never the job's own source, whatever is allowed.
        let l = Limits {
            own_source: "events".into(),
            ..Limits::default()
        };
        assert!(!l.stream_allowed("events") && l.stream_allowed("events:out"));
    }

    #[test]
    fn limiter_reports_the_cap_was_hit() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 1 << 19, None).unwrap());
        assert!(l.memory_growing(1 << 19, 2 << 20, None).is_err());
        assert!(l.exceeded);
        assert_eq!(l.peak, 1 << 19);
    }

    #[test]
    fn the_cap_holds_for_all_memories_together() {
        let mut l = MemoryLimiter::new(1 << 20);
        // Two memories of half the cap each fit; a third byte page does not.
        assert!(l.memory_growing(0, 1 << 19, None).unwrap());
        assert!(l.memory_growing(0, 1 << 19, None).unwrap());
        assert!(l.memory_growing(0, 65536, None).is_err());
        assert!(l.exceeded);
        assert_eq!(l.total, 1 << 20);
    }

    #[test]
    fn guest_strings_are_cut_with_a_marker() {
        assert_eq!(clamp("short".into(), 8), "short");
        assert_eq!(clamp("héllo wörld".into(), 2), "h… (cut: 13 bytes)");
        let cut = clamp("x".repeat(1 << 20), 4096);
        assert!(cut.capacity() < 8192, "kept {} bytes", cut.capacity());
    }
}
