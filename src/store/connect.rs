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

/// A Redis server, or a Redis Cluster, and how to connect to it. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    kind: Kind,
    /// The URL without its password, for logs and errors.
    redacted: String,
    settings: Connection,
}

/// One server, or a cluster.
// One per process, cloned into a few tasks: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Kind {
    Single(redis::Client),
    /// The cluster's client (commands routed by slot), and a client of each seed node: for
    /// pub/sub, which Redis Cluster broadcasts to every node, so that one node's subscription
    /// hears every message (the next seed is tried when one is down).
    Cluster {
        client: redis::cluster::ClusterClient,
        nodes: Vec<redis::Client>,
    },
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

/// The seed URLs of a cluster URL: `redis+cluster://[user:pw@]h1:p1,h2:p2` (or
/// `rediss+cluster://`) → `redis://[user:pw@]h1:p1`, `redis://[user:pw@]h2:p2`; None for a
/// plain URL.
fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.strip_suffix("+cluster")?;
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), rest),
    };
    // Anything after the host list (a path, a query, `#insecure`) goes with every seed.
    let end = hosts.find(['/', '?', '#']).unwrap_or(hosts.len());
    let (hosts, tail) = hosts.split_at(end);
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
            .collect(),
    )
}

impl Endpoint {
    /// `url` with `settings`: the TLS files are read here, so a missing or unreadable file
    /// fails now, naming it. Nothing connects yet. A cluster is a `redis+cluster://` URL
    /// (seeds separated by commas), or `settings.cluster` with `url` and
    /// `settings.cluster_nodes` as seeds.
    pub fn new(url: &str, settings: &Connection) -> anyhow::Result<Endpoint> {
        let redacted = redact_url(url);
        let seeds = match cluster_seeds(url) {
            Some(seeds) => Some(seeds),
            None if settings.cluster || !settings.cluster_nodes.is_empty() => Some(
                std::iter::once(url.to_string())
                    .chain(settings.cluster_nodes.iter().cloned())
                    .collect(),
            ),
            None => None,
        };
        let kind = match seeds {
            None => Kind::Single(node(url, settings)?.1),
            Some(seeds) => {
                if seeds.is_empty() {
                    bail!("the cluster URL {redacted} names no node");
                }
                if seeds[0].starts_with("unix://") {
                    bail!("a Redis Cluster is reached over TCP, not a unix socket ({redacted})");
                }
                let mut infos = Vec::new();
                let mut nodes = Vec::new();
                for seed in &seeds {
                    let (info, client) = node(seed, settings)?;
                    infos.push(info);
                    nodes.push(client);
                }
                Kind::Cluster {
                    client: cluster_client(infos, settings).with_context(|| {
                        format!("setting up the Redis Cluster client for {redacted}")
                    })?,
                    nodes,
                }
            }
        };
        Ok(Endpoint {
            kind,
            redacted,
            settings: settings.clone(),
        })
    }

    /// A server reached with the default settings (the embedded Redis's socket).
    pub fn local(url: &str) -> anyhow::Result<Endpoint> {
        Endpoint::new(url, &Connection::default())
    }

    /// True for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// A client of one server, for connections of a kind of their own (pub/sub): the server,
    /// or a cluster's seeds in turn (`attempt` picks which; a cluster broadcasts pub/sub
    /// messages to every node).
    pub fn client(&self, attempt: usize) -> &redis::Client {
        match &self.kind {
            Kind::Single(client) => client,
            Kind::Cluster { nodes, .. } => &nodes[attempt % nodes.len()],
        }
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
    /// `XREADGROUP … BLOCK`): replies are awaited `block` + `response_timeout`. To a cluster:
    /// commands routed to the node of their keys' slot, redirections followed.
    pub async fn connect(&self, block: Duration) -> Result<Conn, StoreError> {
        let response = block + self.settings.response_timeout;
        match &self.kind {
            Kind::Single(client) => {
                let config = self.manager_config().set_response_timeout(Some(response));
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client.clone(), config).await?,
                ))
            }
            Kind::Cluster { client, .. } => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(self.settings.connect_timeout)
                    .set_response_timeout(response);
                Ok(Conn::Cluster(
                    client.get_async_connection_with_config(config).await?,
                ))
            }
        }
    }

    /// A connection for one command of the CLI: a person is waiting, so an unreachable Redis
    /// or a wrong password fails at once, not retried.
    pub async fn connect_once(&self) -> Result<Conn, StoreError> {
        match &self.kind {
            Kind::Single(client) => {
                let config = self.manager_config().set_number_of_retries(0);
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client.clone(), config).await?,
                ))
            }
            Kind::Cluster { .. } => self.connect(Duration::ZERO).await,
        }
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
            let attempt =
                tokio::time::timeout(s.connect_timeout + s.response_timeout, self.server_infos())
                    .await;
            let error = match attempt {
                Ok(Ok(infos)) => {
                    if warned {
                        tracing::info!(redis = %self, "redis is up");
                    }
                    for info in &infos {
                        check_server(info)
                            .with_context(|| format!("connecting to Redis at {self}"))?;
                    }
                    return Ok(());
                }
                Ok(Err(e)) => e,
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

impl Endpoint {
    /// `INFO` of the server, or of every master of a cluster (once the cluster says its state
    /// is ok), in one attempt without retries. The default sections: `server` (the version)
    /// and `memory` (eviction).
    async fn server_infos(&self) -> Result<Vec<String>, StoreError> {
        let s = &self.settings;
        match &self.kind {
            Kind::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(s.connect_timeout))
                    .set_response_timeout(Some(s.response_timeout));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(vec![
                    redis::cmd("INFO").query_async::<String>(&mut conn).await?,
                ])
            }
            Kind::Cluster { client, .. } => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(s.connect_timeout)
                    .set_response_timeout(s.response_timeout);
                let mut conn =
                    Conn::Cluster(client.get_async_connection_with_config(config).await?);
                let state: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await?;
                if !state.lines().any(|l| l.trim() == "cluster_state:ok") {
                    return Err(StoreError::Redis(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the cluster's state is not ok yet (CLUSTER INFO)",
                    ))));
                }
                conn.on_every_master(&redis::cmd("INFO")).await
            }
        }
    }
}

