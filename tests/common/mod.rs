//! Test harness: a real `redis-server` on a free port in a temp dir (killed on drop, its log
//! printed when the test failed), real plugins built from `plugins/`, and helpers to run the
//! host in-process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use redis::Commands;

/// A private redis-server for one test.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub url: String,
    /// Extra arguments, kept for restarts.
    extra: Vec<String>,
}

fn spawn_redis(port: u16, dir: &Path, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "yes", "--daemonize", "no"])
        .args(extra)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make deps)")
}

impl RedisServer {
    /// Start one on a free port (never 6379), retrying if another process takes the port
    /// between our probe and the server's bind.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..20 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let child = spawn_redis(port, dir.path(), extra);
            let mut server = RedisServer {
                child,
                port,
                url: format!("redis://127.0.0.1:{port}/"),
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Kill the server with SIGKILL and start it again on the same port and data dir
    /// (its append-only file brings the data back), after `down` of downtime.
    pub fn kill_and_restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = spawn_redis(self.port, self.dir.path(), &extra);
        assert!(
            self.wait_ready(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    fn wait_ready(&mut self) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // e.g. the port was taken: try another
            }
            if let Ok(mut conn) = self.client().get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str()).expect("redis url")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("redis connection")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server log (port {}) ----\n{}",
                self.port,
                self.log()
            );
        }
    }
}

