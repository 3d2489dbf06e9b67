//! Peers on the same Redis, in the same run: what users would otherwise run.
//!
//! - a hand-written redis-py consumer loop (`XREADGROUP`, a handler call per entry, `XACK`),
//!   draining a pre-filled stream like the throughput runs, same batch;
//! - a BullMQ worker with a no-op processor, at concurrency 1 and 64, draining a queue filled
//!   with `addBulk` (jobs removed on completion).
//!
//! Their scripts are in `bench/peers/`; `make benchdeps` installs what they need (redis-py from
//! PyPI, bullmq and ioredis from npm). A peer whose tools are missing is skipped, saying why.
//! Each reports its own events/s and CPU time per event (its process, not Redis's).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use redis::AsyncCommands as _;
use serde::Serialize;

use super::BenchArgs;
use super::load::{cleanup, prefill};
use crate::store::Endpoint;

/// Jobs a BullMQ run drains (it does a few thousand a second).
const BULLMQ_JOBS: u64 = 20_000;

#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    pub peer: String,
    /// None: skipped (see `skipped`).
    pub events_per_s: Option<f64>,
    pub cpu_us_per_event: Option<f64>,
    /// The sluice wasm no-op's events/s over the peer's.
    pub sluice_ratio: Option<f64>,
    pub skipped: Option<String>,
}

/// Run every peer; `sluice` is the wasm no-op mode's events/s, for the ratios.
pub async fn run(
    args: &BenchArgs,
    redis: &Endpoint,
    url: &str,
    sluice: f64,
) -> anyhow::Result<Vec<PeerRow>> {
    let dir = &args.peers_dir;
    let mut rows = Vec::new();
    let row = |peer: &str, result: anyhow::Result<(f64, f64)>| match result {
        Ok((rate, cpu)) => PeerRow {
            peer: peer.into(),
            events_per_s: Some(rate),
            cpu_us_per_event: Some(cpu),
            sluice_ratio: Some(sluice / rate),
            skipped: None,
        },
        Err(e) => PeerRow {
            peer: peer.into(),
            events_per_s: None,
            cpu_us_per_event: None,
            sluice_ratio: None,
            skipped: Some(format!("{e:#}")),
        },
    };
    if url.starts_with("rediss://") {
        for peer in [
            "redis-py loop",
            "BullMQ worker, concurrency 1",
            "BullMQ worker, concurrency 64",
        ] {
            rows.push(row(
                peer,
                Err(anyhow::anyhow!("measured over plain TCP only")),
            ));
        }
        return Ok(rows);
    }
    let mut conn = redis.connect(Duration::from_secs(20)).await?;
    let stream = "sluice-bench:peer:tput";
    let py = async {
        check(
            "python3",
            &["-c", "import redis"],
            "redis-py is not installed (make benchdeps)",
        )
        .await?;
        cleanup(&mut conn, stream).await?;
        prefill(&mut conn, stream, args.events, None).await?;
        super::quiet(&mut conn).await?;
        let script = dir.join("redis_py_loop.py");
        let out = peer_json(
            "python3",
            url,
            &[
                script.display().to_string(),
                stream.to_string(),
                "sluice-bench:peer".into(),
                args.events.to_string(),
                args.batch.to_string(),
            ],
        )
        .await;
        cleanup(&mut conn, stream).await?;
        out
    }
    .await;
    eprintln!("  peer: redis-py loop {}", brief(&py));
    rows.push(row(&format!("redis-py loop (batch {})", args.batch), py));
    let bullmq_ready = async {
        check(
            "node",
            &["--version"],
            "node is not installed (make benchdeps)",
        )
        .await?;
        if !dir.join("node_modules/bullmq").is_dir() {
            anyhow::bail!(
                "bullmq is not installed in {} (make benchdeps)",
                dir.display()
            );
        }
        anyhow::Ok(())
    }
    .await;
    for concurrency in [1, 64] {
        let peer = format!("BullMQ worker, concurrency {concurrency}");
        let result = match &bullmq_ready {
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
            Ok(()) => {
                super::quiet(&mut conn).await?;
                let script = dir.join("bullmq_worker.mjs");
                peer_json(
                    "node",
                    url,
                    &[
                        script.display().to_string(),
                        "sluice-bench-peer".into(),
                        BULLMQ_JOBS.min(args.events).to_string(),
                        concurrency.to_string(),
                    ],
                )
                .await
            }
        };
        eprintln!("  peer: {peer} {}", brief(&result));
        rows.push(row(&peer, result));
    }
    // What BullMQ's obliterate leaves (its meta and id keys).
    let left: Vec<String> = {
        let mut iter = conn
            .scan_match::<_, String>("bull:sluice-bench-peer*")
            .await?;
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key?);
        }
        keys
    };
    if !left.is_empty() {
        let _: () = redis::cmd("UNLINK")
            .arg(&left)
            .query_async(&mut conn)
            .await?;
    }
    Ok(rows)
}

fn brief(result: &anyhow::Result<(f64, f64)>) -> String {
    match result {
        Ok((rate, _)) => format!("{rate:.0} events/s"),
        Err(e) => format!("skipped: {e:#}"),
    }
}

/// Fail with `missing` unless `program args` runs and succeeds.
async fn check(program: &str, args: &[&str], missing: &str) -> anyhow::Result<()> {
    let ok = tokio::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        anyhow::bail!("{missing}")
    }
}

/// Run a peer script and read its JSON line: (events/s, CPU µs per event). The Redis URL
/// goes in its environment (`SLUICE_BENCH_REDIS`), not its arguments, which `ps` shows.
async fn peer_json(program: &str, url: &str, args: &[String]) -> anyhow::Result<(f64, f64)> {
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(program)
            .args(args)
            .env("SLUICE_BENCH_REDIS", url)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the peer took over 10 minutes")??;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        anyhow::bail!("{program} failed ({}): {last}", out.status);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("reading the peer's report {line:?}"))?;
    let get = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {line:?}"));
    Ok((get("events_per_s")?, get("cpu_us_per_event")?))
}

pub fn print(rows: &[PeerRow], sluice: f64, dir: &Path) {
    println!(
        "peers on the same Redis (scripts in {}), against sluice's wasm no-op at {sluice:.0} events/s:",
        dir.display()
    );
    println!(
        "| {:<34} | {:>10} | {:>10} | {:>12} |",
        "peer", "events/s", "CPU µs/e", "sluice is"
    );
    println!("|{:-<36}|{:-<12}|{:-<12}|{:-<14}|", "", "", "", "");
    for r in rows {
        match (r.events_per_s, r.cpu_us_per_event, r.sluice_ratio) {
            (Some(rate), Some(cpu), Some(ratio)) => println!(
                "| {:<34} | {:>10.0} | {:>10.1} | {:>11.1}× |",
                r.peer, rate, cpu, ratio
            ),
            _ => println!(
                "| {:<34} | skipped: {} |",
                r.peer,
                r.skipped.as_deref().unwrap_or("")
            ),
        }
    }
}
