//! Everything Redis: connections, the key table ([`keys`]), the Lua scripts ([`scripts`]), a
//! job's stream (reading, committing) and consumer group, the control registry, job state,
//! lifecycle events, dead letters, status records, and the embedded `redis-server`. Knows
//! nothing about wasmtime, the config file, the host or the CLI: it speaks
//! [`model`](crate::model) values.
//!
//! Every key and channel is listed once, in [`keys`].

pub mod control;
pub mod dlq;
pub mod embedded;
pub mod events;
pub mod groups;
pub mod jobs;
pub mod keys;
pub mod lifecycle;
pub mod scripts;
pub mod state;
pub mod stream;

use std::time::Duration;

use anyhow::{Context as _, bail};

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

/// A reconnecting connection to `url`. `response_timeout` must exceed the longest blocking
/// command sent on it (a job's `XREADGROUP … BLOCK`).
pub async fn connect(
    url: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(2));
    Ok(ConnectionManager::new_with_config(redis::Client::open(url)?, config).await?)
}

/// A connection for one command of the CLI: the same kind as [`connect`]'s, but a person is
/// waiting, so an unreachable Redis or a wrong password fails within a second, not retried.
pub async fn connect_once(url: &str) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(0);
    Ok(ConnectionManager::new_with_config(redis::Client::open(url)?, config).await?)
}

/// Return once Redis at `url` answers; while it does not, log and try again with backoff.
/// Fails at once on errors that waiting cannot fix (a bad URL, wrong credentials).
pub async fn wait_until_up(url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)
        .with_context(|| format!("invalid Redis URL {}", redact_url(url)))?;
    let mut delays = crate::model::backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut warned = false;
    loop {
        // One attempt at a time (no client-side retries), so that the wait is logged at once.
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            // The default sections: `server` (the version) and `memory` (eviction).
            redis::cmd("INFO").query_async::<String>(&mut conn).await
        })
        .await;
        let error = match attempt {
            Ok(Ok(info)) => {
                if warned {
                    tracing::info!(redis = %redact_url(url), "redis is up");
                }
                return check_server(&info);
            }
            Ok(Err(e)) => StoreError::from(e),
            Err(_) => StoreError::Timeout,
        };
        if !error.is_connection() && !error.is_loading() {
            return Err(anyhow::Error::from(error))
                .with_context(|| format!("connecting to Redis at {}", redact_url(url)));
        }
        if !warned {
            tracing::warn!(redis = %redact_url(url), "waiting for redis: {error}");
            warned = true;
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
    }
}

/// What sluice needs of the server, from its `INFO`:
/// - Redis 7.0 or later: `XPENDING … IDLE` and exclusive ranges (6.2), XCLAIM dropping entries
///   deleted from the stream from the pending list (7.0);
/// - no eviction of arbitrary keys: with `maxmemory` set, an `allkeys-*` policy would silently
///   evict streams, consumer groups and the registry — events lost without a trace. (The
///   `volatile-*` policies evict only keys with a TTL, which sluice gives only to what may
///   expire: status records, and kv keys a plugin set with one.)
fn check_server(info: &str) -> anyhow::Result<()> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("")
    };
    let version = field("redis_version");
    let policy = field("maxmemory_policy");
    if field("maxmemory") != "0" && policy.starts_with("allkeys-") {
        bail!(
            "this Redis evicts any key when it is full (maxmemory-policy {policy}), streams and \
             consumer groups included, which would lose events without a trace; set \
             maxmemory-policy to noeviction (or a volatile-* policy), or maxmemory to 0"
        );
    }
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 7 {
        bail!("sluice needs Redis 7.0 or later; this server is {version:?}");
    }
    Ok(())
}

/// Hide the password of a Redis URL, for logs.
pub fn redact_url(url: &str) -> String {
    // A unix socket URL carries its password as `?pass=…` (or `&pass=…`).
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("pass" | "password", _)) => {
                        format!("{}=***", kv.split('=').next().unwrap_or_default())
                    }
                    _ => kv.to_string(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url.to_string(),
    };
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.clone(),
        },
        None => url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://u:pw@h"), "redis://u:***@h");
        assert_eq!(
            redact_url("unix:///r.sock?db=1&pass=pw"),
            "unix:///r.sock?db=1&pass=***"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn refuses_old_servers_and_eviction_of_any_key() {
        let info = |v: &str, max: &str, policy: &str| {
            format!(
                "# Server\r\nredis_version:{v}\r\n# Memory\r\nmaxmemory:{max}\r\nmaxmemory_policy:{policy}\r\n"
            )
        };
        assert!(check_server(&info("7.0.15", "0", "noeviction")).is_ok());
        assert!(check_server(&info("7.2.4", "0", "allkeys-lru")).is_ok());
        assert!(check_server(&info("7.2.4", "1000000", "volatile-lru")).is_ok());
        let evicting = check_server(&info("7.2.4", "1000000", "allkeys-lru")).unwrap_err();
        assert!(evicting.to_string().contains("allkeys-lru"), "{evicting}");
        assert!(check_server(&info("6.2.0", "0", "noeviction")).is_err());
    }
}
