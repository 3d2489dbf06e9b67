//! What observing the host costs. Two measurements:
//! - end to end: the same run unobserved (log filter `warn`, the metrics recorder switched
//!   off) and observed (`info`, every metric recorded into Prometheus, rendered once a second
//!   as a scrape would), in alternating rounds so that the machine's drift falls on both;
//!   medians, and the spread of the round-by-round ratios;
//! - in isolation: the metric calls one batch makes, timed in a loop with the recorder on —
//!   the cost per event is that over the batch size.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};
use serde::Serialize;

use super::load::{cleanup, prefill};
use super::{BenchArgs, Mode, Plugins, consume};
use crate::store::Endpoint;

/// A recorder that records into Prometheus while switched on, and is a no-op otherwise
/// (a global recorder cannot be uninstalled).
struct Switch {
    on: Arc<AtomicBool>,
    inner: PrometheusRecorder,
}

impl Recorder for Switch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match self.on.load(Ordering::Relaxed) {
            true => self.inner.register_counter(key, metadata),
            false => Counter::noop(),
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match self.on.load(Ordering::Relaxed) {
            true => self.inner.register_gauge(key, metadata),
            false => Gauge::noop(),
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match self.on.load(Ordering::Relaxed) {
            true => self.inner.register_histogram(key, metadata),
            false => Histogram::noop(),
        }
    }
}

/// The switch of this process's recorder, installed on first use.
pub struct Observer {
    on: Arc<AtomicBool>,
    handle: PrometheusHandle,
}

impl Observer {
    pub fn install() -> anyhow::Result<Observer> {
        let inner = crate::host::admin::prometheus()?.build_recorder();
        let handle = inner.handle();
        let on = Arc::new(AtomicBool::new(false));
        metrics::set_global_recorder(Switch {
            on: on.clone(),
            inner,
        })
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
        Ok(Observer { on, handle })
    }

    /// Set how the next run is observed.
    pub fn set(&self, variant: Variant) -> anyhow::Result<()> {
        let filter = match variant {
            Variant::Off => "warn",
            Variant::On => crate::logging::DEFAULT_FILTER,
        };
        let applied = crate::logging::reload(Some(filter)).map_err(anyhow::Error::msg)?;
        if applied != filter {
            anyhow::bail!(
                "the log filter is fixed by the environment ({applied}); unset SLUICE_LOG"
            );
        }
        self.on.store(variant == Variant::On, Ordering::Relaxed);
        Ok(())
    }

