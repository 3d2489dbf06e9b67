//! Everything Redis: connections, the key table ([`keys`]), the Lua scripts ([`scripts`]), a
//! job's stream (reading, committing) and consumer group, the control registry, job state,
//! lifecycle events, dead letters, status records, and the embedded `redis-server`. Knows
//! nothing about wasmtime, the config file, the host or the CLI: it speaks
//! [`model`](crate::model) values.
//!
//! Every key and channel is listed once, in [`keys`].

pub mod aggregate;
pub mod channel;
pub mod connect;
pub mod control;
pub mod dlq;
pub mod embedded;
pub mod events;
pub mod forward;
pub mod groups;
pub mod hosts;
pub mod ingest;
pub mod jobs;
pub mod keys;
pub mod lifecycle;
pub mod list;
pub mod listing;
pub mod retention;
pub mod scan;
pub mod scripts;
pub mod state;
pub mod stream;
pub mod timer;

pub use connect::{Conn, Endpoint, redact_url};
pub use keys::Keys;

/// `text` without the repeats redis-rs puts in some errors (`a: b: a: b` → `a: b`).
fn unrepeated(text: &str) -> String {
    let parts: Vec<&str> = text.split(": ").collect();
    let n = parts.len();
    let period = (1..n)
        .find(|&k| n.is_multiple_of(k) && (k..n).all(|i| parts[i] == parts[i % k]))
        .unwrap_or(n);
    parts[..period].join(": ")
}

/// A Redis failure, with the command's error kept for logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not a `#[source]`: redis-rs's text already says all its causes, and a chain would
    /// repeat them.
    #[error("redis: {}", unrepeated(&.0.to_string()))]
    Redis(redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Parse(#[from] redis::ParsingError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("{0}")]
    GroupGone(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        let e = StoreError::Redis(e);
        if e.is_connection() {
            crate::metrics::redis_connection_error();
        }
        e
    }
}

impl StoreError {
    /// True when the failure is about the connection (Redis away, timed out), not the command.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
            }
            StoreError::Parse(_) => false,
            StoreError::Timeout => true,
            StoreError::GroupGone(_) => false,
        }
    }

    /// True when Redis is still loading its data set (it answers, but not yet).
    pub fn is_loading(&self) -> bool {
        matches!(self, StoreError::Redis(e) if e.code() == Some("LOADING"))
    }

    /// True when the failure is Redis's trouble, not the command's: it is away, loading, busy
    /// with a script, out of memory, read-only (a replica, or failing over), unable to
    /// persist, or denying this user. Waiting (and an operator) can fix it; the events of the
    /// command did nothing wrong and must not be charged for it.
    pub fn is_redis_trouble(&self) -> bool {
        const TROUBLE: [&str; 9] = [
            "LOADING",
            "BUSY",
            "OOM",
            "READONLY",
            "MISCONF",
            "NOPERM",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MASTERDOWN",
        ];
        self.is_connection()
            || matches!(self, StoreError::Redis(e) if e.code().is_some_and(|c| TROUBLE.contains(&c)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_error_text_is_said_once() {
        let u = super::unrepeated;
        assert_eq!(u("bad cert: X: bad cert: X: bad cert: X"), "bad cert: X");
        assert_eq!(u("auth failed - A: auth failed - A"), "auth failed - A");
        assert_eq!(u("a: b: c"), "a: b: c");
        assert_eq!(u("plain"), "plain");
    }
}
