//! What a hot swap under full load costs: the gaps between consecutive commits around the
//! swap, against those elsewhere in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::load::{cleanup, prefill};
use super::{BenchArgs, Plugins, assembly, job_spec, prepared};
use crate::model::{Event, Outcome};
use crate::runner::{CommitObserver, Stamps};
use crate::store::Endpoint;

/// What a hot swap under load costs: gaps between consecutive commits.
#[derive(Debug, Clone, Serialize)]
pub struct SwapPause {
    /// The largest gap among the few commits right after the new handler was sent.
    pub gap_at_swap_ms: f64,
    /// Gaps over the rest of the run.
    pub p50_gap_ms: f64,
    pub p99_gap_ms: f64,
    pub max_gap_elsewhere_ms: f64,
}

/// Records when each batch was committed; stops the runner at the target.
struct CommitTimes {
    times: Mutex<Vec<Instant>>,
    count: AtomicU64,
    target: u64,
    stop: watch::Sender<bool>,
}

impl CommitObserver for CommitTimes {
    fn committed(&self, events: &[Event], _outcomes: &[Outcome], _stamps: &Stamps) {
        if let Ok(mut t) = self.times.lock() {
            t.push(Instant::now());
        }
        let total =
            self.count.fetch_add(events.len() as u64, Ordering::SeqCst) + events.len() as u64;
        if total >= self.target {
            let _ = self.stop.send(true);
        }
    }
}

/// Drain `args.events` entries through echo and hand the runner a freshly prepared echo
/// handler half-way, as a hot swap does (preparation happens before, off the job's path).
pub async fn swap_pause(
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
) -> anyhow::Result<SwapPause> {
    let stream = "sluice-bench:swap";
    let mut conn = redis.connect(Duration::from_secs(20)).await?;
    cleanup(&mut conn, stream).await?;
    prefill(&mut conn, stream, args.events, None).await?;
    super::quiet(&mut conn).await?;
    let spec = job_spec(
        "echo",
        stream,
        args.batch,
        &[("target", "sluice-bench:swap:out")],
    );
    let handler = prepared(&plugins.echo, &spec).await?;
    let next = prepared(&plugins.echo, &spec).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let times = Arc::new(CommitTimes {
        times: Mutex::new(Vec::new()),
        count: AtomicU64::new(0),
        target: args.events,
        stop: stop_tx,
    });
    let runner = assembly(redis)
        .source_runner(&spec, None, Box::new(handler))
        .await?
        .with_observer(times.clone());
    let swapper = runner.swapper();
    let run = tokio::spawn(runner.run(stop_rx));
    while times.count.load(Ordering::SeqCst) < args.events / 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let swapped_at = Instant::now();
    swapper.put(Box::new(next));
    run.await??;
    cleanup(&mut conn, stream).await?;
    cleanup(&mut conn, "sluice-bench:swap:out").await?;
    let times = times.times.lock().map(|t| t.clone()).unwrap_or_default();
    let gaps: Vec<(Instant, f64)> = times
        .windows(2)
        .map(|w| (w[1], (w[1] - w[0]).as_secs_f64() * 1000.0))
        .collect();
    // The batch in the handler when the swap was sent, the one after it (on the new
    // handler) and the one the pipeline read meanwhile are committed within these.
    let first_after = gaps.iter().position(|(t, _)| *t >= swapped_at).unwrap_or(0);
    let around = first_after..(first_after + 3).min(gaps.len());
    let gap_at_swap_ms = gaps[around.clone()]
        .iter()
        .map(|(_, g)| *g)
        .fold(0.0, f64::max);
    let mut elsewhere: Vec<f64> = gaps
        .iter()
        .enumerate()
        .filter(|(i, _)| !around.contains(i))
        .map(|(_, (_, g))| *g)
        .collect();
    elsewhere.sort_by(f64::total_cmp);
    let at = |q: f64| {
        elsewhere
            .get(((elsewhere.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(SwapPause {
        gap_at_swap_ms,
        p50_gap_ms: at(0.5),
        p99_gap_ms: at(0.99),
        max_gap_elsewhere_ms: elsewhere.last().copied().unwrap_or(0.0),
    })
}
