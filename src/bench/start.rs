//! How fast a host starts and how much memory it holds: real `sluice run` processes (this
//! binary), on the benchmark's Redis, with the benchmark's warm compile cache.
//!
//! - cold start: from spawning the process to the commit of an entry that was waiting in its
//!   job's stream (config read, Redis connected, plugin loaded from the cache, instance made
//!   and `init` run, entry read, handled, committed);
//! - memory: the resident set (VmRSS) of a host running one `noop` job once it has handled
//!   its entry, and of one running [`MANY`] such jobs: the difference over the extra jobs is
//!   what a job (its source and lifecycle runners, their connections and instances) costs.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::BenchArgs;
use super::load::cleanup;
use crate::store::{Endpoint, Keys};

/// Jobs of the larger host.
const MANY: usize = 9;
const PREFIX: &str = "sluice-bench-start";

#[derive(Debug, Clone, Serialize)]
pub struct StartReport {
    /// Process spawn to the first entry committed, ms (the median of the runs).
    pub first_event_ms: f64,
    /// Every run, in order.
    pub runs_ms: Vec<f64>,
    /// VmRSS of a host with one job, MiB.
    pub rss_one_job_mib: f64,
    /// VmRSS of a host with [`MANY`] jobs, MiB.
    pub rss_many_jobs_mib: f64,
    pub many_jobs: usize,
    /// (rss_many - rss_one) / (many - 1): one more job with its plugin instance, MiB.
    pub rss_per_job_mib: f64,
}

/// Measure; `url` is the benchmark's Redis URL, given to the hosts (a `rediss://` one is not:
/// its TLS files are the config file's, so the section is skipped, saying why).
pub async fn host_start(
    args: &BenchArgs,
    redis: &Endpoint,
    url: &str,
    cache: &Path,
    scratch: &Path,
) -> anyhow::Result<StartReport> {
    if url.starts_with("rediss://") {
        anyhow::bail!("not measured over TLS (the hosts it starts get only the Redis URL)");
    }
    let exe = std::env::current_exe().context("finding the sluice binary")?;
    let plugin = std::fs::canonicalize(args.plugin_dir.join("noop.wasm"))
        .context("build the plugins first: make plugins")?;
    std::fs::create_dir_all(scratch)?;
    let mut conn = redis.connect(Duration::from_secs(20)).await?;
    let mut runs_ms = Vec::new();
    let mut rss = (0.0, 0.0);
    for (run, jobs) in [1, 1, 1, MANY].into_iter().enumerate() {
        cleanup(&mut conn, PREFIX).await?;
        // Outside the host's prefix (a job may not read sluice's own keys).
        let streams: Vec<String> = (0..jobs).map(|j| format!("{PREFIX}-source:s{j}")).collect();
        for s in &streams {
            let _: String = redis::cmd("XADD")
                .arg(s)
                .arg("*")
                .arg("n")
                .arg(1)
                .query_async(&mut conn)
                .await?;
        }
        let config = scratch.join(format!("start-{run}.toml"));
        write_private(&config, &config_text(url, cache, &plugin, &streams))?;
        let started = Instant::now();
        let mut child = spawn_host(&exe, &config)?;
        let keys = Keys::new(PREFIX);
        let result = async {
            for (j, s) in streams.iter().enumerate() {
                let key = keys.job(&format!("start-{j}"), s);
                wait_acked(&mut conn, &key, &mut child).await?;
                if j == 0 {
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    if jobs == 1 {
                        runs_ms.push(ms);
                    }
                }
            }
            // Settled: the runners are waiting on their reads.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let pid = child.id().context("the host exited")?;
            anyhow::Ok(vm_rss_mib(pid)?)
        }
        .await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        let _ = std::fs::remove_file(&config);
        let mib = match result {
            Ok(mib) => mib,
            Err(e) => {
                let _ = cleanup(&mut conn, PREFIX).await;
                return Err(e);
            }
        };
        if jobs == 1 {
            rss.0 = mib;
        } else {
            rss.1 = mib;
        }
    }
    cleanup(&mut conn, PREFIX).await?;
    Ok(StartReport {
        first_event_ms: super::median(&runs_ms),
        runs_ms,
        rss_one_job_mib: rss.0,
        rss_many_jobs_mib: rss.1,
        many_jobs: MANY,
        rss_per_job_mib: (rss.1 - rss.0) / (MANY - 1) as f64,
    })
}

/// Write a host's config file, readable only by its owner (the URL may carry a password).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())?;
    Ok(())
}

/// A `sluice run --config CONFIG` process of this binary `exe`, quiet, killed when dropped.
pub fn spawn_host(exe: &Path, config: &Path) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting sluice run")
}

/// Wait until the job hash `key` counts an acked entry (at most 30 s).
async fn wait_acked(
    conn: &mut crate::store::Conn,
    key: &str,
    child: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acked: Option<u64> = redis::cmd("HGET")
            .arg(key)
            .arg("acked")
            .query_async(conn)
            .await?;
        if acked.unwrap_or(0) > 0 {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the host exited before handling its entry ({status})");
        }
        if Instant::now() > deadline {
            anyhow::bail!("the host did not handle its entry within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The resident set of process `pid`, MiB.
fn vm_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

fn config_text(url: &str, cache: &Path, plugin: &Path, streams: &[String]) -> String {
    let mut text = format!(
        "[host]\ndata_dir = {:?}\nprefix = {PREFIX:?}\nlog = \"warn\"\n\n[redis]\nurl = {:?}\n\n\
         [[plugin]]\nname = \"noop\"\npath = {:?}\n",
        std::path::absolute(data_dir(cache))
            .unwrap_or_else(|_| data_dir(cache).to_path_buf())
            .display()
            .to_string(),
        url,
        plugin.display().to_string(),
    );
    for (j, s) in streams.iter().enumerate() {
        text.push_str(&format!(
            "\n[[job]]\nname = \"start-{j}\"\nsource = \"stream:{s}\"\nplugin = \"noop\"\n"
        ));
    }
    text
}

/// The data dir whose compile cache is `cache` (`<data_dir>/cache`).
fn data_dir(cache: &Path) -> &Path {
    cache.parent().unwrap_or(cache)
}

pub fn print(report: &anyhow::Result<StartReport>) {
    match report {
        Ok(r) => println!(
            "host start (a `sluice run` process, warm compile cache, one noop job): first event \
             committed {:.0} ms after the spawn (median of {}: {}); resident memory {:.1} MiB with \
             one job, {:.1} MiB with {}: {:.2} MiB per job (its two runners and their plugin instances)",
            r.first_event_ms,
            r.runs_ms.len(),
            r.runs_ms
                .iter()
                .map(|ms| format!("{ms:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.rss_one_job_mib,
            r.rss_many_jobs_mib,
            r.many_jobs,
            r.rss_per_job_mib
        ),
        Err(e) => println!("host start: not measured: {e:#}"),
    }
}