/// A real Redis Cluster of `redis-server` processes on free ports (each with its cluster
/// bus port, +10000, free too), made with `redis-cli --cluster create`, torn down on drop
/// (the nodes' logs printed when the test failed).
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`: every node, as sluice takes it.
    pub url: String,
}

pub struct ClusterNode {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// TLS and an ACL user (None: plain, the default user).
    secure: Option<Secure>,
}

/// A cluster reached over TLS only, as an ACL user (the default user off).
#[derive(Clone)]
pub struct Secure {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub user: String,
    pub password: String,
}

impl Secure {
    /// The node's arguments: TLS for clients and the cluster bus, only; the ACL user.
    fn args(&self, port: u16) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cluster".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
            "--tls-cert-file".into(),
            p(&self.server_cert),
            "--tls-key-file".into(),
            p(&self.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--user".into(),
            "default".into(),
            "off".into(),
            "--user".into(),
            self.user.clone(),
            "on".into(),
            format!(">{}", self.password),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
            "--masteruser".into(),
            self.user.clone(),
            "--masterauth".into(),
            self.password.clone(),
        ]
    }

    /// redis-cli's arguments to reach such a node.
    fn cli_args(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            p(&self.ca),
            "--cert".into(),
            p(&self.client_cert),
            "--key".into(),
            p(&self.client_key),
            "--user".into(),
            self.user.clone(),
            "--pass".into(),
            self.password.clone(),
        ]
    }

    fn client(&self, port: u16) -> redis::Client {
        let read = |p: &PathBuf| std::fs::read(p).unwrap();
        redis::Client::build_with_tls(
            format!("rediss://{}:{}@127.0.0.1:{port}/", self.user, self.password),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(&self.client_cert),
                    client_key: read(&self.client_key),
                }),
                root_cert: Some(read(&self.ca)),
            },
        )
        .expect("a TLS client")
    }
}

impl ClusterNode {
    fn spawn(port: u16, dir: &Path, secure: Option<&Secure>) -> Child {
        let listen = match secure {
            Some(s) => s.args(port),
            None => vec!["--port".into(), port.to_string()],
        };
        Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                // A master unreachable this long is failed over to its replica.
                "--cluster-node-timeout",
                "1500",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--daemonize",
                "no",
            ])
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make deps)")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        match &self.secure {
            Some(s) => s.client(self.port),
            None => redis::Client::open(self.url()).expect("redis url"),
        }
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("redis connection")
    }

    /// SIGKILL the node (its replica takes over once the cluster sees it gone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a killed node again (it rejoins with its data and cluster config).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(Self::spawn(
            self.port,
            self.dir.path(),
            self.secure.as_ref(),
        ));
    }

    fn info(&self, section: &str) -> String {
        Some(self.client())
            .and_then(|c| {
                c.get_connection_with_timeout(Duration::from_millis(500))
                    .ok()
            })
            .and_then(|mut c| redis::cmd(section).arg("INFO").query::<String>(&mut c).ok())
            .unwrap_or_default()
    }
}

/// A port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// 3 masters with a replica each, every slot served, `cluster_state:ok` on every node.
    pub fn start() -> Self {
        Self::start_with(3, 1)
    }

    pub fn start_with(masters: usize, replicas: usize) -> Self {
        Self::start_secure(masters, replicas, None)
    }

    /// `masters` with `replicas` each, over TLS only and as an ACL user when `secure`.
    pub fn start_secure(masters: usize, replicas: usize, secure: Option<Secure>) -> Self {
        let mut nodes = Vec::new();
        while nodes.len() < masters * (1 + replicas) {
            let port = free_cluster_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let child = ClusterNode::spawn(port, dir.path(), secure.as_ref());
            let mut node = ClusterNode {
                child: Some(child),
                port,
                dir,
                secure: secure.clone(),
            };
            let started = Instant::now();
            let up = loop {
                if let Some(Ok(Some(_))) = node.child.as_mut().map(|c| c.try_wait()) {
                    break false; // the port was taken meanwhile: another one
                }
                if node
                    .client()
                    .get_connection()
                    .ok()
                    .is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
                {
                    break true;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                nodes.push(node);
            } else {
                node.kill();
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(secure.as_ref().map(Secure::cli_args).unwrap_or_default())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli");
        let cluster = RedisCluster {
            url: match &secure {
                Some(s) => format!(
                    "rediss+cluster://{}:{}@{}",
                    s.user,
                    s.password,
                    addrs.join(",")
                ),
                None => format!("redis+cluster://{}", addrs.join(",")),
            },
            nodes,
        };
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        assert!(
            cluster.wait_ok(Duration::from_secs(30)),
            "the cluster did not reach cluster_state:ok"
        );
        cluster
    }

    /// Until every live node says `cluster_state:ok`, knows every node and serves every slot.
    pub fn wait_ok(&self, within: Duration) -> bool {
        let total = self.nodes.len().to_string();
        wait_until(within, || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = n.info("CLUSTER");
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{total}"))
            })
        })
    }

    /// A cluster connection for the test's own checks (plain clusters).
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        redis::cluster::ClusterClient::new(urls)
            .expect("cluster client")
            .get_connection()
            .expect("cluster connection")
    }

    /// A plain connection to the master of `key`'s slot: for the commands of one slot the
    /// helpers here send (pipelines included, which a cluster connection does not take).
    pub fn conn_for(&self, key: &str) -> redis::Connection {
        self.nodes[self.master_of(key)].conn()
    }

    /// The node serving `key`'s slot as master, by index into `nodes`.
    pub fn master_of(&self, key: &str) -> usize {
        // Any live node answers for the whole cluster.
        let mut conn = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node")
            .conn();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT");
        let shards: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .expect("CLUSTER SLOTS");
        let redis::Value::Array(ranges) = shards else {
            panic!("CLUSTER SLOTS: {shards:?}")
        };
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let num = |v: &redis::Value| match v {
                redis::Value::Int(n) => *n as u16,
                _ => 0,
            };
            if parts.len() >= 3 && num(&parts[0]) <= slot && slot <= num(&parts[1]) {
                let redis::Value::Array(master) = &parts[2] else {
                    continue;
                };
                let port = num(&master[1]);
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("the master is one of ours");
            }
        }
        panic!("no master serves slot {slot}")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for node in &mut self.nodes {
            node.kill();
            if failed {
                eprintln!(
                    "---- redis-server log (cluster node {}) ----\n{}",
                    node.port,
                    std::fs::read_to_string(node.dir.path().join("redis.log")).unwrap_or_default()
                );
            }
        }
    }
}

pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a free port")
            .port();
        if port != 6379 {
            return port;
        }
    }
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The component built from `plugins/<name>` (built once per test binary).
pub fn plugin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(repo().join("plugins"))
            .status()
            .expect("running cargo for the plugins");
        assert!(status.success(), "building plugins/ failed");
    });
    let path = repo()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    if path.exists() {
        return path;
    }
    // Plugins in other languages are built by `make plugins` (which `make test` runs first).
    let dist = repo().join("plugins/dist").join(format!("{name}.wasm"));
    assert!(
        dist.exists(),
        "{} was not built: run `make plugins`",
        dist.display()
    );
    dist
}

/// Append `n` entries with the given fields; returns their ids in order.
pub fn publish(
    conn: &mut impl redis::ConnectionLike,
    stream: &str,
    n: usize,
    fields: &[(&str, &str)],
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let cmd = pipe.cmd("XADD").arg(stream).arg("*");
            for (k, v) in fields {
                cmd.arg(*k).arg(v.replace("{i}", &i.to_string()));
            }
        }
        let chunk_ids: Vec<String> = pipe.query(conn).expect("XADD");
        ids.extend(chunk_ids);
    }
    ids
}

/// Append `n` entries whose fields `fields(i)` gives (entry `i`), in pipelines of 1000.
pub fn publish_each(
    conn: &mut impl redis::ConnectionLike,
    stream: &str,
    n: usize,
    fields: impl Fn(usize) -> Vec<(&'static str, String)>,
) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let cmd = pipe.cmd("XADD").arg(stream).arg("*");
            for (k, v) in fields(*i) {
                cmd.arg(k).arg(v);
            }
        }
        let _: () = pipe.query(conn).expect("XADD");
    }
}

/// The ids of a stream, oldest first.
pub fn stream_ids(conn: &mut impl redis::ConnectionLike, stream: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}

/// A job's counter from its hash (0 if unset).
pub fn counter(conn: &mut impl redis::ConnectionLike, job: &str, stream: &str, field: &str) -> u64 {
    let key = format!("sluice:{{{stream}}}:job:{job}");
    conn.hget::<_, _, Option<u64>>(key, field)
        .expect("HGET")
        .unwrap_or(0)
}

/// Entries pending in a job's group.
pub fn pending(conn: &mut impl redis::ConnectionLike, job: &str, stream: &str) -> u64 {
    // Before the host created the group there is nothing pending (XPENDING says NOGROUP).
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(format!("sluice:{job}"))
        .query(conn)
        .unwrap_or(redis::Value::Nil);
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A config for one job on `stream` running plugin `name` with the given extra job lines.
pub fn config_toml(
    data_dir: &Path,
    plugin_name: &str,
    job: &str,
    stream: &str,
    job_extra: &str,
    config: &str,
) -> String {
    format!(
        r#"
[host]
data_dir = "{data}"
shutdown_grace_s = 5

[[plugin]]
name = "{plugin_name}"
path = "{path}"

[[job]]
name = "{job}"
source = "stream:{stream}"
plugin = "{plugin_name}"
block_ms = 100
{job_extra}
[job.config]
{config}
"#,
        data = data_dir.display(),
        path = plugin(plugin_name).display(),
    )
}

/// A `sluice run` process, its stderr appended to a log file that is printed if the test fails.
pub struct HostProcess {
    child: Child,
    pub log: PathBuf,
}

impl HostProcess {
    pub fn start(config: &Path, url: &str, log: &Path) -> Self {
        Self::start_with(config, url, log, &[])
    }

    /// `sluice run` with extra arguments.
    pub fn start_with(config: &Path, url: &str, log: &Path, extra: &[&str]) -> Self {
        Self::start_env(config, url, log, extra, &[("SLUICE_LOG", Some("info"))])
    }

    /// `sluice run` with extra arguments and environment variables set (Some) or removed.
    pub fn start_env(
        config: &Path,
        url: &str,
        log: &Path,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("host log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .args(["--redis", url])
            .args(extra)
            .env_remove("SLUICE_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawning sluice run");
        HostProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (up to `timeout`) for the exit status.
    pub fn term(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, and assert a clean exit (0) within 10 s.
    pub fn stop_ok(&mut self) {
        let status = self.term(Duration::from_secs(10));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "sluice run did not exit 0 on SIGTERM"
        );
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- sluice log {} (last 60 lines) ----",
                self.log.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A value of field `name` for every entry of `stream`, in order.
pub fn field_values(
    conn: &mut impl redis::ConnectionLike,
    stream: &str,
    name: &str,
) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    entries
        .into_iter()
        .filter_map(|(_, fields)| fields.into_iter().find(|(k, _)| k == name).map(|(_, v)| v))
        .collect()
}

/// A fresh redis-server, a connection to it, a temp dir, and a config file there for one job.
pub fn setup(
    plugin_name: &str,
    job: &str,
    stream: &str,
    job_extra: &str,
    config: &str,
) -> (RedisServer, redis::Connection, tempfile::TempDir, PathBuf) {
    let redis = RedisServer::start();
    let conn = redis.conn();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = write_config(dir.path(), plugin_name, job, stream, job_extra, config);
    (redis, conn, dir, cfg)
}

/// Write a config file for one job and return its path.
pub fn write_config(
    dir: &Path,
    plugin_name: &str,
    job: &str,
    stream: &str,
    job_extra: &str,
    config: &str,
) -> PathBuf {
    let path = dir.join(format!("{job}.toml"));
    std::fs::write(
        &path,
        config_toml(dir, plugin_name, job, stream, job_extra, config),
    )
    .expect("write config");
    path
}

/// Run `sluice plugin test WASM --events EVENTS --json [extra…]`; the exit code and the report.
pub fn plugin_test(wasm: &Path, events: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["plugin", "test"])
        .arg(wasm)
        .arg("--events")
        .arg(events)
        .arg("--json")
        .args(extra)
        .output()
        .expect("running sluice plugin test");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// `sluice ARGS --redis URL` with a data dir of its own; its output.
pub fn sluice(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--redis", url])
        .env_remove("SLUICE_REDIS_URL")
        .env_remove("SLUICE_CONFIG")
        .env(
            "SLUICE_DATA_DIR",
            std::env::temp_dir().join("sluice-control-tests"),
        )
        .output()
        .expect("running sluice")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sluice <words…>` must succeed; its stdout.
