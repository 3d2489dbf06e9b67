//! Where Redis is and how to reach it: an [`Endpoint`] is the URL (password included) with
//! the `[redis]` connection settings — TLS files, ACL user, timeouts, keepalive, reconnect
//! backoff, protocol — applied to every connection the process makes from it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{ConnectionInfo, IntoConnectionInfo as _, ProtocolVersion};

use super::StoreError;
use crate::model::Connection;

/// A Redis server and how to connect to it. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    client: redis::Client,
    /// The URL without its password, for logs and errors.
    redacted: String,
    settings: Connection,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl Endpoint {
    /// `url` with `settings`: the TLS files are read here, so a missing or unreadable file
    /// fails now, naming it. Nothing connects yet.
    pub fn new(url: &str, settings: &Connection) -> anyhow::Result<Endpoint> {
        let redacted = redact_url(url);
        let invalid = || format!("invalid Redis URL {redacted}");
        let tls_url = url.starts_with("rediss://");
        if tls_url && (settings.tls.insecure || url.ends_with("#insecure")) {
            tracing::warn!(redis = %redacted, "TLS without verifying the server's certificate (tls_insecure): anyone can pose as this server");
        }
        let url = if settings.tls.insecure && tls_url && !url.ends_with("#insecure") {
            format!("{url}#insecure")
        } else {
            url.to_string()
        };
        let mut info: ConnectionInfo = url.as_str().into_connection_info().with_context(invalid)?;
        let mut redis = info.redis_settings().clone();
        if let Some(user) = &settings.username
            && redis.username().is_none()
        {
            redis = redis.set_username(user);
        }
        if settings.resp3 {
            redis = redis.set_protocol(ProtocolVersion::RESP3);
        }
        info = info.set_redis_settings(redis);
        if let Some(k) = settings.keepalive {
            let keepalive = TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count);
            info = info.set_tcp_settings(TcpSettings::default().set_keepalive(keepalive));
        }
        let tls = &settings.tls;
        let client = if tls_url {
            let read = |what: &str, path: &std::path::Path| {
                std::fs::read(path)
                    .with_context(|| format!("reading the Redis TLS {what} {}", path.display()))
            };
            let root_cert = tls
                .ca_file
                .as_deref()
                .map(|p| read("CA file", p))
                .transpose()?;
            if let (Some(pem), Some(path)) = (&root_cert, &tls.ca_file) {
                use rustls::pki_types::{CertificateDer, pem::PemObject as _};
                let certs = CertificateDer::pem_slice_iter(pem)
                    .filter(Result::is_ok)
                    .count();
                if certs == 0 {
                    bail!(
                        "the Redis TLS CA file {} holds no PEM certificate",
                        path.display()
                    );
                }
            }
            let client_tls = match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read("certificate file", cert)?,
                    client_key: read("key file", key)?,
                }),
                (None, None) => None,
                _ => bail!(
                    "a Redis TLS client certificate needs both tls_cert_file and tls_key_file"
                ),
            };
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .with_context(|| format!("setting up TLS for {redacted}"))?
        } else {
            if tls.is_set() {
                bail!("[redis] tls_* settings are given, but the URL {redacted} is not rediss://");
            }
            redis::Client::open(info).with_context(invalid)?
        };
        Ok(Endpoint {
            client,
            redacted,
            settings: settings.clone(),
        })
    }

    /// A server reached with the default settings (the embedded Redis's socket).
    pub fn local(url: &str) -> anyhow::Result<Endpoint> {
        Endpoint::new(url, &Connection::default())
    }

    /// The redis-rs client, for connections of a kind of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The URL without its password.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        let s = &self.settings;
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(s.response_timeout))
            .set_connection_timeout(Some(s.connect_timeout))
            .set_min_delay(s.reconnect_min)
            .set_max_delay(s.reconnect_max)
    }

    /// A reconnecting connection whose blocking commands block up to `block` (a job's
    /// `XREADGROUP … BLOCK`): replies are awaited `block` + `response_timeout`.
    pub async fn connect(&self, block: Duration) -> Result<ConnectionManager, StoreError> {
        let config = self
            .manager_config()
            .set_response_timeout(Some(block + self.settings.response_timeout));
        Ok(ConnectionManager::new_with_config(self.client.clone(), config).await?)
    }

    /// A connection for one command of the CLI: a person is waiting, so an unreachable Redis
    /// or a wrong password fails at once, not retried.
    pub async fn connect_once(&self) -> Result<ConnectionManager, StoreError> {
        let config = self.manager_config().set_number_of_retries(0);
        Ok(ConnectionManager::new_with_config(self.client.clone(), config).await?)
    }

    /// Return once Redis answers; while it does not, log and try again with backoff. Fails
    /// at once on errors that waiting cannot fix (wrong credentials, a certificate that does
    /// not verify, a server sluice cannot use).
    pub async fn wait_until_up(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        let mut delays =
            crate::model::backoff(s.reconnect_min, s.reconnect_max.max(s.reconnect_min));
        let mut warned = false;
        loop {
            // One attempt at a time (no client-side retries), so that the wait is logged at once.
            let attempt = tokio::time::timeout(s.connect_timeout + s.response_timeout, async {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(s.connect_timeout))
                    .set_response_timeout(Some(s.response_timeout));
                let mut conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                // The default sections: `server` (the version) and `memory` (eviction).
                redis::cmd("INFO").query_async::<String>(&mut conn).await
            })
            .await;
            let error = match attempt {
                Ok(Ok(info)) => {
                    if warned {
                        tracing::info!(redis = %self, "redis is up");
                    }
                    return check_server(&info)
                        .with_context(|| format!("connecting to Redis at {self}"));
                }
                Ok(Err(e)) => StoreError::from(e),
                Err(_) => StoreError::Timeout,
            };
            if (!error.is_connection() || is_tls_failure(&error)) && !error.is_loading() {
                return Err(anyhow::Error::from(error))
                    .with_context(|| format!("connecting to Redis at {self}"));
            }
            if !warned {
                tracing::warn!(redis = %self, "waiting for redis: {error}");
                warned = true;
            }
            tokio::time::sleep(delays.next().unwrap_or(s.reconnect_max)).await;
        }
    }
}

/// A TLS handshake that failed on a certificate: waiting will not fix it.
fn is_tls_failure(e: &StoreError) -> bool {
    let text = format!("{e:?}");
    text.contains("InvalidCertificate") || text.contains("certificate")
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
