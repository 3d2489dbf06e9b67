//! `sluice bench`: end-to-end throughput and publish→ack latency of the host, against
//! baselines run in the same process on the same Redis:
//!
//! - `bare loop`: a plain redis-rs `XREADGROUP`/`XACK` loop — the Redis limit;
//! - `host, native no-op`: the job runner and commit script with a handler compiled in;
//! - `host, native, done records`: the same, also writing a status record for every event
//!   (`done_ttl_s = 600`; by default only events that failed get one);
//! - `host, wasm no-op`: the same with the `chaos` plugin answering `ack` (no effects);
//! - `host, echo plugin`: the `echo` plugin, which emits every event to another stream.
//!
//! Throughput: a stream pre-filled with `--events` entries is drained; events/s is entries
//! over the time to ack the last one. Latency: entries are published at a fixed rate (default:
//! half of that mode's measured throughput) for `--latency-secs`, each stamped with its publish
//! time; the latency of an entry is the time from that stamp to the end of the commit that
//! acked it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio::sync::watch;

use crate::event::{Disposition, Event, Handler, Outcome};
use crate::policy::DeliveryPolicy;
use crate::runner::{CommitObserver, JobRunner, ReadPolicy};
use crate::runtime::{GuestContext, Limits, LoadedPlugin, PluginHandler, Runtime};
use crate::store::embedded::EmbeddedRedis;
use crate::store::stream::{self, StartFrom, StreamJob, parse_read_reply};
use crate::store::{self, Keys};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Entries drained in each throughput run
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Batch size (entries per read and commit) for every mode
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Seconds of paced publishing in each latency run
    #[arg(long, default_value_t = 3)]
    pub latency_secs: u64,
    /// Publish rate of the latency runs, events/s [default: half of each mode's throughput]
    #[arg(long)]
    pub rate: Option<u64>,
    /// Directory holding echo.wasm and chaos.wasm
    #[arg(long, default_value = "plugins/dist")]
    pub plugin_dir: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    NativeDoneRecords,
    Native,
    WasmNoop,
    Echo,
    /// wordcount in this language, on entries without a `text` field: one call, `skip`.
    Guest(&'static str),
}

/// The languages of the wordcount plugins benchmarked (rows of unbuilt ones are left out).
const GUESTS: [&str; 5] = ["rust", "c", "go", "python", "js"];

