//! `sluice bench --cluster`: sluice on a Redis Cluster, in one run, as ratios:
//!
//! - a job on one stream (one slot: one master's core) against a job over partitioned
//!   streams spread over every master (a family of jobs, one per partition);
//! - an emit to a stream of the job's own slot (written in the commit) against one to a
//!   stream of another slot (appended to the outbox in the commit, then forwarded): what
//!   forwarding costs, measured to the last entry's arrival at its target.
//!
//! Against `--redis redis+cluster://…` when given, else a local cluster of `redis-server`
//! processes (3 masters, no replicas, append-only files on) made with `redis-cli --cluster
//! create` and stopped at the end.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::load::{Tally, prefill};
use super::{BenchArgs, Plugins, assembly, job_spec, prepared};
use crate::model::JobSpec;
use crate::store::Endpoint;
use crate::store::forward::{Outbox, keep_forwarding};

/// Masters of the local cluster.
const MASTERS: usize = 3;

/// Partitions of the partitioned job: two per master.
const PARTITIONS: u32 = 6;

/// A local Redis Cluster of `redis-server` children, killed when dropped.
struct LocalCluster {
    _nodes: Vec<Child>,
    /// The nodes' data, removed with them.
    dir: std::path::PathBuf,
    url: String,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port pair for a cluster node")
}

impl LocalCluster {
    async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sluice-bench-cluster-{}", std::process::id()));
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for n in 0..MASTERS {
            let port = free_cluster_port()?;
            let node_dir = dir.join(format!("node{n}"));
            std::fs::create_dir_all(&node_dir)?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&node_dir)
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                    "--logfile",
                    "redis.log",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting redis-server (is it installed? make deps)")?;
            nodes.push(child);
            addrs.push(format!("127.0.0.1:{port}"));
        }
        for addr in &addrs {
            let url = format!("redis://{addr}");
            let client = redis::Client::open(url.as_str())?;
            let started = Instant::now();
            loop {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await
                    && redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok()
                {
                    break;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    bail!("cluster node {addr} did not answer");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .context("redis-cli --cluster create")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            );
        }
        let url = format!("redis+cluster://{}", addrs.join(","));
        // Every node agrees the cluster is up.
        let started = Instant::now();
        'wait: loop {
            for addr in &addrs {
                let client = redis::Client::open(format!("redis://{addr}"))?;
                let mut c = client.get_multiplexed_async_connection().await?;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await?;
                if !info.contains("cluster_state:ok") {
                    if started.elapsed() > Duration::from_secs(30) {
                        bail!("the local cluster did not reach cluster_state:ok");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'wait;
                }
            }
            break;
        }
        Ok(LocalCluster {
            _nodes: nodes,
            dir,
            url,
        })
    }
}

/// One mode of the cluster section.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRow {
    pub mode: &'static str,
    pub events_per_s: f64,
    /// Its ratio to the row it is compared with (the first of its pair).
    pub ratio: f64,
}

