//! Everything Redis: connections, key builders, the job's stream and its commit script,
//! job counters, and the embedded `redis-server`. Knows nothing about wasmtime.
//!
//! Keys (all under the prefix, default `sluice`; see [`keys`] for the builders):
//!
//! | key | type | owner | what |
//! | --- | --- | --- | --- |
//! | `<prefix>:jobs` | hash | [`stream`] | job name → source stream key |
//! | `<prefix>:{<tag>}:job:<job>` | hash | [`stream`], [`jobs`] | spec (`source`, `plugin`, `group`, `started_at`) and counters (`received`, `acked`, `skipped`, `retried`, `failed`, `dead`) |
//! | `<prefix>:{<tag>}:job:<job>:retry` | sorted set | [`stream`] | entry id → due time of its next delivery |
//! | `<prefix>:{<tag>}:job:<job>:dlq` | stream | [`stream`], [`dlq`] | dead letters |
//! | `<prefix>:{<tag>}:job:<job>:event:<id>` | string (TTL) | [`stream`], [`events`] | status record of one entry |
//! | channel `<prefix>:events:<job>` | pub/sub | [`stream`] | `{"done":[ids],"dead":[ids]}` per commit |
//! | the source stream | stream | producers | read through consumer group `<prefix>:<job>` |
//! | streams plugins emit to | stream | [`stream`] | written only by the commit script |
//! | `<prefix>:{<tag>}:job:<job>:lifecycle` (+ `:retry`, `:counters`, `:event:<id>`) | stream, … | [`lifecycle`], [`stream`] | the job's lifecycle events, read through its group |
//! | `<prefix>:{ctl}:plugins`, `…:plugin:<name>:versions`, `…:blob:<sha256>`, `…:jobs`, `…:runs`, `…:refused` | hash, list, string | [`control`] | the control registry (see [`keys`]) |
//! | channel `<prefix>:control` | pub/sub | [`control`] | a notice after every registry change |

pub mod control;
pub mod dlq;
pub mod embedded;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod lifecycle;
pub mod state;
pub mod stream;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use keys::Keys;

/// A Redis failure, with the command's error kept for logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Parse(#[from] redis::ParsingError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("{0}")]
    GroupGone(String),
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
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A reconnecting connection to `url`. `response_timeout` must exceed the longest blocking
/// command sent on it (a job's `XREADGROUP … BLOCK`).
pub async fn connect(
    url: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(2));
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// Hide the password of a Redis URL, for logs.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://u:pw@h"), "redis://u:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