impl Mode {
    const ALL: [Mode; 10] = [
        Mode::Bare,
        Mode::Native,
        Mode::NativeDoneRecords,
        Mode::WasmNoop,
        Mode::Echo,
        Mode::Guest(GUESTS[0]),
        Mode::Guest(GUESTS[1]),
        Mode::Guest(GUESTS[2]),
        Mode::Guest(GUESTS[3]),
        Mode::Guest(GUESTS[4]),
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::Bare => "bare XREADGROUP/XACK loop",
            Mode::NativeDoneRecords => "host, native, done records",
            Mode::Native => "host, native no-op handler",
            Mode::WasmNoop => "host, wasm no-op (chaos)",
            Mode::Echo => "host, echo plugin (emits)",
            Mode::Guest("rust") => "host, rust wordcount (skips)",
            Mode::Guest("c") => "host, c wordcount (skips)",
            Mode::Guest("go") => "host, go wordcount (skips)",
            Mode::Guest("python") => "host, python wordcount (skips)",
            Mode::Guest(_) => "host, js wordcount (skips)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::NativeDoneRecords => "native-done-records",
            Mode::Native => "native",
            Mode::WasmNoop => "wasm-noop",
            Mode::Echo => "echo",
            Mode::Guest(lang) => lang,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    mode: &'static str,
    events_per_s: f64,
    vs_bare: f64,
    latency_rate: u64,
    p50_ms: f64,
    p99_ms: f64,
}

struct Plugins {
    echo: Arc<LoadedPlugin>,
    chaos: Arc<LoadedPlugin>,
    /// wordcount-<lang> for each of [`GUESTS`] that is built.
    wordcount: BTreeMap<&'static str, Arc<LoadedPlugin>>,
}

pub async fn run(args: &BenchArgs, url: Option<String>) -> anyhow::Result<()> {
    let runtime = Runtime::new(None)?;
    let load = |name: &str| {
        let path = args.plugin_dir.join(format!("{name}.wasm"));
        runtime
            .load_file(name, &path)
            .with_context(|| "build the plugins first: make plugins")
    };
    let optional = |name: &str| {
        let path = args.plugin_dir.join(format!("{name}.wasm"));
        path.exists().then(|| load(name)).transpose()
    };
    let plugins = Plugins {
        echo: load("echo")?,
        chaos: load("chaos")?,
        wordcount: GUESTS
            .into_iter()
            .filter_map(|lang| {
                optional(&format!("wordcount-{lang}"))
                    .transpose()
                    .map(|p| p.map(|p| (lang, p)))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let scratch = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let (url, embedded) = match url {
        Some(url) => (url, None),
        None => {
            let e = EmbeddedRedis::start(&scratch).await?;
            (e.url(), Some(e))
        }
    };
    let result = async {
        let rows = measure(args, &url, &plugins).await?;
        let swap = swap_pause(args, &url, &plugins).await?;
        anyhow::Ok((rows, swap))
    }
    .await;
    if let Some(e) = embedded {
        e.stop().await;
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let (rows, swap) = result?;
    if args.json {
        let report = serde_json::json!({ "modes": rows, "swap": swap });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(args, &url, &rows);
        println!(
            "hot swap of echo under full load ({} events, batch {}): the commits around the swap \
             were at most {:.2} ms apart; elsewhere in the run p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            args.events,
            args.batch,
            swap.gap_at_swap_ms,
            swap.p50_gap_ms,
            swap.p99_gap_ms,
            swap.max_gap_elsewhere_ms
        );
    }
    Ok(())
}

/// What a hot swap under load costs: gaps between consecutive commits.
#[derive(Debug, Clone, Serialize)]
struct SwapPause {
    /// The largest gap among the few commits right after the new handler was sent.
    gap_at_swap_ms: f64,
    /// Gaps over the rest of the run.
    p50_gap_ms: f64,
    p99_gap_ms: f64,
    max_gap_elsewhere_ms: f64,
}

/// Records when each batch was committed; stops the runner at the target.
struct CommitTimes {
    times: Mutex<Vec<Instant>>,
    count: AtomicU64,
    target: u64,
    stop: watch::Sender<bool>,
}

impl CommitObserver for CommitTimes {
    fn committed(&self, events: &[Event], _outcomes: &[Outcome]) {
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
async fn swap_pause(args: &BenchArgs, url: &str, plugins: &Plugins) -> anyhow::Result<SwapPause> {
    let stream = "sluice-bench:swap";
    let mut conn = store::connect(url, Duration::from_secs(30)).await?;
    cleanup(&mut conn, stream).await?;
    prefill(&mut conn, stream, args.events).await?;
    let keys = Keys::new("sluice-bench");
    let job = StreamJob::new(&keys, "bench", "echo", stream, "bench");
    let commit_conn = store::connect(url, Duration::from_secs(30)).await?;
    let source = stream::open(conn.clone(), commit_conn, job, StartFrom::Beginning).await?;
    let config = [("target", "sluice-bench:swap:out")];
    let handler = prepared(&plugins.echo, stream, &config).await?;
    let next = prepared(&plugins.echo, stream, &config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let times = Arc::new(CommitTimes {
        times: Mutex::new(Vec::new()),
        count: AtomicU64::new(0),
        target: args.events,
        stop: stop_tx,
    });
    let policy = ReadPolicy {
        batch: args.batch,
        block_ms: 100,
        claim_idle_ms: 30_000,
    };
    let runner = JobRunner::new(source, Box::new(handler), policy, DeliveryPolicy::default())
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

async fn measure(args: &BenchArgs, url: &str, plugins: &Plugins) -> anyhow::Result<Vec<Row>> {
    let mut throughput = Vec::new();
    let available = |mode: &Mode| match mode {
        Mode::Guest(lang) => plugins.wordcount.contains_key(lang),
        _ => true,
    };
    for mode in Mode::ALL.into_iter().filter(available) {
        let stream = format!("sluice-bench:{}:tput", mode.key());
        let mut conn = store::connect(url, Duration::from_secs(30)).await?;
        cleanup(&mut conn, &stream).await?;
        prefill(&mut conn, &stream, args.events).await?;
        let (rate, _) = consume(mode, args, url, plugins, &stream, args.events, None).await?;
        cleanup(&mut conn, &stream).await?;
        eprintln!("  {:<28} {:>10.0} events/s", mode.label(), rate);
        throughput.push((mode, rate));
    }
    let bare = throughput[0].1;
    let mut rows = Vec::new();
    for (mode, events_per_s) in throughput {
        let rate = args.rate.unwrap_or((events_per_s / 2.0) as u64).max(1);
        let stream = format!("sluice-bench:{}:lat", mode.key());
        let mut conn = store::connect(url, Duration::from_secs(30)).await?;
        cleanup(&mut conn, &stream).await?;
        let (_, hist) = consume(mode, args, url, plugins, &stream, 0, Some(rate)).await?;
        cleanup(&mut conn, &stream).await?;
        rows.push(Row {
            mode: mode.label(),
            events_per_s,
            vs_bare: events_per_s / bare,
            latency_rate: rate,
            p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        });
    }
    Ok(rows)
}

fn print_table(args: &BenchArgs, url: &str, rows: &[Row]) {
    println!(
        "sluice bench: {} events per throughput run, batch {}, latency over {} s of paced publishing, redis {}",
        args.events,
        args.batch,
        args.latency_secs,
        store::redact_url(url)
    );
    println!(
        "| {:<30} | {:>10} | {:>7} | {:>12} | {:>8} | {:>8} |",
        "mode", "events/s", "vs bare", "latency at/s", "p50 ms", "p99 ms"
    );
    println!(
        "|{:-<32}|{:-<12}|{:-<9}|{:-<14}|{:-<10}|{:-<10}|",
        "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<30} | {:>10.0} | {:>6.0}% | {:>12} | {:>8.2} | {:>8.2} |",
            r.mode,
            r.events_per_s,
            r.vs_bare * 100.0,
            r.latency_rate,
            r.p50_ms,
            r.p99_ms
        );
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Delete everything a run wrote: the streams, and every `sluice-bench:*` key (job hash,
/// retry set, status records…).
async fn cleanup(conn: &mut ConnectionManager, stream: &str) -> anyhow::Result<()> {
    let _: () = redis::pipe()
        .del(stream)
        .del(format!("{stream}:out"))
        .query_async(conn)
        .await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("sluice-bench*")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

async fn prefill(conn: &mut ConnectionManager, stream: &str, n: u64) -> anyhow::Result<()> {
    let mut sent = 0;
    while sent < n {
        let chunk = (n - sent).min(1000);
        let mut pipe = redis::pipe();
        for _ in 0..chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("t")
                .arg(0)
                .arg("payload")
                .arg(PAYLOAD)
                .ignore();
        }
        let _: () = pipe.query_async(conn).await?;
        sent += chunk;
    }
    Ok(())
}

/// Publish at `rate` events/s for `secs`; returns how many were published.
async fn publish_paced(url: &str, stream: &str, rate: u64, secs: u64) -> anyhow::Result<u64> {
    let mut conn = store::connect(url, Duration::from_secs(30)).await?;
    let started = Instant::now();
    let total = rate * secs;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due <= sent {
            continue;
        }
        let mut pipe = redis::pipe();
        let t = now_us();
        for _ in sent..due {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("t")
                .arg(t)
                .arg("payload")
                .arg(PAYLOAD)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        sent = due;
    }
    Ok(sent)
}

/// Counts committed events, records latencies, and stops the consumer at the target.
struct Tally {
    count: AtomicU64,
    /// Stop once this many were committed (set after publishing when pacing).
    target: AtomicU64,
    started: Instant,
    finished: Mutex<Option<Duration>>,
    hist: Mutex<Histogram<u64>>,
    stop: watch::Sender<bool>,
}

impl Tally {
    fn new(target: u64, stop: watch::Sender<bool>) -> Self {
        Tally {
            count: AtomicU64::new(0),
            target: AtomicU64::new(if target == 0 { u64::MAX } else { target }),
            started: Instant::now(),
            finished: Mutex::new(None),
            hist: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ),
            stop,
        }
    }

    fn add(&self, events: &[Event]) {
        let now = now_us();
        if let Ok(mut hist) = self.hist.lock() {
            for e in events {
                let t = e
                    .fields
                    .iter()
                    .find(|(k, _)| k == "t")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                if t > 0 {
                    let _ = hist.record(now.saturating_sub(t).max(1));
                }
            }
        }
        self.add_count(events.len() as u64);
    }

    fn add_count(&self, n: u64) {
        let total = self.count.fetch_add(n, Ordering::SeqCst) + n;
        self.check(total);
    }

    fn check(&self, total: u64) {
        if total >= self.target.load(Ordering::SeqCst) {
            if let Ok(mut f) = self.finished.lock()
                && f.is_none()
            {
                *f = Some(self.started.elapsed());
            }
            let _ = self.stop.send(true);
        }
    }

    fn set_target(&self, target: u64) {
        self.target.store(target, Ordering::SeqCst);
        self.check(self.count.load(Ordering::SeqCst));
    }
}

impl CommitObserver for Tally {
    fn committed(&self, events: &[Event], _outcomes: &[Outcome]) {
        self.add(events);
    }
}

struct NoopHandler;

impl Handler for NoopHandler {
    fn handle_batch(&mut self, events: &[Event]) -> Vec<Outcome> {
        events
            .iter()
            .map(|_| Outcome::Handled {
                disposition: Disposition::Ack,
                effects: Vec::new(),
            })
            .collect()
    }
}

/// Run one mode's consumer on `stream` until `target` events were committed (throughput),
/// or while publishing at `rate` (latency). Returns events/s and the latency histogram.
async fn consume(
    mode: Mode,
    args: &BenchArgs,
    url: &str,
    plugins: &Plugins,
    stream: &str,
    target: u64,
    rate: Option<u64>,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let keys = Keys::new("sluice-bench");
    let mut job = StreamJob::new(&keys, "bench", mode.key(), stream, "bench");
    if mode == Mode::NativeDoneRecords {
        job.done_ttl_s = 600;
    }
    let conn = store::connect(url, Duration::from_secs(30)).await?;
    let handler: Option<Box<dyn Handler>> = match mode {
        Mode::Bare => None,
        Mode::Native | Mode::NativeDoneRecords => Some(Box::new(NoopHandler)),
        Mode::WasmNoop => Some(Box::new(prepared(&plugins.chaos, stream, &[]).await?)),
        Mode::Echo => Some(Box::new(
            prepared(
                &plugins.echo,
                stream,
                &[("target", &format!("{stream}:out"))],
            )
            .await?,
        )),
        Mode::Guest(lang) => {
            let plugin = plugins
                .wordcount
                .get(lang)
                .ok_or_else(|| anyhow::anyhow!("wordcount-{lang} is not built"))?;
            Some(Box::new(prepared(plugin, stream, &[]).await?))
        }
    };
    let source = match handler {
        Some(_) => {
            let commit_conn = store::connect(url, Duration::from_secs(30)).await?;
            Some(stream::open(conn.clone(), commit_conn, job.clone(), StartFrom::Beginning).await?)
        }
        None => {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&job.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn.clone())
                .await;
            created?;
            None
        }
    };
    let tally = Arc::new(Tally::new(target, stop_tx));
    let consumer = {
        let tally = tally.clone();
        let policy = ReadPolicy {
            batch: args.batch,
            block_ms: 100,
            claim_idle_ms: 30_000,
        };
        let job = job.clone();
        tokio::spawn(async move {
            match (source, handler) {
                (Some(source), Some(handler)) => {
                    JobRunner::new(source, handler, policy, DeliveryPolicy::default())
                        .with_observer(tally)
                        .run(stop_rx)
                        .await
                        .map(|_| ())
                }
                _ => bare_loop(conn, &job, policy, tally, stop_rx).await,
            }
        })
    };
    if let Some(rate) = rate {
        let published = publish_paced(url, stream, rate, args.latency_secs).await?;
        tally.set_target(published);
    }
    consumer.await??;
    let elapsed = tally
        .finished
        .lock()
        .ok()
        .and_then(|f| *f)
        .unwrap_or_else(|| tally.started.elapsed());
    let count = tally.count.load(Ordering::SeqCst);
    let hist = tally
        .hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    Ok((count as f64 / elapsed.as_secs_f64(), hist))
}

/// A handler with its instance made, on a blocking thread (plugin calls must not run on the
/// async workers).
async fn prepared(
    plugin: &Arc<LoadedPlugin>,
    stream: &str,
    config: &[(&str, &str)],
) -> anyhow::Result<PluginHandler> {
    let mut h = PluginHandler::new(
        plugin.clone(),
        GuestContext {
            job: stream.into(),
            plugin: plugin.name.as_str().into(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limits: Limits::default(),
            state: None,
        },
    );
    tokio::task::spawn_blocking(move || {
        h.prepare().map_err(|f| anyhow::anyhow!("{f}"))?;
        Ok(h)
    })
    .await?
}

/// The baseline: read a batch, ack it, nothing else.
async fn bare_loop(
    mut conn: ConnectionManager,
    job: &StreamJob,
    policy: ReadPolicy,
    tally: Arc<Tally>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    while !*stop.borrow() {
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&job.group)
            .arg(&job.consumer)
            .arg("COUNT")
            .arg(policy.batch)
            .arg("BLOCK")
            .arg(policy.block_ms)
            .arg("STREAMS")
            .arg(&job.stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let events = parse_read_reply(reply, &job.job)?;
        if events.is_empty() {
            continue;
        }
        let mut xack = redis::cmd("XACK");
        xack.arg(&job.stream).arg(&job.group);
        for e in &events {
            xack.arg(&e.id);
        }
        let _: u64 = xack.query_async(&mut conn).await?;
        tally.add(&events);
    }
    Ok(())
}
