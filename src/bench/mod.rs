//! `sluice bench`: end-to-end throughput and publish→ack latency of the host, against
//! baselines run in the same process on the same Redis:
//!
//! - `bare loop`: a plain redis-rs `XREADGROUP`/`XACK` loop — the Redis limit;
//! - `host, native no-op`: the job runner and commit script with a handler compiled in;
//! - `host, native, done records`: the same, also writing a status record for every event
//!   (`done_ttl_s = 600`; by default only events that failed get one);
//! - `host, wasm no-op`: the same with the `noop` plugin answering `ack` (no effects, no
//!   imports: what the sandbox costs);
//! - `host, wasm stateful no-op`: `chaos` answering `ack`; it imports job state, so its batches
//!   are handled and committed one after the other (a stateful plugin's price);
//! - `host, echo plugin`: the `echo` plugin, which emits every event to another stream;
//! - `host, busy plugin, concurrency N`: the CPU-bound `busy` plugin (tens of µs of hashing
//!   per event, no state) on a job of concurrency 1 and 2: how plugin work scales with
//!   instances in parallel on this machine.
//!
//! Throughput: a stream pre-filled with `--events` entries is drained; events/s is entries
//! over the time to ack the last one. Every mode runs `--repeat` times (default 3),
//! interleaved (bare, native, wasm, … then again), each on a fresh stream and only once Redis
//! is not rewriting its AOF or saving: a row reports the median, the spread (min–max), and
//! its ratio to the bare loop as the median of the per-round ratios (a mode against the bare
//! loop of its own round, minutes apart at most). Latency: entries are published at a fixed rate (default:
//! half of that mode's measured throughput) for `--latency-secs`, each stamped with its publish
//! time; the latency of an entry is the time from that stamp to the end of the commit that
//! acked it.
//!
//! What observing costs ([`observe`]): the wasm no-op and echo modes again, in alternating
//! rounds unobserved and with logs at `info` and every metric recorded; and the metric calls
//! of a batch timed alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

mod cluster;
mod load;
mod observe;
mod peers;
mod plots;
mod scan;
mod start;
mod state;
mod swap;