    /// While the recorder is on: render the metrics once a second, as a scrape would.
    pub fn scrape(&self) -> tokio::task::JoinHandle<()> {
        let (handle, on) = (self.handle.clone(), self.on.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if on.load(Ordering::Relaxed) {
                    std::hint::black_box(handle.render());
                }
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Filter `warn`, recorder off.
    Off,
    /// Filter `info`, every metric recorded.
    On,
}
/// One mode, observed and not.
#[derive(Debug, Clone, Serialize)]
pub struct ObserveRow {
    pub mode: &'static str,
    pub rounds: usize,
    pub off_events_per_s: f64,
    pub on_events_per_s: f64,
    /// Median of on / off.
    pub on_vs_off: f64,
    /// The smallest and largest on/off ratio of one round.
    pub round_ratio_min: f64,
    pub round_ratio_max: f64,
}

/// The metric calls of one batch, timed with the recorder on.
#[derive(Debug, Clone, Serialize)]
pub struct Recording {
    pub ns_per_batch: f64,
    pub ns_per_event: f64,
    /// `ns_per_event` as a share of one event's time in the wasm no-op mode (unobserved).
    pub share_of_wasm_noop_event: f64,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rounds of each variant per mode.
const OBSERVE_ROUNDS: usize = 5;

/// Throughput of the wasm no-op and echo modes unobserved and observed, alternating round
/// by round; then the metric calls of a batch in isolation.
pub(super) async fn cost(
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
    observer: &Observer,
) -> anyhow::Result<(Vec<ObserveRow>, Recording)> {
    let scrape = observer.scrape();
    let mut rows = Vec::new();
    for mode in [Mode::WasmNoop, Mode::Echo] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..OBSERVE_ROUNDS {
            // Which goes first alternates too.
            let order = if round % 2 == 0 {
                [Variant::Off, Variant::On]
            } else {
                [Variant::On, Variant::Off]
            };
            for variant in order {
                observer.set(variant)?;
                let stream = format!("sluice-bench:{}:observe", mode.key());
                let mut conn = redis.connect(Duration::from_secs(20)).await?;
                cleanup(&mut conn, &stream).await?;
                prefill(&mut conn, &stream, args.events, None).await?;
                super::quiet(&mut conn).await?;
                let rate = consume(mode, args, redis, plugins, &stream, args.events, None)
                    .await?
                    .events_per_s;
                cleanup(&mut conn, &stream).await?;
                match variant {
                    Variant::Off => off.push(rate),
                    Variant::On => on.push(rate),
                }
            }
        }
        observer.set(Variant::On)?;
        let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(0.0, f64::max);
        let (off, on) = (median(off), median(on));
        eprintln!(
            "  {:<28} unobserved {off:.0}/s, observed {on:.0}/s (rounds: {min:.3}..{max:.3})",
            mode.label()
        );
        rows.push(ObserveRow {
            mode: mode.label(),
            rounds: OBSERVE_ROUNDS,
            off_events_per_s: off,
            on_events_per_s: on,
            on_vs_off: on / off,
            round_ratio_min: min,
            round_ratio_max: max,
        });
    }
    scrape.abort();
    let recording = recording_cost(args.batch, rows[0].off_events_per_s);
    Ok((rows, recording))
}

/// The metric calls a batch makes (handled, committed, commit time), timed in a loop.
fn recording_cost(batch: usize, wasm_noop_per_s: f64) -> Recording {
    const BATCHES: u32 = 200_000;
    let version = "ff624b05405f0000000000000000000000000000000000000000000000000000";
    let started = std::time::Instant::now();
    for _ in 0..BATCHES {
        crate::metrics::handled("bench", batch, Duration::from_micros(700));
        crate::metrics::commit_time("bench", Duration::from_micros(900));
        crate::metrics::committed(
            "bench",
            version,
            [
                ("acked", batch as u64),
                ("skipped", 0),
                ("retried", 0),
                ("failed", 0),
                ("dead", 0),
            ],
        );
    }
    let ns_per_batch = started.elapsed().as_nanos() as f64 / f64::from(BATCHES);
    let ns_per_event = ns_per_batch / batch as f64;
    Recording {
        ns_per_batch,
        ns_per_event,
        share_of_wasm_noop_event: ns_per_event / (1e9 / wasm_noop_per_s),
    }
}

pub(super) fn print_table(args: &BenchArgs, rows: &[ObserveRow], recording: &Recording) {
    println!(
        "observing ({} events, batch {}, medians of {OBSERVE_ROUNDS} alternating rounds): unobserved = log \
         filter warn, metrics recorder off; observed = info, every metric recorded into Prometheus, \
         rendered every second",
        args.events, args.batch
    );
    println!(
        "| {:<28} | {:>12} | {:>10} | {:>8} | {:>13} |",
        "mode", "unobserved/s", "observed/s", "ratio", "round ratios"
    );
    println!(
        "|{:-<30}|{:-<14}|{:-<12}|{:-<10}|{:-<15}|",
        "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<28} | {:>12.0} | {:>10.0} | {:>8.3} | {:>5.3}..{:<5.3} |",
            r.mode,
            r.off_events_per_s,
            r.on_events_per_s,
            r.on_vs_off,
            r.round_ratio_min,
            r.round_ratio_max
        );
    }
    println!(
        "metric calls of one batch, recorder on: {:.0} ns per batch = {:.1} ns per event = {:.2}% of a wasm no-op event's time",
        recording.ns_per_batch,
        recording.ns_per_event,
        100.0 * recording.share_of_wasm_noop_event
    );
}