/// Drain `events` entries of `spec`'s source(s) (a family: each member's share) through
/// `plugin`'s runners, one per member; with `target`, until that stream holds them all.
async fn drain(
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
    family: &JobSpec,
    echo: bool,
    target: Option<&str>,
) -> anyhow::Result<f64> {
    let members = family
        .expand()
        .map_err(|(f, m)| anyhow::anyhow!("{f}: {m}"))?;
    let mut conn = redis.connect(Duration::from_secs(20)).await?;
    let share = args.events / members.len() as u64;
    let total = share * members.len() as u64;
    let a = assembly(redis);
    let streams: Vec<String> = members.iter().map(|m| a.keys.source_stream(m)).collect();
    for stream in &streams {
        let _: () = redis::cmd("DEL").arg(stream).query_async(&mut conn).await?;
        prefill(&mut conn, stream, share, None).await?;
    }
    if let Some(target) = target {
        let _: () = redis::cmd("DEL").arg(target).query_async(&mut conn).await?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    // Runs until stopped: with a target, its arrivals stop the run, not the commits.
    let tally = Arc::new(Tally::new(
        if target.is_some() { 0 } else { total },
        stop_tx.clone(),
    ));
    let mut tasks = Vec::new();
    let mut forwarders = Vec::new();
    for m in &members {
        let plugin = if echo { &plugins.echo } else { &plugins.noop };
        let handler = prepared(plugin, m).await?;
        let runner = a.source_runner(m, None, Box::new(handler)).await?;
        tasks.push(tokio::spawn(
            runner.with_observer(tally.clone()).run(stop_rx.clone()),
        ));
        if target.is_some() {
            let outbox = Outbox {
                job: m.name.clone(),
                source: a.keys.source_stream(m),
                keys: a.keys.clone(),
                holder: a.consumer.clone(),
                wait_replicas: 0,
                wait_timeout_ms: 1000,
            };
            let conn = redis.connect(Duration::from_secs(2)).await?;
            forwarders.push(tokio::spawn(keep_forwarding(
                conn,
                outbox,
                stop_rx.clone(),
                Duration::ZERO,
            )));
        }
    }
    let started = Instant::now();
    let elapsed = match target {
        None => {
            for t in tasks {
                t.await??;
            }
            tally.elapsed()
        }
        Some(target) => {
            loop {
                let n: u64 = redis::cmd("XLEN")
                    .arg(target)
                    .query_async(&mut conn)
                    .await?;
                if n >= total {
                    break;
                }
                if started.elapsed() > Duration::from_secs(600) {
                    bail!("{target}: {n} of {total} arrived in 10 minutes");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let took = started.elapsed();
            let _ = stop_tx.send(true);
            for t in tasks {
                t.await??;
            }
            for f in forwarders {
                f.abort();
            }
            took
        }
    };
    for stream in &streams {
        let _: () = redis::cmd("DEL").arg(stream).query_async(&mut conn).await?;
    }
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// The cluster section: its rows, each pair's second against its first.
pub async fn run(
    args: &BenchArgs,
    redis: Option<Endpoint>,
    plugins: &Plugins,
) -> anyhow::Result<(Vec<ClusterRow>, String)> {
    let local;
    let redis = match redis {
        Some(r) if r.is_cluster() => r,
        Some(r) => bail!("--cluster: {r} is not a Redis Cluster (a redis+cluster:// URL is)"),
        None => {
            eprintln!("  starting a local cluster of {MASTERS} masters");
            local = LocalCluster::start().await?;
            Endpoint::local(&local.url)?
        }
    };
    let spec = |name: &str, source: &str, config: &[(&str, &str)]| {
        let mut s = job_spec(name, source, args.batch, config);
        s.allowed_streams = vec!["cb*".into()];
        s
    };
    let one = spec("one", "stream:cb:{one}", &[]);
    let parted = spec(
        "parted",
        &format!("stream:cb:{{0..{}}}", PARTITIONS - 1),
        &[],
    );
    let direct = spec("direct", "stream:cb:{e}", &[("target", "cb:{e}:out")]);
    let forwarded = spec("fwd", "stream:cb:{f}", &[("target", "cb-out")]);
    let mut rows = Vec::new();
    let mut runs: [Vec<f64>; 4] = Default::default();
    for round in 0..args.repeat {
        eprintln!("  cluster round {} of {}", round + 1, args.repeat);
        runs[0].push(drain(args, &redis, plugins, &one, false, None).await?);
        runs[1].push(drain(args, &redis, plugins, &parted, false, None).await?);
        runs[2].push(drain(args, &redis, plugins, &direct, true, Some("cb:{e}:out")).await?);
        runs[3].push(drain(args, &redis, plugins, &forwarded, true, Some("cb-out")).await?);
    }
    let med: Vec<f64> = runs.iter().map(|r| super::median(r)).collect();
    let labels = [
        "wasm no-op, one stream (one master)",
        "wasm no-op, 6 partitions (3 masters)",
        "echo, target in the job's slot",
        "echo, target in another slot (outbox)",
    ];
    for (i, label) in labels.into_iter().enumerate() {
        rows.push(ClusterRow {
            mode: label,
            events_per_s: med[i],
            ratio: med[i] / med[i - i % 2],
        });
    }
    Ok((rows, redis.to_string()))
}

pub fn print(args: &BenchArgs, rows: &[ClusterRow], redis: &str) {
    println!(
        "sluice bench --cluster: {} events per run, median of {} rounds, batch {}, redis {redis}",
        args.events, args.repeat, args.batch
    );
    println!("| {:<40} | {:>10} | {:>9} |", "mode", "events/s", "ratio");
    println!("|{:-<42}|{:-<12}|{:-<11}|", "", "", "");
    for r in rows {
        println!(
            "| {:<40} | {:>10.0} | {:>8.2}× |",
            r.mode, r.events_per_s, r.ratio
        );
    }
}