use self::load::{NoopHandler, Tally, bare_loop, cleanup, prefill, publish_paced};
use crate::host::job::{Assembly, prepare_handler_async};
use crate::model::{Handler, JobSpec};
use crate::runtime::{LoadedPlugin, PluginHandler, Runtime};
use crate::store::embedded::EmbeddedRedis;
use crate::store::{Endpoint, Keys};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Entries drained in each throughput run
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Batch size (entries per read and commit) for every mode
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Only these modes (comma-separated keys: bare-echo, native, native-done-records,
    /// wasm-noop, wasm-stateful, echo, rust, c, go, python, python-single, js, js-single,
    /// busy-1, busy-2, busy-4), with the bare loop always; and none of
    /// the observing, swap and stateful sections (for profiling one mode)
    #[arg(long, value_name = "MODES", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Throughput runs of each mode, interleaved
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// Seconds of paced publishing in each latency run
    #[arg(long, default_value_t = 3)]
    pub latency_secs: u64,
    /// Publish rate of the latency runs, events/s [default: half of each mode's throughput]
    #[arg(long)]
    pub rate: Option<u64>,
    /// Directory holding echo.wasm, noop.wasm, chaos.wasm and busy.wasm (and the wordcount ones)
    #[arg(long, default_value = "plugins/dist")]
    pub plugin_dir: PathBuf,
    /// Directory holding the peers' scripts (redis-py loop, BullMQ worker)
    #[arg(long, default_value = "bench/peers")]
    pub peers_dir: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Draw the pictures (throughput by mode, latency CDF, scaling with concurrency) as SVG
    /// files into this directory (`make bench`: bench/plots)
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Measure sluice on a Redis Cluster instead: one stream against partitioned streams over
    /// every master, direct emits against forwarded ones (a local 3-master cluster, unless
    /// `--redis` is a `redis+cluster://` URL)
    #[arg(long)]
    pub cluster: bool,
    /// Measure only the scan section: a scan job's first and unchanged passes over a tree of
    /// 10000 files, against irods-capability-automated-ingest on the same tree (when `make
    /// benchdeps` installed it)
    #[arg(long)]
    pub scan: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    /// The bare loop writing one entry per event (`XADD`) with its `XACK`s in one
    /// `MULTI`/`EXEC`: the floor of what the echo mode can do on this Redis.
    BareEcho,
    NativeDoneRecords,
    Native,
    WasmNoop,
    /// The no-op plugin under a fleet-wide rate limit above its speed (`flow.rate_limit`):
    /// what taking the limit's units costs.
    RateLimited,
    /// The no-op plugin with `flow.order_by` over [`ORDER_KEYS`] keys: what listing each
    /// entry under its key and asking for the heads costs.
    Ordered,
    WasmStateful,
    Echo,
    /// wordcount in this language, on entries without a `text` field: one call, `skip`.
    Guest(&'static str),
    /// The same, handing the plugin one event per call although it exports `handle-batch`
    /// (Python and JavaScript): what batch calls buy.
    GuestSingle(&'static str),
    /// The CPU-bound `busy` plugin on a job of this concurrency.
    Busy(u32),
}

/// Keys of the ordered mode's entries.
const ORDER_KEYS: u64 = 1000;

/// Rounds of hashing per event of the `busy` plugin: tens of µs, well above what the host
/// costs per event, so the rows show how plugin work scales with a job's concurrency.
const BUSY_ROUNDS: &str = "300";

/// The languages of the wordcount plugins benchmarked (rows of unbuilt ones are left out).
const GUESTS: [&str; 5] = ["rust", "c", "go", "python", "js"];

impl Mode {
    const ALL: [Mode; 19] = [
        Mode::Bare,
        Mode::BareEcho,
        Mode::Native,
        Mode::NativeDoneRecords,
        Mode::WasmNoop,
        Mode::RateLimited,
        Mode::Ordered,
        Mode::WasmStateful,
        Mode::Echo,
        Mode::Guest(GUESTS[0]),
        Mode::Guest(GUESTS[1]),
        Mode::Guest(GUESTS[2]),
        Mode::Guest(GUESTS[3]),
        Mode::GuestSingle(GUESTS[3]),
        Mode::Guest(GUESTS[4]),
        Mode::GuestSingle(GUESTS[4]),
        Mode::Busy(1),
        Mode::Busy(2),
        Mode::Busy(4),
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::Bare => "bare XREADGROUP/XACK loop",
            Mode::BareEcho => "bare loop + XADD per event (MULTI)",
            Mode::NativeDoneRecords => "host, native, done records",
            Mode::Native => "host, native no-op handler",
            Mode::WasmNoop => "host, wasm no-op (noop)",
            Mode::RateLimited => "host, noop, rate limit 1M/s",
            Mode::Ordered => "host, noop, order_by (1000 keys)",
            Mode::WasmStateful => "host, wasm stateful no-op (chaos)",
            Mode::Echo => "host, echo plugin (emits)",
            Mode::Guest("rust") => "host, rust wordcount (skips)",
            Mode::Guest("c") => "host, c wordcount (skips)",
            Mode::Guest("go") => "host, go wordcount (skips)",
            Mode::Guest("python") => "host, python wordcount (skips)",
            Mode::Guest(_) => "host, js wordcount (skips)",
            Mode::GuestSingle("python") => "host, python wordcount, 1 per call",
            Mode::GuestSingle(_) => "host, js wordcount, 1 per call",
            Mode::Busy(1) => "host, busy plugin, concurrency 1",
            Mode::Busy(2) => "host, busy plugin, concurrency 2",
            Mode::Busy(_) => "host, busy plugin, concurrency 4",
        }
    }

    /// How many key values its entries carry in field `k` (None: no such field).
    fn keys(self) -> Option<u64> {
        (self == Mode::Ordered).then_some(ORDER_KEYS)
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::BareEcho => "bare-echo",
            Mode::NativeDoneRecords => "native-done-records",
            Mode::Native => "native",
            Mode::WasmNoop => "wasm-noop",
            Mode::RateLimited => "rate-limited",
            Mode::Ordered => "ordered",
            Mode::WasmStateful => "wasm-stateful",
            Mode::Echo => "echo",
            Mode::Guest(lang) => lang,
            Mode::GuestSingle("python") => "python-single",
            Mode::GuestSingle(_) => "js-single",
            Mode::Busy(1) => "busy-1",
            Mode::Busy(2) => "busy-2",
            Mode::Busy(_) => "busy-4",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    mode: &'static str,
    /// The mode's `--only` key.
    key: &'static str,
    /// The median of the runs.
    events_per_s: f64,
    /// Every throughput run, in order.
    runs: Vec<f64>,
    /// (max − min) / median of the runs.
    spread: f64,
    /// The median of the runs' ratios to the bare loop of the same round.
    vs_bare: f64,
    /// The median over the runs of this process's CPU time per event, µs: what the host
    /// (reading, handling, committing) costs, whatever else the machine is doing.
    host_us_per_event: f64,
    /// The same for the Redis server.
    redis_us_per_event: f64,
    latency_rate: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// p99 of each stage of the latency run: publish → read returned, read → handler
    /// returned, handler → commit ended.
    stages_p99_ms: [f64; 3],
    /// The latency run's distribution: (fraction of the events, ms within which they were
    /// acked), at [`CDF_AT`].
    cdf: Vec<(f64, f64)>,
    /// The job's concurrency, for the rows that vary it.
    concurrency: Option<u32>,
}

/// Where the latency distribution is sampled (fractions of the events).
const CDF_AT: [f64; 16] = [
    0.0, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.997, 0.998, 0.999, 0.9995,
    0.9999,
];

struct Plugins {
    echo: Arc<LoadedPlugin>,
    noop: Arc<LoadedPlugin>,
    chaos: Arc<LoadedPlugin>,
    busy: Arc<LoadedPlugin>,
    /// wordcount-<lang> for each of [`GUESTS`] that is built.
    wordcount: BTreeMap<&'static str, Arc<LoadedPlugin>>,
}

/// Run the benchmark; plugins are compiled once into `cache` (the data dir's compile cache:
/// compiling is not what is measured).
pub async fn run(
    args: &BenchArgs,
    redis: Option<(Endpoint, String)>,
    cache: &std::path::Path,
) -> anyhow::Result<()> {
    let runtime = Runtime::new(Some(cache))?;
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
        noop: load("noop")?,
        chaos: load("chaos")?,
        busy: load("busy")?,
        wordcount: GUESTS
            .into_iter()
            .filter_map(|lang| {
                optional(&format!("wordcount-{lang}"))
                    .transpose()
                    .map(|p| p.map(|p| (lang, p)))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if args.cluster {
        let (rows, redis) = cluster::run(args, redis.map(|(r, _)| r), &plugins).await?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "cluster": rows }))?
            );
        } else {
            cluster::print(args, &rows, &redis);
        }
        return Ok(());
    }
    let scratch = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let (redis, url, embedded) = match redis {
        Some((redis, url)) => (redis, url, None),
        None => {
            let e = EmbeddedRedis::start(&scratch, Default::default()).await?;
            (Endpoint::local(&e.url())?, e.url(), Some(e))
        }
    };
    if args.scan {
        let rows = scan::run(args, &redis, &url, cache, &scratch).await;
        if let Some(e) = embedded {
            e.stop().await;
        }
        let _ = std::fs::remove_dir_all(&scratch);
        let rows = rows?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "scan": rows }))?
            );
        } else {
            scan::print(&rows);
        }
        return Ok(());
    }
    let observer = observe::Observer::install()?;
    let result = async {
        let mut control = redis.connect(Duration::from_secs(20)).await?;
        let rewrites = Rewrites::hold(&mut control).await?;
        let result = sections(args, &redis, &url, cache, &scratch, &plugins, &observer).await;
        rewrites.restore(&mut control).await;
        result
    }
    .await;
    if let Some(e) = embedded {
        e.stop().await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let (rows, extras) = result?;
    if let Some(dir) = &args.plots {
        let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let when = format!("{} UTC", when.replace('T', " ").trim_end_matches('Z'));
        for path in plots::draw(dir, &rows, &when)? {
            eprintln!("  drew {}", path.display());
        }
    }
    let Some(((observed, recording), swap, state, start, (peers, sluice), scanned)) = extras else {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "modes": rows }))?
            );
        } else {
            print_table(args, &redis, &rows);
        }
        return Ok(());
    };
    if args.json {
        let report = serde_json::json!({
            "modes": rows, "observing": observed, "metric_calls": recording, "swap": swap,
            "stateful": state,
            "host_start": start.as_ref().map_err(|e| format!("{e:#}")),
            "peers": peers, "scan": scanned,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(args, &redis, &rows);
        observe::print_table(args, &observed, &recording);
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
        print_state_table(args, &state);
        start::print(&start);
        peers::print(&peers, sluice, &args.peers_dir);
        scan::print(&scanned);
    }
    Ok(())
}

/// Every section of the bench, in order: the modes, then (without `--only`) observing, the
/// hot swap, the stateful job, the host start and the peers.
async fn sections(
    args: &BenchArgs,
    redis: &Endpoint,
    url: &str,
    cache: &std::path::Path,
    scratch: &std::path::Path,
    plugins: &Plugins,
    observer: &observe::Observer,
) -> anyhow::Result<(Vec<Row>, Option<Extras>)> {
    let rows = measure(args, redis, plugins).await?;
    if !args.only.is_empty() {
        return Ok((rows, None));
    }
    let observed = observe::cost(args, redis, plugins, observer).await?;
    let swap = swap::swap_pause(args, redis, plugins).await?;
    let state = state::stateful(args, redis, plugins).await?;
    let start = start::host_start(args, redis, url, cache, &scratch.join("start")).await;
    let sluice = rows
        .iter()
        .find(|r| r.mode == Mode::WasmNoop.label())
        .map_or(f64::NAN, |r| r.events_per_s);
    let peers = peers::run(args, redis, url, sluice).await?;
    let scanned = scan::run(args, redis, url, cache, scratch).await?;
    Ok((
        rows,
        Some((observed, swap, state, start, (peers, sluice), scanned)),
    ))
}

/// What the sections after the modes measured.
type Extras = (
    (Vec<observe::ObserveRow>, observe::Recording),
    swap::SwapPause,
    Vec<state::StateRow>,
    anyhow::Result<start::StartReport>,
    (Vec<peers::PeerRow>, f64),
    Vec<scan::ScanRow>,
);

/// The median of some numbers (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The Redis setting the bench holds while it measures: automatic AOF rewrites off (a rewrite
/// forks and its child takes one of this machine's 2 cores for seconds: it would land in some
/// modes' runs and not others). [`quiet`] rewrites the AOF between runs instead, as Redis
/// would have, so every run starts from the same compact file. Restored by [`Rewrites::restore`].
pub(crate) struct Rewrites {
    /// `auto-aof-rewrite-percentage` as it was; None when the AOF is off (nothing to hold).
    percentage: Option<String>,
}

/// A run's AOF beyond this is rewritten before the next run (Redis's default
/// `auto-aof-rewrite-min-size`).
const AOF_REWRITE_ABOVE: u64 = 64 << 20;

impl Rewrites {
    async fn hold(conn: &mut crate::store::Conn) -> anyhow::Result<Self> {
        let aof: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(conn)
            .await?;
        if aof.get(1).map(String::as_str) != Some("yes") {
            return Ok(Rewrites { percentage: None });
        }
        let was: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("auto-aof-rewrite-percentage")
            .query_async(conn)
            .await?;
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("auto-aof-rewrite-percentage")
            .arg(0)
            .query_async(conn)
            .await?;
        Ok(Rewrites {
            percentage: was.get(1).cloned(),
        })
    }

    async fn restore(&self, conn: &mut crate::store::Conn) {
        if let Some(was) = &self.percentage {
            let restored: redis::RedisResult<()> = redis::cmd("CONFIG")
                .arg("SET")
                .arg("auto-aof-rewrite-percentage")
                .arg(was)
                .query_async(conn)
                .await;
            if let Err(e) = restored {
                eprintln!("  (could not restore auto-aof-rewrite-percentage {was}: {e})");
            }
        }
    }
}

/// A field of an `INFO` section, as text.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Wait until Redis is neither rewriting its AOF nor saving (what would slow one mode's run
/// and not another's), first rewriting an AOF grown past [`AOF_REWRITE_ABOVE`] (automatic
/// rewrites are off while the bench runs: [`Rewrites`]); at most 60 s, then go on and say so.
async fn quiet(conn: &mut crate::store::Conn) -> anyhow::Result<()> {
    let mut asked = false;
    for _ in 0..600 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(conn)
            .await?;
        let on = |name| info_field(&info, name) == Some("1");
        let busy = on("aof_rewrite_in_progress")
            || on("rdb_bgsave_in_progress")
            || on("aof_rewrite_scheduled");
        if !busy {
            let size: u64 = info_field(&info, "aof_current_size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if asked || !on("aof_enabled") || size <= AOF_REWRITE_ABOVE {
                return Ok(());
            }
            let () = redis::cmd("BGREWRITEAOF").query_async(conn).await?;
            asked = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("  (Redis still rewriting or saving after 60 s; measuring anyway)");
    Ok(())
}

async fn measure(
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
) -> anyhow::Result<Vec<Row>> {
    let available = |mode: &Mode| match mode {
        Mode::Guest(lang) => plugins.wordcount.contains_key(lang),
        Mode::GuestSingle(lang) => plugins
            .wordcount
            .get(lang)
            .is_some_and(|p| p.handles_batches()),
        _ => true,
    };
    let asked = |mode: &Mode| {
        *mode == Mode::Bare || args.only.is_empty() || args.only.iter().any(|k| k == mode.key())
    };
    for key in &args.only {
        if !Mode::ALL.iter().any(|m| m.key() == key) {
            anyhow::bail!("--only: no mode `{key}`");
        }
    }
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(available)
        .filter(asked)
        .collect();
    // runs[m][r]: mode m's events/s in round r (interleaved: every mode once per round).
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    // cpu[m][r]: (host, redis) µs of CPU per event of mode m in round r.
    let mut cpu: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
    let mut conn = redis.connect(Duration::from_secs(20)).await?;
    for round in 0..args.repeat {
        eprintln!("  round {} of {}", round + 1, args.repeat);
        for (m, mode) in modes.iter().enumerate() {
            let stream = format!("sluice-bench:{}:tput", mode.key());
            cleanup(&mut conn, &stream).await?;
            prefill(&mut conn, &stream, args.events, mode.keys()).await?;
            quiet(&mut conn).await?;
            let run = consume(*mode, args, redis, plugins, &stream, args.events, None).await?;
            cleanup(&mut conn, &stream).await?;
            eprintln!(
                "  {:<32} {:>10.0} events/s  host {:.2} µs/event  redis {:.2} µs/event",
                mode.label(),
                run.events_per_s,
                run.host_us,
                run.redis_us
            );
            runs[m].push(run.events_per_s);
            cpu[m].push((run.host_us, run.redis_us));
        }
    }
    let bare_runs = runs[0].clone();
    let mut rows = Vec::new();
    for (m, mode) in modes.iter().enumerate() {
        let events_per_s = median(&runs[m]);
        let (min, max) = runs[m]
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let ratios: Vec<f64> = runs[m]
            .iter()
            .zip(&bare_runs)
            .map(|(r, bare)| r / bare)
            .collect();
        let rate = args.rate.unwrap_or((events_per_s / 2.0) as u64).max(1);
        let stream = format!("sluice-bench:{}:lat", mode.key());
        cleanup(&mut conn, &stream).await?;
        quiet(&mut conn).await?;
        let latency = consume(*mode, args, redis, plugins, &stream, 0, Some(rate)).await?;
        let (hist, stages) = (latency.hist, latency.stages);
        let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
        cleanup(&mut conn, &stream).await?;
        rows.push(Row {
            mode: mode.label(),
            key: mode.key(),
            events_per_s,
            runs: runs[m].clone(),
            spread: (max - min) / events_per_s,
            vs_bare: median(&ratios),
            host_us_per_event: median(&cpu[m].iter().map(|c| c.0).collect::<Vec<_>>()),
            redis_us_per_event: median(&cpu[m].iter().map(|c| c.1).collect::<Vec<_>>()),
            latency_rate: rate,
            p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: p99(&hist),
            stages_p99_ms: [p99(&stages[0]), p99(&stages[1]), p99(&stages[2])],
            cdf: CDF_AT
                .iter()
                .map(|q| (*q, hist.value_at_quantile(*q).max(1) as f64 / 1000.0))
                .collect(),
            concurrency: match mode {
                Mode::Busy(n) => Some(*n),
                _ => None,
            },
        });
    }
    Ok(rows)
}

fn print_state_table(args: &BenchArgs, rows: &[state::StateRow]) {
    println!(
        "stateful job (chaos kv-incr: get a key, set it plus one; batch {}), hosts = runners of one job:",
        args.batch
    );
    println!(
        "| {:<6} | {:>5} | {:>8} | {:>10} | {:>9} | {:>8} | {:>6} | {:>5} |",
        "keys", "hosts", "events", "events/s", "conflicts", "batches", "failed", "exact"
    );
    println!(
        "|{:-<8}|{:-<7}|{:-<10}|{:-<12}|{:-<11}|{:-<10}|{:-<8}|{:-<7}|",
        "", "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<6} | {:>5} | {:>8} | {:>10.0} | {:>9} | {:>8} | {:>6} | {:>5} |",
            r.keys, r.hosts, r.events, r.events_per_s, r.conflicts, r.batches, r.failed, r.exact
        );
    }
}

fn print_table(args: &BenchArgs, redis: &Endpoint, rows: &[Row]) {
    println!(
        "sluice bench: {} events per throughput run, {} runs of each mode interleaved (median, \
         spread = (max-min)/median), batch {}, latency over {} s of paced publishing, redis {}",
        args.events, args.repeat, args.batch, args.latency_secs, redis
    );
    println!(
        "| {:<34} | {:>10} | {:>6} | {:>7} | {:>9} | {:>9} | {:>12} | {:>8} | {:>8} |",
        "mode",
        "events/s",
        "spread",
        "vs bare",
        "host µs/e",
        "redis µs/e",
        "latency at/s",
        "p50 ms",
        "p99 ms"
    );
    println!(
        "|{:-<36}|{:-<12}|{:-<8}|{:-<9}|{:-<11}|{:-<11}|{:-<14}|{:-<10}|{:-<10}|",
        "", "", "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<34} | {:>10.0} | {:>5.0}% | {:>6.0}% | {:>9.2} | {:>9.2} | {:>12} | {:>8.2} | {:>8.2} |",
            r.mode,
            r.events_per_s,
            r.spread * 100.0,
            r.vs_bare * 100.0,
            r.host_us_per_event,
            r.redis_us_per_event,
            r.latency_rate,
            r.p50_ms,
            r.p99_ms
        );
    }
    let noop = rows.iter().find(|r| r.key == Mode::WasmNoop.key());
    for (mode, what) in [
        (Mode::RateLimited, "rate limit on vs off"),
        (Mode::Ordered, "order_by on vs off"),
    ] {
        if let (Some(noop), Some(r)) = (noop, rows.iter().find(|r| r.key == mode.key())) {
            println!(
                "flow control: {what} (the no-op plugin, same rounds): {:.0}%",
                flow_ratio(r, noop) * 100.0
            );
        }
    }
    println!(
        "where the latency runs' time went (p99 of each stage, ms; publish = the publisher's stamp):"
    );
    println!(
        "| {:<34} | {:>14} | {:>14} | {:>14} |",
        "mode", "publish → read", "read → handled", "handled → acked"
    );
    println!("|{:-<36}|{:-<16}|{:-<16}|{:-<16}|", "", "", "", "");
    for r in rows {
        let [read, handled, acked] = r.stages_p99_ms;
        println!(
            "| {:<34} | {:>14.2} | {:>14.2} | {:>14.2} |",
            r.mode, read, handled, acked
        );
    }
}

