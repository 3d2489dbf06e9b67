//! The embedded Redis: with no Redis URL configured, `sluice run` starts a private
//! `redis-server` child listening only on a unix socket in `<data_dir>/redis/`, with its
//! data there too (append-only file on), and stops it on exit.
//!
//! Other `sluice` commands run with the same data dir find it through the socket. If a
//! host was killed and left its Redis running, the next start adopts that server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::model::AppendFsync;

/// Longest unix socket path the kernel accepts (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A `redis-server` this process owns (or adopted).
pub struct EmbeddedRedis {
    /// The child, if we started it (None when we adopted a running one).
    child: Option<Child>,
    /// Its directory (data, log) and the socket it listens on.
    dir: PathBuf,
    socket: PathBuf,
    appendfsync: AppendFsync,
    /// Held while this host owns the embedded Redis: one host per data dir.
    _lock: std::fs::File,
}

/// The directory of the embedded Redis of a data dir.
pub fn redis_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("redis")
}

/// The URL of the embedded Redis of `data_dir`, if one is listening there.
pub async fn running_url(data_dir: &Path) -> Option<String> {
    let socket = redis_dir(data_dir).join("redis.sock");
    let url = socket_url(&socket).ok()?;
    ping(&url).await.then_some(url)
}

fn socket_url(socket: &Path) -> anyhow::Result<String> {
    let socket = std::path::absolute(socket)?;
    Ok(format!("unix://{}", socket.display()))
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(Ok(mut conn)) = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return false;
    };
    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
    pong.is_ok()
}

impl EmbeddedRedis {
    /// Start (or adopt) the embedded Redis of `data_dir` and wait until it answers.
    pub async fn start(data_dir: &Path, appendfsync: AppendFsync) -> anyhow::Result<Self> {
        let dir = std::path::absolute(redis_dir(data_dir))?;
        // Its append-only file holds every event and the registry: private to this user.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .with_context(|| format!("creating the embedded redis directory {}", dir.display()))?;
        let socket = dir.join("redis.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the embedded redis socket path {} is longer than {MAX_SOCKET_PATH} bytes; \
                 use a shorter data dir (--data-dir) or configure [redis] url",
                socket.display()
            );
        }
        let url = socket_url(&socket)?;
        // The embedded Redis belongs to one host: a second one would lose it when the first
        // stops. The lock goes with the process, however it ends.
        let lock = std::fs::File::create(dir.join("host.lock"))?;
        if let Err(e) = lock.try_lock() {
            bail!(
                "another `sluice run` uses the embedded Redis of {} ({e}); the embedded Redis \
                 belongs to one host. For several hosts, run a redis-server and give each host \
                 its URL (--redis, [redis] url); or give this host its own --data-dir",
                data_dir.display()
            );
        }
        if ping(&url).await {
            tracing::warn!(socket = %socket.display(), "the embedded redis-server of an earlier run (which ended without stopping it) is still running; adopting it");
            return Ok(EmbeddedRedis {
                child: None,
                dir,
                socket,
                appendfsync,
                _lock: lock,
            });
        }
        let child = spawn(&dir, &socket, appendfsync).await?;
        tracing::info!(socket = %socket.display(), pid = child.id(), "started embedded redis-server");
        Ok(EmbeddedRedis {
            child: Some(child),
            dir,
            socket,
            appendfsync,
            _lock: lock,
        })
    }

    /// Keep the server running: whenever it exits while the host runs, start it again from
    /// its directory (its append-only file brings the data back), with backoff. Never
    /// returns (for an adopted server, which is not our child, it waits forever).
    pub async fn supervise(&mut self) {
        let mut delays = crate::model::backoff(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let Some(child) = self.child.as_mut() else {
                return std::future::pending().await;
            };
            let ran_from = Instant::now();
            let status = child.wait().await;
            let log = self.dir.join("redis.log");
            tracing::error!(status = ?status.ok(), log = %log.display(), "the embedded redis-server exited; starting it again from its data dir");
            self.child = None;
            // A server that ran a while before it died starts again at once.
            if ran_from.elapsed() > Duration::from_secs(60) {
                delays = crate::model::backoff(Duration::from_millis(200), Duration::from_secs(10));
            }
            while self.child.is_none() {
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
                match spawn(&self.dir, &self.socket, self.appendfsync).await {
                    Ok(child) => {
                        tracing::warn!(pid = child.id(), "embedded redis-server started again");
                        self.child = Some(child);
                    }
                    Err(e) => tracing::error!(
                        "starting the embedded redis-server again failed (tried again): {e:#}"
                    ),
                }
            }
        }
    }

    /// The URL to connect to it.
    pub fn url(&self) -> String {
        socket_url(&self.socket).unwrap_or_else(|_| format!("unix://{}", self.socket.display()))
    }

    /// Stop it: `SHUTDOWN` (which writes the append-only file), then wait; kill if it hangs.
    pub async fn stop(mut self) {
        if let Ok(client) = redis::Client::open(self.url())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            // The connection drops when the server exits: an error here is the normal case.
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query_async(&mut conn).await;
        }
        if let Some(child) = self.child.as_mut() {
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(_) => tracing::info!("embedded redis-server stopped"),
                Err(_) => {
                    tracing::warn!("embedded redis-server did not stop in 10 s; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// Start `redis-server` in `dir` on `socket` and wait until it answers.
async fn spawn(dir: &Path, socket: &Path, appendfsync: AppendFsync) -> anyhow::Result<Child> {
    let url = socket_url(socket)?;
    // A socket file nobody answers on is left over from a killed server.
    let _ = std::fs::remove_file(socket);
    let log = dir.join("redis.log");
    let child = Command::new("redis-server")
        .arg("--port")
        .arg("0")
        .arg("--unixsocket")
        .arg(socket)
        .arg("--unixsocketperm")
        .arg("700")
        .arg("--dir")
        .arg(dir)
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg(appendfsync.as_str())
        .arg("--save")
        .arg("")
        .arg("--daemonize")
        .arg("no")
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C in the terminal must reach only us, so that we
        // can finish committing before we stop Redis.
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no Redis URL is configured and `redis-server` is not installed: install it \
             (apt-get install redis-server) or set [redis] url, --redis or SLUICE_REDIS_URL"
        ),
        Err(e) => return Err(e).context("starting redis-server"),
    };
    let started = Instant::now();
    while !ping(&url).await {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            bail!(
                "the embedded redis-server exited ({status}) before answering; its log ({}):\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill().await;
            bail!(
                "the embedded redis-server did not answer within 10 s; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(child)
}