/// A connection to Redis: to one server (reconnecting), or to a cluster (each command routed
/// to the master of its keys' slot, MOVED and ASK followed, the slot map refreshed as the
/// cluster changes). Cheap to clone: clones share the connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// True when connected to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Run `cmd`, which names no key (`WAIT`, `SCAN`), on the server that holds `key`: on a
    /// cluster, the master of its slot.
    pub async fn on_node_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match self {
            Conn::Single(c) => Ok(cmd.query_async(c).await?),
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let value = c
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }

    /// `pipe` (not atomic) on the server that holds `key` (on a cluster, the master of its
    /// slot), as one request: a connection made again resends all of it.
    pub async fn pipeline_on_node_of(
        &mut self,
        key: &str,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<redis::Value>, StoreError> {
        use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
        let replies: Vec<redis::Value> = match self {
            // Each command's error as a reply of its own, as a cluster's route gives them.
            Conn::Single(c) => pipe.clone().ignore_errors().query_async(c).await?,
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                c.route_pipeline(
                    pipe.clone(),
                    0,
                    pipe.len(),
                    SingleNodeRoutingInfo::SpecificNode(route),
                )
                .await?
            }
        };
        // A command's error comes back as a reply of its own: the first one fails the call.
        let error = replies.iter().find_map(|v| match v {
            redis::Value::ServerError(e) => Some(e.clone()),
            _ => None,
        });
        match error {
            Some(e) => Err(StoreError::from(redis::RedisError::from(e))),
            None => Ok(replies),
        }
    }

    /// Every key matching `pattern` on the server that holds `key` (on a cluster, the
    /// master of its slot): a `SCAN` to the end. For keys that share `key`'s hash tag.
    pub async fn scan_node_of(
        &mut self,
        key: &str,
        pattern: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.on_node_of(key, &scan).await?;
            found.extend(keys);
            if next == 0 {
                return Ok(found);
            }
            cursor = next;
        }
    }

    /// Run `cmd`, which names no key and answers text (`INFO`), on the server, or on every
    /// master of a cluster; one answer each.
    pub async fn on_every_master(&mut self, cmd: &redis::Cmd) -> Result<Vec<String>, StoreError> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
        match self {
            Conn::Single(c) => Ok(vec![cmd.query_async(c).await?]),
            Conn::Cluster(c) => {
                let value = c
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                match value {
                    redis::Value::Map(pairs) => pairs
                        .into_iter()
                        .map(|(_, v)| Ok(redis::from_redis_value(v)?))
                        .collect(),
                    other => Ok(vec![redis::from_redis_value(other)?]),
                }
            }
        }
    }
}

/// One node's connection info and client: `url` with `settings` (ACL user, RESP3, keepalive,
/// TLS files read now).
fn node(url: &str, settings: &Connection) -> anyhow::Result<(ConnectionInfo, redis::Client)> {
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
    if let Some(tcp) = tcp_settings(settings) {
        info = info.set_tcp_settings(tcp);
    }
    let client = if tls_url {
        redis::Client::build_with_tls(info.clone(), certificates(settings)?)
            .with_context(|| format!("setting up TLS for {redacted}"))?
    } else {
        if settings.tls.is_set() {
            bail!("[redis] tls_* settings are given, but the URL {redacted} is not rediss://");
        }
        redis::Client::open(info.clone()).with_context(invalid)?
    };
    Ok((info, client))
}

/// The TCP settings of `settings`: its keepalive, if any.
fn tcp_settings(settings: &Connection) -> Option<TcpSettings> {
    settings.keepalive.map(|k| {
        let keepalive = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        TcpSettings::default().set_keepalive(keepalive)
    })
}

/// The TLS files of `settings`, read and checked.
fn certificates(settings: &Connection) -> anyhow::Result<redis::TlsCertificates> {
    let tls = &settings.tls;
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
        _ => bail!("a Redis TLS client certificate needs both tls_cert_file and tls_key_file"),
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// The cluster client of `seeds` (their ACL user and password are the first seed's), with
/// the connection settings, TLS included.
fn cluster_client(
    seeds: Vec<ConnectionInfo>,
    settings: &Connection,
) -> anyhow::Result<redis::cluster::ClusterClient> {
    let first = seeds[0].clone();
    let tls = matches!(first.addr(), redis::ConnectionAddr::TcpTls { .. });
    let insecure = matches!(
        first.addr(),
        redis::ConnectionAddr::TcpTls { insecure: true, .. }
    );
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(settings.connect_timeout)
        .response_timeout(settings.response_timeout)
        .min_retry_wait(settings.reconnect_min.as_millis() as u64)
        .max_retry_wait(settings.reconnect_max.as_millis() as u64);
    if let Some(user) = first.redis_settings().username() {
        builder = builder.username(user);
    }
    if let Some(password) = first.redis_settings().password() {
        builder = builder.password(password);
    }
    if settings.resp3 {
        builder = builder.use_protocol(ProtocolVersion::RESP3);
    }
    if let Some(tcp) = tcp_settings(settings) {
        builder = builder.tcp_settings(tcp);
    }
    if tls {
        builder = builder
            .tls(if insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            })
            .certs(certificates(settings)?);
    }
    Ok(builder.build()?)
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
