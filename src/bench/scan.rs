//! A scan job against the tool that inspired sluice, on the same tree, in the same run:
//! [`FILES`] files in [`DIRS`] directories, walked by a real `sluice run` host (this binary)
//! with the `noop` plugin, and by `irods-capability-automated-ingest` 0.7.0 (its `irods_sync`
//! with a no-op event handler and two Celery workers, `bench/peers/irods_ingest/run.sh`,
//! installed by `make scandeps`, which `make bench` runs, into `bench/peers/.irods-venv`).
//! The seed's Celery broker and cache is a `redis-server` of its own on a free TCP port
//! (the tool parses a `redis://HOST:PORT/DB` URL by hand; the bench's Redis may be a socket).
//!
//! Each tool does a first pass (every file new: for sluice, an event handled per file and
//! its cache entry written with the ack) and a pass over the unchanged tree (every file
//! skipped by its cache). sluice's pass is timed from its start (the job hash's
//! `scan_started_at`) to the moment its walk is empty and every event is handled, polled
//! every 2 ms.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

use super::BenchArgs;
use super::load::cleanup;
use crate::store::{Conn, Endpoint, Keys};

pub const DIRS: usize = 100;
pub const FILES: usize = 10_000;
const PREFIX: &str = "sluice-bench-scan";
const JOB: &str = "scan";

#[derive(Debug, Clone, Serialize)]
pub struct ScanRow {
    pub tool: String,
    pub files: usize,
    /// Files per second of a first pass (every file new), and of a pass over the unchanged
    /// tree; medians of the runs (None: skipped).
    pub first_files_per_s: Option<f64>,
    pub unchanged_files_per_s: Option<f64>,
    pub skipped: Option<String>,
}

/// Make the tree in `scratch`, measure sluice then the seed tool.
pub async fn run(
    args: &BenchArgs,
    redis: &Endpoint,
    url: &str,
    cache: &Path,
    scratch: &Path,
) -> anyhow::Result<Vec<ScanRow>> {
    let tree = scratch.join("scan-tree");
    make_tree(&tree)?;
    let sluice = match sluice_passes(args, redis, url, cache, scratch, &tree).await {
        Ok((first, unchanged)) => ScanRow {
            tool: "sluice scan (noop plugin)".into(),
            files: FILES,
            first_files_per_s: Some(first),
            unchanged_files_per_s: Some(unchanged),
            skipped: None,
        },
        Err(e) => ScanRow {
            tool: "sluice scan (noop plugin)".into(),
            files: FILES,
            first_files_per_s: None,
            unchanged_files_per_s: None,
            skipped: Some(format!("{e:#}")),
        },
    };
    let seed = seed(args, scratch, &tree).await;
    let _ = std::fs::remove_dir_all(&tree);
    Ok(vec![sluice, seed])
}

fn make_tree(tree: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(tree);
    for d in 0..DIRS {
        let dir = tree.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..FILES / DIRS {
            std::fs::write(dir.join(format!("f{f:03}")), "x".repeat((d * f) % 300))?;
        }
    }
    Ok(())
}

/// sluice's first and unchanged passes, files/s (medians of `args.repeat` each).
async fn sluice_passes(
    args: &BenchArgs,
    redis: &Endpoint,
    url: &str,
    cache: &Path,
    scratch: &Path,
    tree: &Path,
) -> anyhow::Result<(f64, f64)> {
    if url.starts_with("rediss://") {
        anyhow::bail!("not measured over TLS (the host it starts gets only the Redis URL)");
    }
    let exe = std::env::current_exe().context("finding the sluice binary")?;
    let plugin = std::fs::canonicalize(args.plugin_dir.join("noop.wasm"))
        .context("build the plugins first: make plugins")?;
    let mut conn = redis.connect(Duration::from_secs(20)).await?;
    cleanup(&mut conn, PREFIX).await?;
    let config = scratch.join("scan.toml");
    let data = std::path::absolute(cache.parent().unwrap_or(cache))?;
    let text = format!(
        "[host]\ndata_dir = {:?}\nprefix = {PREFIX:?}\nlog = \"warn\"\n\n[redis]\nurl = {url:?}\n\n\
         [[plugin]]\nname = \"noop\"\npath = {:?}\n\n[[job]]\nname = {JOB:?}\n\
         source = \"scan:{}\"\nplugin = \"noop\"\nbatch = {}\n\n[job.scan]\ninterval_s = 2\n",
        data.display().to_string(),
        plugin.display().to_string(),
        std::path::absolute(tree)?.display(),
        args.batch,
    );
    super::start::write_private(&config, &text)?;
    let mut child = super::start::spawn_host(&exe, &config)?;
    let keys = Keys::new(PREFIX);
    let result = async {
        let (mut first, mut unchanged) = (Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            // The cache emptied: every file of the next pass is new.
            forget(&mut conn, &keys).await?;
            first.push(pass(&mut conn, &keys, &mut child).await?);
            unchanged.push(pass(&mut conn, &keys, &mut child).await?);
        }
        let rate = |secs: &[f64]| FILES as f64 / super::median(secs);
        anyhow::Ok((rate(&first), rate(&unchanged)))
    }
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_file(&config);
    cleanup(&mut conn, PREFIX).await?;
    result
}

