//! The shared floor: what every other part of sluice speaks, with no Redis, no wasmtime and
//! no file format in it. Imports nothing of ours.
//!
//! - [`event`]: events in, outcomes (dispositions and effects) out, the [`Handler`] and
//!   [`StateReader`] seams between the store and the runtime;
//! - [`policy`]: what becomes of an event after a delivery (retry, dead letter), and the one
//!   backoff every retry loop uses;
//! - [`spec`]: a job's definition, its defaults and checks, the one name rule, hash tags.

pub mod connection;
pub mod event;
pub mod flow;
pub mod policy;
pub mod spec;

pub use connection::Connection;
pub use event::*;
pub use flow::{Aggregate, BreakerOptions, FlowOptions, Rate};
pub use policy::{Decision, DeliveryPolicy, backoff};
pub use spec::{
    AppendFsync, FileType, JobSpec, ListEnd, Partitions, Retention, RetryBackoff, ScanOptions,
    Schedule, Source, Start, check_name, hash_tag, scan_regex,
};

use std::time::{SystemTime, UNIX_EPOCH};

/// Is `id` a stream entry id (`<ms>-<seq>`, or `<ms>`)? The message says what one looks like.
pub fn check_entry_id(id: &str) -> Result<(), String> {
    // Each part a number Redis can hold (u64).
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok();
    let ok = match id.split_once('-') {
        Some((ms, seq)) => digits(ms) && digits(seq),
        None => digits(id),
    };
    match ok {
        true => Ok(()),
        false => Err(format!(
            "not a stream entry id (like 1700000000000-0): {id:?}"
        )),
    }
}

/// Hex sha256 of some bytes: a plugin version's identity, and a job definition's digest.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The first 12 hex digits of a sha256, as logs and listings show plugin versions (the first
/// 12 characters of whatever it is given: never a panic on a bad value).
pub fn short(sha256: &str) -> &str {
    match sha256.char_indices().nth(12) {
        Some((end, _)) => &sha256[..end],
        None => sha256,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_versions_cut_on_characters() {
        assert_eq!(super::short("0123456789abcdef"), "0123456789ab");
        assert_eq!(super::short("ééééééééééééé"), "éééééééééééé");
        assert_eq!(super::short("abc"), "abc");
    }
}
