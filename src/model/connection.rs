//! How sluice connects to Redis, beyond its URL: the `[redis]` settings every connection of a
//! process shares (the store builds them; the config file fills them in).

use std::path::PathBuf;
use std::time::Duration;

/// Every setting of a Redis connection but the URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// The ACL user (a username in the URL wins).
    pub username: Option<String>,
    /// TLS files, for a `rediss://` URL.
    pub tls: Tls,
    /// Giving up on one attempt to connect (TCP, TLS and the handshake).
    pub connect_timeout: Duration,
    /// Giving up on a reply, on top of the block time of a blocking read; a command that
    /// times out fails, and the connection is made again.
    pub response_timeout: Duration,
    /// TCP keepalive probes on idle connections (None: the OS default, usually off).
    pub keepalive: Option<Keepalive>,
    /// Reconnect backoff: the first delay, and the longest.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// RESP3 instead of RESP2.
    pub resp3: bool,
    /// The URL is a node of a Redis Cluster (a `redis+cluster://` URL says so by itself).
    pub cluster: bool,
    /// More nodes of the cluster to start from, besides the URL's (implies `cluster`).
    pub cluster_nodes: Vec<String>,
}

impl Default for Connection {
    fn default() -> Self {
        Connection {
            username: None,
            tls: Tls::default(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(10),
            keepalive: Some(Keepalive::default()),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            resp3: false,
            cluster: false,
            cluster_nodes: Vec::new(),
        }
    }
}

/// TLS of a `rediss://` connection. Without a CA file the system's roots are trusted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tls {
    /// PEM file of the CA that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM files of this client's certificate and key (mutual TLS; both or neither).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Do not verify the server's certificate at all (its signer or its name).
    pub insecure: bool,
}

impl Tls {
    /// Whether any TLS setting was given.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.insecure
    }
}

/// TCP keepalive: the first probe after `idle` without traffic, then every `interval`; the
/// connection is dropped after `count` unanswered probes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
        }
    }
}