/// Delete the scan's change cache.
async fn forget(conn: &mut Conn, keys: &Keys) -> anyhow::Result<()> {
    let pattern = format!("{}*", keys.scan_seen(JOB, b""));
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !found.is_empty() {
            let _: () = redis::cmd("DEL").arg(&found).query_async(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Wait for the next pass to start, then time it until its walk is empty and its events are
/// all handled; seconds.
async fn pass(
    conn: &mut Conn,
    keys: &Keys,
    child: &mut tokio::process::Child,
) -> anyhow::Result<f64> {
    let stream = keys.scan_stream(JOB);
    let job = keys.job(JOB, &stream);
    let number = |conn: &mut Conn| {
        let job = job.clone();
        let mut conn = conn.clone();
        async move {
            let n: Option<u64> = redis::cmd("HGET")
                .arg(&job)
                .arg("scan_pass")
                .query_async(&mut conn)
                .await?;
            anyhow::Ok(n.unwrap_or(0))
        }
    };
    let before = number(conn).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while number(conn).await? == before {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the host exited ({status})");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no scan pass started within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started: u64 = redis::cmd("HGET")
        .arg(&job)
        .arg("scan_started_at")
        .query_async(conn)
        .await?;
    loop {
        let (tasks, files): (u64, Option<u64>) = redis::pipe()
            .cmd("XLEN")
            .arg(keys.scan_tasks(JOB))
            .cmd("HGET")
            .arg(&job)
            .arg("scan_files")
            .query_async(conn)
            .await?;
        if tasks == 0 && files.unwrap_or(0) >= FILES as u64 {
            let group = crate::store::groups::group_info(conn, &stream, &keys.group(JOB)).await?;
            if group.is_some_and(|g| g.pending == Some(0) && g.lag == Some(0)) {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
                return Ok(now.saturating_sub(started) as f64 / 1000.0);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the scan pass did not end within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The seed tool's two passes, if `make scandeps` installed it.
async fn seed(args: &BenchArgs, scratch: &Path, tree: &Path) -> ScanRow {
    let tool = "irods-capability-automated-ingest 0.7.0 (2 Celery workers)";
    let script = args.peers_dir.join("irods_ingest/run.sh");
    let row = |first, unchanged, skipped| ScanRow {
        tool: tool.into(),
        files: FILES,
        first_files_per_s: first,
        unchanged_files_per_s: unchanged,
        skipped,
    };
    if !args.peers_dir.join(".irods-venv").exists() {
        return row(
            None,
            None,
            Some("not installed (make scandeps installs it)".into()),
        );
    }
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => return row(None, None, Some(format!("no free port: {e}"))),
    };
    let server = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut server = match server {
        Ok(s) => s,
        Err(e) => return row(None, None, Some(format!("starting redis-server: {e}"))),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            let _ = server.start_kill();
            return row(None, None, Some("its redis-server did not start".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = tokio::process::Command::new(&script)
        .arg(format!("redis://127.0.0.1:{port}/0"))
        .arg(tree)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let _ = server.start_kill();
    let _ = server.wait().await;
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").to_string();
            return row(
                None,
                None,
                Some(format!(
                    "{} failed ({}): {last}",
                    script.display(),
                    out.status
                )),
            );
        }
        Err(e) => return row(None, None, Some(format!("{}: {e}", script.display()))),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Option<serde_json::Value> = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok());
    match report {
        Some(r) => row(
            r["first_files_per_s"].as_f64(),
            r["second_files_per_s"].as_f64(),
            None,
        ),
        None => row(
            None,
            None,
            Some(format!("no report from {}", script.display())),
        ),
    }
}

/// The table: files/s of each tool's passes, and sluice's over the seed's.
pub fn print(rows: &[ScanRow]) {
    println!("\nscan: {FILES} files in {DIRS} directories, the same tree for each tool (files/s)");
    println!(
        "{:<58} {:>12} {:>16}",
        "tool", "first pass", "unchanged pass"
    );
    for r in rows {
        match (&r.skipped, r.first_files_per_s, r.unchanged_files_per_s) {
            (None, Some(a), Some(b)) => println!("{:<58} {a:>12.0} {b:>16.0}", r.tool),
            (why, _, _) => println!(
                "{:<58} skipped: {}",
                r.tool,
                why.as_deref().unwrap_or("no figures")
            ),
        }
    }
    if let [s, seed] = rows
        && let (Some(a), Some(b), Some(c), Some(d)) = (
            s.first_files_per_s,
            s.unchanged_files_per_s,
            seed.first_files_per_s,
            seed.unchanged_files_per_s,
        )
    {
        println!(
            "sluice over the seed: {:.1}x on the first pass, {:.1}x on the unchanged pass",
            a / c,
            b / d
        );
    }
}