pub fn cli(url: &str, line: &str) -> String {
    ok(sluice(url, &line.split_whitespace().collect::<Vec<_>>()))
}

/// A host config with no jobs of its own: everything comes from the registry.
pub fn fleet_config(dir: &Path) -> PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            "[host]\ndata_dir = \"{}\"\nshutdown_grace_s = 5\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// A second version of a component: the same code plus a custom section (another sha256).
pub fn variant(original: &Path, dir: &Path, tag: &str) -> PathBuf {
    let mut bytes = std::fs::read(original).unwrap();
    let name = tag.as_bytes();
    let payload_len = 1 + name.len();
    bytes.push(0); // custom section id
    bytes.push(payload_len as u8); // LEB128, < 128
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    let path = dir.join(format!("{tag}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

pub fn sha_of(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["plugin", "inspect", "--json"])
        .arg(path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["sha256"].as_str().unwrap().to_string()
}

pub fn wait_for_log(log: &Path, needle: &str, timeout: Duration) -> bool {
    wait_until(timeout, || {
        std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle))
    })
}

/// Certificates made with `openssl` in `dir`: a CA, a server certificate it signed for
/// `server_names` (subjectAltName entries like `DNS:localhost`), a client certificate it
/// signed, and a second CA that signed nothing here.
pub struct Certs {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn make_certs(dir: &Path, server_names: &str) -> Certs {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subject) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN={ca}"),
        );
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(dir, &args);
    }
    for (leaf, names) in [("server", server_names), ("client", "DNS:sluice-client")] {
        let (key, csr, crt, ext) = (
            format!("{leaf}.key"),
            format!("{leaf}.csr"),
            format!("{leaf}.crt"),
            format!("{leaf}.ext"),
        );
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName={names}\nbasicConstraints=CA:FALSE\n\
                 extendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let mut args = vec!["req", "-subj", "/CN=sluice test"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
    }
    Certs {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

/// Every value exactly once: returns the values seen more than once, and the missing ones.
pub fn exactly_once(values: &[String], n: usize) -> (Vec<(String, usize)>, Vec<usize>) {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for v in values {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    let dups = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(v, c)| (v.to_string(), *c))
        .collect();
    let missing = (0..n)
        .filter(|i| !seen.contains_key(i.to_string().as_str()))
        .collect();
    (dups, missing)
}
