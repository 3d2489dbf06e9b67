//! `[redis]`: where Redis is and how to connect to it, the password put into the URL, and
//! the connection settings ([`RedisConfig::connection`]) checked field by field.

use std::path::PathBuf;

use serde::Deserialize;

use crate::model::connection::{Keepalive, Tls};
use crate::model::{AppendFsync, Connection};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://…` or `unix:///path`. Omitted: start
    /// an embedded `redis-server` in the data dir.
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the Redis password (a mounted secret, say), used with whichever URL
    /// applies: no password need appear in this file, the environment or the command line.
    /// Trailing newlines are ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How often the embedded Redis fsyncs its append-only file: `everysec` (default: a
    /// power cut loses at most about the last second), `always` (every write, much slower),
    /// `no` (when the OS flushes).
    #[serde(default)]
    pub embedded_appendfsync: AppendFsync,
    /// The ACL user to log in as (a username in the URL wins), with the password of the URL,
    /// `password_file` or `SLUICE_REDIS_PASSWORD`.
    #[serde(default)]
    pub username: Option<String>,
    /// For `rediss://`: a PEM file of the CA that signed the server's certificate (default:
    /// the system's trusted roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// For `rediss://` with mutual TLS: PEM files of this client's certificate and its key.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Do not verify the server's certificate at all — neither who signed it nor the name
    /// it holds (default false; only for a test setup: anyone can then pose as the server,
    /// and receive the password).
    #[serde(default)]
    pub tls_insecure: bool,
    /// One attempt to connect (TCP, TLS, login) gives up after this (default 2000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A reply is awaited this long (on top of a blocking read's block time) before the
    /// command fails and the connection is made again (default 10000).
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// TCP keepalive: the first probe after this many idle seconds (default 30; 0: off, the
    /// OS default), then every `keepalive_interval_s` (default 10); the connection is
    /// dropped after `keepalive_count` unanswered probes (default 3).
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u64,
    #[serde(default = "default_keepalive_interval_s")]
    pub keepalive_interval_s: u64,
    #[serde(default = "default_keepalive_count")]
    pub keepalive_count: u32,
    /// Reconnect backoff: the first delay (default 100 ms) and the longest (default 2000).
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The most connections a host opens to Redis (0, default: no bound). A host holds 2,
    /// plus up to 10 per job it runs; a job that would take it past this is not started here (and
    /// `/ready` says so).
    #[serde(default)]
    pub max_connections: usize,
    /// The protocol: `resp2` (default) or `resp3`.
    #[serde(default)]
    pub protocol: Protocol,
    /// `url` is a node of a Redis Cluster (default false; a `redis+cluster://h1:p1,h2:p2` URL
    /// says so by itself). Commands go to the node of their keys' slot, and hosts follow the
    /// cluster as it changes (failovers, resharding) without a restart.
    #[serde(default)]
    pub cluster: bool,
    /// More nodes of the cluster to start from besides `url`'s (`redis://host:port`, with
    /// `url`'s password and TLS settings): any one reachable is enough. Implies `cluster`.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
}

/// The Redis protocol version (`[redis] protocol`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

fn default_connect_timeout_ms() -> u64 {
    2000
}
fn default_response_timeout_ms() -> u64 {
    10_000
}
fn default_keepalive_s() -> u64 {
    30
}
fn default_keepalive_interval_s() -> u64 {
    10
}
fn default_keepalive_count() -> u32 {
    3
}
fn default_reconnect_min_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    2000
}

impl Default for RedisConfig {
    fn default() -> Self {
        toml::from_str("").expect("the defaults parse")
    }
}

impl RedisConfig {
    /// The settings for the embedded Redis's unix socket: these, without TLS.
    pub fn local_connection(&self) -> Connection {
        Connection {
            tls: Tls::default(),
            ..self.connection()
        }
    }

    /// Every connection setting but the URL.
    pub fn connection(&self) -> Connection {
        let ms = std::time::Duration::from_millis;
        let secs = std::time::Duration::from_secs;
        Connection {
            username: self.username.clone(),
            tls: Tls {
                ca_file: self.tls_ca_file.clone(),
                cert_file: self.tls_cert_file.clone(),
                key_file: self.tls_key_file.clone(),
                insecure: self.tls_insecure,
            },
            connect_timeout: ms(self.connect_timeout_ms),
            response_timeout: ms(self.response_timeout_ms),
            keepalive: (self.keepalive_s > 0).then(|| Keepalive {
                idle: secs(self.keepalive_s),
                interval: secs(self.keepalive_interval_s),
                count: self.keepalive_count,
            }),
            reconnect_min: ms(self.reconnect_min_ms),
            reconnect_max: ms(self.reconnect_max_ms),
            resp3: self.protocol == Protocol::Resp3,
            cluster: self.cluster,
            cluster_nodes: self.cluster_nodes.clone(),
        }
    }

    /// The URL to use: `over` (`--redis`, `SLUICE_REDIS_URL`), else `url`; with the password
    /// of `password_file` put in (None: no URL, start or find the embedded Redis).
    pub fn resolve(&self, over: Option<String>) -> anyhow::Result<Option<String>> {
        self.resolve_with(over, std::env::var("SLUICE_REDIS_PASSWORD").ok())
    }

