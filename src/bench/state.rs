//! A state-reading job on one host and on two: the `chaos` plugin's `kv-incr` (get a kv key,
//! set it plus one) on every event, with every event on one hot key or spread over 1000 keys.
//! Two hosts are two runners of the same job in this process, each with its own consumer
//! name and connections, as two `sluice run` processes would be. Reported: events/s, the
//! conflicts (commits refused because the other host wrote what a batch read, each handled
//! again), and whether the keys' sum came out exact.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::load::{Tally, cleanup};
use super::{BenchArgs, Plugins, assembly, job_spec};
use crate::host::job::prepare_handler_async;
use crate::store::Endpoint;

#[derive(Debug, Clone, Serialize)]
pub struct StateRow {
    /// Distinct keys the events update.
    pub keys: usize,
    pub hosts: usize,
    pub events: u64,
    pub events_per_s: f64,
    /// Commits refused for a conflict (each batch then handled again).
    pub conflicts: u64,
    /// Batches committed.
    pub batches: u64,
    /// Deliveries that failed (a conflict lost 20 times in a row, or a plugin error).
    pub failed: u64,
    /// The keys' values summed to the number of events.
    pub exact: bool,
}

pub async fn stateful(
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
) -> anyhow::Result<Vec<StateRow>> {
    // Each event costs a read of its key: a tenth of the throughput runs' events suffices.
    let events = (args.events / 10).max(2000);
    let mut rows = Vec::new();
    for keys in [1usize, 1000] {
        for hosts in [1usize, 2] {
            let row = run(args, redis, plugins, keys, hosts, events).await?;
            eprintln!(
                "  stateful, {keys} key(s), {hosts} host(s): {:>8.0} events/s, {} conflicts in {} batches",
                row.events_per_s, row.conflicts, row.batches
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

async fn run(
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
    keys: usize,
    hosts: usize,
    events: u64,
) -> anyhow::Result<StateRow> {
    let stream = format!("sluice-bench:state:{keys}:{hosts}");
    let mut conn = redis.connect(Duration::from_secs(20)).await?;
    cleanup(&mut conn, &stream).await?;
    super::quiet(&mut conn).await?;
    let mut sent = 0;
    while sent < events {
        let chunk = (events - sent).min(1000);
        let mut pipe = redis::pipe();
        for i in sent..sent + chunk {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("action")
                .arg("kv-incr")
                .arg("key")
                .arg(i % keys as u64)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        sent += chunk;
    }
    let spec = job_spec("chaos", &stream, args.batch, &[]);
    let mut runners = Vec::new();
    for host in 0..hosts {
        let mut assembly = assembly(redis);
        assembly.consumer = format!("bench-{host}");
        let state = assembly.state(&spec).await?;
        let handler = prepare_handler_async(
            plugins.chaos.clone(),
            spec.clone(),
            "sluice-bench".into(),
            Some(state),
        )
        .await?;
        runners.push(
            assembly
                .source_runner(&spec, None, Box::new(handler))
                .await?,
        );
    }
    // The clock starts once every host is ready.
    let (stop_tx, stop_rx) = watch::channel(false);
    let tally = Arc::new(Tally::new(events, stop_tx));
    let runs: Vec<_> = runners
        .into_iter()
        .map(|r| tokio::spawn(r.with_observer(tally.clone()).run(stop_rx.clone())))
        .collect();
    let (mut conflicts, mut batches, mut failed) = (0, 0, 0);
    for run in runs {
        let stats = run.await??;
        conflicts += stats.conflicts;
        batches += stats.batches;
        failed += stats.committed.failed;
    }
    let elapsed = tally.elapsed();
    let job_key = assembly(redis).keys.job("bench", &stream);
    let mut sum = 0u64;
    for key in 0..keys {
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{job_key}:kv:{key}"))
            .query_async(&mut conn)
            .await?;
        sum += value.and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    cleanup(&mut conn, &stream).await?;
    Ok(StateRow {
        keys,
        hosts,
        events,
        events_per_s: events as f64 / elapsed.as_secs_f64(),
        conflicts,
        batches,
        failed,
        exact: sum == events,
    })
}