/// The median over the rounds of `row`'s throughput over `base`'s in the same round.
fn flow_ratio(row: &Row, base: &Row) -> f64 {
    let ratios: Vec<f64> = row
        .runs
        .iter()
        .zip(&base.runs)
        .map(|(r, b)| r / b)
        .collect();
    median(&ratios)
}

/// What one run of a mode measured.
struct Run {
    events_per_s: f64,
    hist: Histogram<u64>,
    /// See [`load::Tally::stages`].
    stages: [Histogram<u64>; 3],
    /// CPU time of this process (the host: its runtime threads and plugin calls) per event
    /// committed, µs.
    host_us: f64,
    /// CPU time of the Redis server per event committed, µs (`INFO cpu`).
    redis_us: f64,
}

/// CPU time this process has used so far (every thread, user and system).
#[allow(unsafe_code)]
fn process_cpu() -> Duration {
    // SAFETY: `rusage` is plain data (all zeroes is a valid value), and getrusage only
    // writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time the Redis server has used so far, from `INFO cpu` (its main thread and the
/// rest, user and system).
async fn redis_cpu(conn: &mut crate::store::Conn) -> anyhow::Result<Duration> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let secs: f64 = info
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| matches!(*k, "used_cpu_sys" | "used_cpu_user"))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum();
    Ok(Duration::from_secs_f64(secs))
}

