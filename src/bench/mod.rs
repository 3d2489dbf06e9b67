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

mod load;
mod observe;
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

pub async fn run(args: &BenchArgs, redis: Option<Endpoint>) -> anyhow::Result<()> {
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
    let (redis, embedded) = match redis {
        Some(redis) => (redis, None),
        None => {
            let e = EmbeddedRedis::start(&scratch, Default::default()).await?;
            (Endpoint::local(&e.url())?, Some(e))
        }
    };
    let observer = observe::Observer::install()?;
    let result = async {
        let rows = measure(args, &redis, &plugins).await?;
        let observed = observe::cost(args, &redis, &plugins, &observer).await?;
        let swap = swap::swap_pause(args, &redis, &plugins).await?;
        let state = state::stateful(args, &redis, &plugins).await?;
        anyhow::Ok((rows, observed, swap, state))
    }
    .await;
    if let Some(e) = embedded {
        e.stop().await;
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let (rows, (observed, recording), swap, state) = result?;
    if args.json {
        let report = serde_json::json!({
            "modes": rows, "observing": observed, "metric_calls": recording, "swap": swap,
            "stateful": state
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
    }
    Ok(())
}

async fn measure(
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
) -> anyhow::Result<Vec<Row>> {
    let mut throughput = Vec::new();
    let available = |mode: &Mode| match mode {
        Mode::Guest(lang) => plugins.wordcount.contains_key(lang),
        _ => true,
    };
    for mode in Mode::ALL.into_iter().filter(available) {
        let stream = format!("sluice-bench:{}:tput", mode.key());
        let mut conn = redis.connect(Duration::from_secs(20)).await?;
        cleanup(&mut conn, &stream).await?;
        prefill(&mut conn, &stream, args.events).await?;
        let (rate, _) = consume(mode, args, redis, plugins, &stream, args.events, None).await?;
        cleanup(&mut conn, &stream).await?;
        eprintln!("  {:<28} {:>10.0} events/s", mode.label(), rate);
        throughput.push((mode, rate));
    }
    let bare = throughput[0].1;
    let mut rows = Vec::new();
    for (mode, events_per_s) in throughput {
        let rate = args.rate.unwrap_or((events_per_s / 2.0) as u64).max(1);
        let stream = format!("sluice-bench:{}:lat", mode.key());
        let mut conn = redis.connect(Duration::from_secs(20)).await?;
        cleanup(&mut conn, &stream).await?;
        let (_, hist) = consume(mode, args, redis, plugins, &stream, 0, Some(rate)).await?;
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
        "sluice bench: {} events per throughput run, batch {}, latency over {} s of paced publishing, redis {}",
        args.events, args.batch, args.latency_secs, redis
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

/// Run one mode's consumer on `stream` until `target` events were committed (throughput),
/// or while publishing at `rate` (latency). Returns events/s and the latency histogram.
async fn consume(
    mode: Mode,
    args: &BenchArgs,
    redis: &Endpoint,
    plugins: &Plugins,
    stream: &str,
    target: u64,
    rate: Option<u64>,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut spec = job_spec(mode.key(), stream, args.batch, &[]);
    if mode == Mode::NativeDoneRecords {
        spec.done_ttl_s = 600;
    }
    let handler: Option<Box<dyn Handler>> = match mode {
        Mode::Bare => None,
        Mode::Native | Mode::NativeDoneRecords => Some(Box::new(NoopHandler)),
        Mode::WasmNoop => Some(Box::new(prepared(&plugins.chaos, &spec).await?)),
        Mode::Echo => {
            let echo = job_spec(
                mode.key(),
                stream,
                args.batch,
                &[("target", &format!("{stream}:out"))],
            );
            Some(Box::new(prepared(&plugins.echo, &echo).await?))
        }
        Mode::Guest(lang) => {
            let plugin = plugins
                .wordcount
                .get(lang)
                .ok_or_else(|| anyhow::anyhow!("wordcount-{lang} is not built"))?;
            Some(Box::new(prepared(plugin, &spec).await?))
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
    let tally = Arc::new(Tally::new(target, stop_tx));
    let consumer = {
        let tally = tally.clone();
        tokio::spawn(async move {
            match runner {
                Some(runner) => runner.with_observer(tally).run(stop_rx).await.map(|_| ()),
                None => bare_loop(conn, &job, spec.batch, tally, stop_rx).await,
            }
        })
    };
    if let Some(rate) = rate {
        let published = publish_paced(redis, stream, rate, args.latency_secs).await?;
        tally.set_target(published);
    }
    consumer.await??;
    let elapsed = tally.elapsed();
    let count = tally.count.load(Ordering::SeqCst);
    let hist = tally
        .hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    Ok((count as f64 / elapsed.as_secs_f64(), hist))
}

/// Where the benchmark's jobs run: their own key prefix and consumer.
fn assembly(redis: &Endpoint) -> Assembly {
    Assembly {
        redis: redis.clone(),
        keys: Keys::new("sluice-bench"),
        prefix: "sluice-bench".into(),
        consumer: "bench".into(),
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