    /// [`RedisConfig::resolve`], with the password of `SLUICE_REDIS_PASSWORD` given (a
    /// `password_file` wins over it).
    fn resolve_with(
        &self,
        over: Option<String>,
        env_password: Option<String>,
    ) -> anyhow::Result<Option<String>> {
        let Some(url) = over.or_else(|| self.url.clone()) else {
            return Ok(None);
        };
        let password = match &self.password_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("reading the Redis password file {}: {e}", path.display())
            })?,
            None => match env_password.filter(|p| !p.is_empty()) {
                Some(password) => password,
                None => return Ok(Some(url)),
            },
        };
        with_password(&url, password.trim_end_matches(['\r', '\n']))
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("the Redis URL has no host to log in to"))
    }
}

impl RedisConfig {
    /// Check the connection settings, naming the field at fault.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let field = |f: &str| format!("redis.{f}");
        let range = |f: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err((field(f), format!("must be {lo} to {hi}, got {v}")))
            } else {
                Ok(())
            }
        };
        range("connect_timeout_ms", self.connect_timeout_ms, 10, 300_000)?;
        range(
            "response_timeout_ms",
            self.response_timeout_ms,
            100,
            3_600_000,
        )?;
        if self.keepalive_s > 0 {
            range("keepalive_s", self.keepalive_s, 1, 7200)?;
            range("keepalive_interval_s", self.keepalive_interval_s, 1, 3600)?;
            range("keepalive_count", self.keepalive_count.into(), 1, 100)?;
        }
        range("reconnect_max_ms", self.reconnect_max_ms, 10, 600_000)?;
        if self.max_connections > 0 {
            // Room for the host's own 2 and one job's 10 (`host::reconcile::JOB_CONNECTIONS`).
            range("max_connections", self.max_connections as u64, 12, 100_000)?;
        }
        range(
            "reconnect_min_ms",
            self.reconnect_min_ms,
            1,
            self.reconnect_max_ms,
        )?;
        if self.username.as_deref() == Some("") {
            return Err((field("username"), "must not be empty".into()));
        }
        let files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        for (name, path) in files {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err((field(name), format!("no such file: {}", path.display())));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err((
                field("tls_cert_file"),
                "a client certificate needs both tls_cert_file and tls_key_file".into(),
            ));
        }
        let tls_set = files.iter().any(|(_, p)| p.is_some()) || self.tls_insecure;
        let cluster = self.cluster || !self.cluster_nodes.is_empty();
        if cluster && self.url.is_none() {
            return Err((
                field("cluster"),
                "a Redis Cluster needs `url` (a node of it): the embedded Redis is one server"
                    .into(),
            ));
        }
        for (n, node) in self.cluster_nodes.iter().enumerate() {
            let tls_node = node.starts_with("rediss://");
            if !(node.starts_with("redis://") || tls_node)
                || self
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("rediss") != tls_node)
            {
                return Err((
                    field("cluster_nodes"),
                    format!(
                        "node {} is not redis://host:port (rediss:// when `url` is)",
                        n + 1
                    ),
                ));
            }
        }
        if tls_set
            && let Some(url) = &self.url
            && !url.starts_with("rediss")
        {
            return Err((
                field("url"),
                "the tls_* settings need a rediss:// URL (TLS)".into(),
            ));
        }
        Ok(())
    }
}

/// `url` with `password` as its password (percent-encoded), replacing any it had.
fn with_password(url: &str, password: &str) -> Option<String> {
    let encoded =
        percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
    let (scheme, rest) = url.split_once("://")?;
    if scheme == "unix" || scheme == "redis+unix" {
        let sep = if rest.contains('?') { '&' } else { '?' };
        return Some(format!("{url}{sep}pass={encoded}"));
    }
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().unwrap_or_default(), host),
        None => ("", authority),
    };
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{user}:{encoded}@{host}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_goes_into_the_url_encoded() {
        assert_eq!(
            with_password("redis://h:6380/2", "p@ss w").as_deref(),
            Some("redis://:p%40ss%20w@h:6380/2")
        );
        assert_eq!(
            with_password("rediss://app:old@h", "new").as_deref(),
            Some("rediss://app:new@h")
        );
        assert_eq!(
            with_password("unix:///run/r.sock", "x").as_deref(),
            Some("unix:///run/r.sock?pass=x")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let r = RedisConfig {
            url: Some("redis://h".into()),
            password_file: Some(file),
            ..RedisConfig::default()
        };
        assert_eq!(
            r.resolve(None).unwrap().as_deref(),
            Some("redis://:s3cret@h")
        );
        assert_eq!(
            r.resolve(Some("redis://o:1".into())).unwrap().as_deref(),
            Some("redis://:s3cret@o:1")
        );
        // SLUICE_REDIS_PASSWORD applies when no file is configured; the file wins over it.
        let plain = RedisConfig {
            url: Some("redis://h".into()),
            ..RedisConfig::default()
        };
        assert_eq!(
            plain
                .resolve_with(None, Some("env".into()))
                .unwrap()
                .as_deref(),
            Some("redis://:env@h")
        );
        assert_eq!(
            plain.resolve_with(None, None).unwrap().as_deref(),
            Some("redis://h")
        );
        assert_eq!(
            r.resolve_with(None, Some("env".into())).unwrap().as_deref(),
            Some("redis://:s3cret@h")
        );
    }
}