/// Run one mode's consumer on `stream` until `target` events were committed (throughput),
/// or while publishing at `rate` (latency).
async fn consume(
    mode: Mode,
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
    stream: &str,
    target: u64,
    rate: Option<u64>,
) -> anyhow::Result<Run> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut spec = job_spec(mode.key(), stream, args.batch, &[]);
    if mode == Mode::NativeDoneRecords {
        spec.done_ttl_s = 600;
    }
    let handler: Option<Box<dyn Handler>> = match mode {
        Mode::Bare | Mode::BareEcho => None,
        Mode::Native | Mode::NativeDoneRecords => Some(Box::new(NoopHandler)),
        Mode::WasmNoop => Some(Box::new(prepared(&plugins.noop, &spec).await?)),
        Mode::RateLimited | Mode::Ordered => {
            if mode == Mode::RateLimited {
                spec.flow.rate_limit = Some("1000000/s".into());
            } else {
                spec.flow.order_by = Some("k".into());
            }
            Some(Box::new(prepared(&plugins.noop, &spec).await?))
        }
        Mode::WasmStateful => Some(Box::new(prepared(&plugins.chaos, &spec).await?)),
        Mode::Echo => {
            let echo = job_spec(
                mode.key(),
                stream,
                args.batch,
                &[("target", &format!("{stream}:out"))],
            );
            Some(Box::new(prepared(&plugins.echo, &echo).await?))
        }
        Mode::Busy(n) => {
            let mut busy = job_spec(mode.key(), stream, args.batch, &[("rounds", BUSY_ROUNDS)]);
            busy.concurrency = n;
            Some(Box::new(prepared(&plugins.busy, &busy).await?))
        }
        Mode::Guest(lang) | Mode::GuestSingle(lang) => {
            let plugin = plugins
                .wordcount
                .get(lang)
                .ok_or_else(|| anyhow::anyhow!("wordcount-{lang} is not built"))?;
            let handler = prepared(plugin, &spec).await?;
            Some(Box::new(if matches!(mode, Mode::GuestSingle(_)) {
                handler.without_batch_calls()
            } else {
                handler
            }))
        }
    };
    let assembly = assembly(redis);
    let runner = match handler {
        Some(handler) => Some(assembly.source_runner(&spec, None, handler).await?),
        None => None,
    };
    let job = crate::host::job::stream_job(&assembly.keys, &spec, &assembly.consumer, None);
    let conn = redis.connect(Duration::from_secs(20)).await?;
    if runner.is_none() {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&job.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn.clone())
            .await;
        created?;
    }
    let mut probe = conn.clone();
    let (host_before, redis_before) = (process_cpu(), redis_cpu(&mut probe).await?);
    let tally = Arc::new(Tally::new(target, stop_tx));
    let echo_to = (mode == Mode::BareEcho).then(|| format!("{stream}:out"));
    let consumer = {
        let tally = tally.clone();
        tokio::spawn(async move {
            match runner {
                Some(runner) => runner.with_observer(tally).run(stop_rx).await.map(|_| ()),
                None => bare_loop(conn, &job, spec.batch, echo_to, tally, stop_rx).await,
            }
        })
    };
    if let Some(rate) = rate {
        let published = publish_paced(redis, stream, rate, args.latency_secs, mode.keys()).await?;
        tally.set_target(published);
    }
    consumer.await??;
    let (host_cpu, redis_cpu) = (
        process_cpu().saturating_sub(host_before),
        redis_cpu(&mut probe).await?.saturating_sub(redis_before),
    );
    let elapsed = tally.elapsed();
    let count = tally.count.load(Ordering::SeqCst);
    let hist = tally
        .hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let stages = tally
        .stages
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let per_event = |cpu: Duration| cpu.as_secs_f64() * 1e6 / count.max(1) as f64;
    Ok(Run {
        events_per_s: count as f64 / elapsed.as_secs_f64(),
        hist,
        stages,
        host_us: per_event(host_cpu),
        redis_us: per_event(redis_cpu),
    })
}

/// Where the benchmark's jobs run: their own key prefix and consumer.
fn assembly(redis: &Endpoint) -> Assembly {
    Assembly {
        redis: redis.clone(),
        keys: Keys::new("sluice-bench"),
        prefix: "sluice-bench".into(),
        consumer: "bench".into(),
        gates: Default::default(),
    }
}

/// A benchmark job of `plugin` on `stream`, as a host would run it (with every default but
/// the batch and a short blocking read); its plugin may emit to the benchmark's streams.
fn job_spec(plugin: &str, stream: &str, batch: usize, config: &[(&str, &str)]) -> JobSpec {
    let mut spec = JobSpec::new("bench", &format!("stream:{stream}"), plugin);
    spec.batch = batch;
    spec.block_ms = 100;
    spec.allowed_streams = vec!["sluice-bench:*".into()];
    spec.config = config
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    spec
}

/// A handler with its instance made, as the host makes one.
async fn prepared(plugin: &Arc<LoadedPlugin>, spec: &JobSpec) -> anyhow::Result<PluginHandler> {
    prepare_handler_async(plugin.clone(), spec.clone(), "sluice-bench".into(), None).await
}
