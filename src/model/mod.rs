//! The shared floor: what every other part of sluice speaks, with no Redis, no wasmtime and
//! no file format in it. Imports nothing of ours.
//!
//! - [`event`]: events in, outcomes (dispositions and effects) out, the [`Handler`] and
//!   [`StateReader`] seams between the store and the runtime;
//! - [`policy`]: what becomes of an event after a delivery (retry, dead letter), and the one
//!   backoff every retry loop uses;
//! - [`spec`]: a job's definition, its defaults and checks, the one name rule, hash tags.

pub mod event;
pub mod policy;
pub mod spec;

pub use event::*;
pub use policy::{Decision, DeliveryPolicy, backoff};
pub use spec::{JobSpec, RetryBackoff, Source, Start, check_name, hash_tag};

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The first 12 hex digits of a sha256, as logs and listings show plugin versions.
pub fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}
