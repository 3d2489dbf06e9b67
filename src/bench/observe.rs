//! What observing the host costs: the same run with plain logs (filter `warn`: no per-event
//! spans), with the per-event spans (`info`), and with spans plus the Prometheus recorder
//! recording every metric and rendered once a second as a scrape would. Rounds alternate
//! the three, so drift of the machine falls on all of them; the medians are compared.

use std::collections::BTreeMap;
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
            Variant::Plain => "warn",
            Variant::Spans | Variant::Metrics => crate::logging::DEFAULT_FILTER,
        };
        let applied = crate::logging::reload(Some(filter)).map_err(anyhow::Error::msg)?;
        if applied != filter {
            anyhow::bail!(
                "the log filter is fixed by the environment ({applied}); unset SLUICE_LOG"
            );
        }
        self.on
            .store(variant == Variant::Metrics, Ordering::Relaxed);
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
    /// Filter `warn`: no per-event span is made.
    Plain,
    /// Filter `info`: one span per event.
    Spans,
    /// Spans, and every metric recorded into Prometheus.
    Metrics,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Plain, Variant::Spans, Variant::Metrics];

    pub fn key(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Spans => "spans",
            Variant::Metrics => "metrics",
        }
    }
}

/// One mode's medians, and the ratios to the plain runs.
#[derive(Debug, Clone, Serialize)]
pub struct ObserveRow {
    pub mode: &'static str,
    pub rounds: usize,
    pub plain_events_per_s: f64,
    pub spans_events_per_s: f64,
    pub metrics_events_per_s: f64,
    pub spans_vs_plain: f64,
    pub metrics_vs_plain: f64,
    pub metrics_vs_spans: f64,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rounds of each observing variant per mode.
const OBSERVE_ROUNDS: usize = 3;

/// Throughput of the wasm no-op and echo modes with plain logs, spans, and spans + metrics,
/// the variants alternating round by round; medians.
pub(super) async fn cost(
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
    observer: &Observer,
) -> anyhow::Result<Vec<ObserveRow>> {
    let scrape = observer.scrape();
    let mut rows = Vec::new();
    for mode in [Mode::WasmNoop, Mode::Echo] {
        let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for _ in 0..OBSERVE_ROUNDS {
            for variant in Variant::ALL {
                observer.set(variant)?;
                let stream = format!("sluice-bench:{}:observe", mode.key());
                let mut conn = redis.connect(Duration::from_secs(20)).await?;
                cleanup(&mut conn, &stream).await?;
                prefill(&mut conn, &stream, args.events).await?;
                let (rate, _) =
                    consume(mode, args, redis, plugins, &stream, args.events, None).await?;
                cleanup(&mut conn, &stream).await?;
                rates.entry(variant.key()).or_default().push(rate);
            }
        }
        observer.set(Variant::Spans)?;
        let mut m = |k: &str| median(rates.remove(k).unwrap_or_default());
        let (plain, spans, metrics) = (m("plain"), m("spans"), m("metrics"));
        eprintln!(
            "  {:<28} plain {plain:.0}/s, spans {spans:.0}/s, spans+metrics {metrics:.0}/s",
            mode.label()
        );
        rows.push(ObserveRow {
            mode: mode.label(),
            rounds: OBSERVE_ROUNDS,
            plain_events_per_s: plain,
            spans_events_per_s: spans,
            metrics_events_per_s: metrics,
            spans_vs_plain: spans / plain,
            metrics_vs_plain: metrics / plain,
            metrics_vs_spans: metrics / spans,
        });
    }
    scrape.abort();
    Ok(rows)
}

pub(super) fn print_table(args: &BenchArgs, rows: &[ObserveRow]) {
    println!(
        "observing ({} events, batch {}, medians of {OBSERVE_ROUNDS} alternating rounds): plain = log filter warn (no spans), \
         spans = info (a span per event), metrics = spans + Prometheus recorder rendered every second",
        args.events, args.batch
    );
    println!(
        "| {:<28} | {:>9} | {:>9} | {:>9} | {:>11} | {:>13} | {:>13} |",
        "mode", "plain/s", "spans/s", "metrics/s", "spans/plain", "metrics/plain", "metrics/spans"
    );
    println!(
        "|{:-<30}|{:-<11}|{:-<11}|{:-<11}|{:-<13}|{:-<15}|{:-<15}|",
        "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<28} | {:>9.0} | {:>9.0} | {:>9.0} | {:>11.3} | {:>13.3} | {:>13.3} |",
            r.mode,
            r.plain_events_per_s,
            r.spans_events_per_s,
            r.metrics_events_per_s,
            r.spans_vs_plain,
            r.metrics_vs_plain,
            r.metrics_vs_spans
        );
    }
}
