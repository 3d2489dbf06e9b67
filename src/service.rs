//! A host's life: load plugins → connect to Redis (or start the embedded one) → start every
//! job → wait for the shutdown signal → let jobs finish and commit their batch within the
//! grace period → stop the embedded Redis.
//!
//! A plugin that fails to load, or whose `init` refuses a job's config, stops only the jobs
//! that use it; the host serves the others.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, JobConfig};
use crate::event::StateReader;
use crate::runner::{JobRunner, ReadPolicy};
use crate::runtime::{GuestContext, LoadedPlugin, PluginHandler, Runtime};
use crate::store::embedded::EmbeddedRedis;
use crate::store::state::RedisState;
use crate::store::stream::{self, StreamJob};
use crate::store::{self, Keys, StoreError, redact_url};

/// Extra time a Redis reply may take beyond a job's blocking read.
const RESPONSE_MARGIN: Duration = Duration::from_secs(10);

/// The consumer name of this process: `[host] consumer`, else `<hostname>-<pid>`.
pub fn consumer_name(config: &Config) -> String {
    config.host.consumer.clone().unwrap_or_else(|| {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        format!("{host}-{}", std::process::id())
    })
}

/// Load every configured plugin; a failure is returned per plugin, not fatal.
pub fn load_plugins(
    runtime: &Runtime,
    config: &Config,
) -> (HashMap<String, Arc<LoadedPlugin>>, Vec<anyhow::Error>) {
    let mut loaded = HashMap::new();
    let mut errors = Vec::new();
    for p in &config.plugins {
        match runtime.load_file(&p.name, &p.path) {
            Ok(plugin) => {
                loaded.insert(p.name.clone(), plugin);
            }
            Err(e) => errors.push(e.into()),
        }
    }
    (loaded, errors)
}

/// A handler for `job`, with its first instance made (so `init` has run). Calls into the
/// plugin, so it must run on a blocking thread, never on an async worker: WASI output
/// streams block on the async runtime (see [`prepare_handler_async`]).
pub fn prepare_handler(
    plugin: Arc<LoadedPlugin>,
    job: &JobConfig,
    prefix: &str,
    state: Option<Arc<dyn StateReader>>,
) -> anyhow::Result<PluginHandler> {
    let mut handler = PluginHandler::new(
        plugin,
        GuestContext {
            job: job.name.as_str().into(),
            plugin: job.plugin.as_str().into(),
            config: job.plugin_config(),
            limits: job.limits(prefix),
            state,
        },
    );
    handler
        .prepare()
        .map_err(|f| anyhow::anyhow!("job `{}` cannot start: {}", job.name, f.message))?;
    Ok(handler)
}

/// Run the host until `shutdown` completes. `redis_url` overrides the config's.
pub async fn run(
    config: Config,
    redis_url: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = config.host.data_dir.clone();
    let runtime = Runtime::new(Some(&data_dir.join("cache")))?;
    let (plugins, errors) = load_plugins(&runtime, &config);
    for e in &errors {
        tracing::error!("{e:#}");
    }

    let (url, embedded) = match redis_url.or_else(|| config.redis.url.clone()) {
        Some(url) => (url, None),
        None => {
            let embedded = EmbeddedRedis::start(&data_dir).await?;
            (embedded.url(), Some(embedded))
        }
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let ready = tokio::select! {
        ready = wait_for_redis(&url) => Some(ready),
        () = &mut shutdown => None,
    };
    let result = match ready {
        Some(Ok(())) => serve(&config, &plugins, &url, shutdown).await,
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    if let Some(embedded) = embedded {
        embedded.stop().await;
    }
    result
}

/// Return once Redis at `url` answers; while it does not, log and try again with backoff.
/// Fails at once on errors that waiting cannot fix (a bad URL, wrong credentials).
async fn wait_for_redis(url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)
        .with_context(|| format!("invalid Redis URL {}", redact_url(url)))?;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    let mut warned = false;
    loop {
        // One attempt at a time (no client-side retries), so that the wait is logged at once.
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut conn)
                .await
        })
        .await;
        let error = match attempt {
            Ok(Ok(info)) => {
                if warned {
                    tracing::info!(redis = %redact_url(url), "redis is up");
                }
                return check_version(&info);
            }
            Ok(Err(e)) => StoreError::from(e),
            Err(_) => StoreError::Timeout,
        };
        if !error.is_connection() && !error.is_loading() {
            return Err(anyhow::Error::from(error))
                .with_context(|| format!("connecting to Redis at {}", redact_url(url)));
        }
        if !warned {
            tracing::warn!(redis = %redact_url(url), "waiting for redis: {error}");
            warned = true;
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
    }
}

/// sluice needs Redis 7.0 or later: `XPENDING … IDLE` and exclusive ranges (6.2), XCLAIM
/// dropping entries deleted from the stream from the pending list (7.0).
fn check_version(info: &str) -> anyhow::Result<()> {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or("");
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 7 {
        bail!("sluice needs Redis 7.0 or later; this server is {version:?}");
    }
    Ok(())
}

/// [`prepare_handler`] on a blocking thread, for async callers.
pub async fn prepare_handler_async(
    plugin: Arc<LoadedPlugin>,
    job: JobConfig,
    prefix: String,
    state: Option<Arc<dyn StateReader>>,
) -> anyhow::Result<PluginHandler> {
    tokio::task::spawn_blocking(move || prepare_handler(plugin, &job, &prefix, state))
        .await
        .map_err(|e| anyhow::anyhow!("preparing the plugin panicked: {e}"))?
}

async fn serve(
    config: &Config,
    plugins: &HashMap<String, Arc<LoadedPlugin>>,
    url: &str,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let keys = Keys::new(&config.host.prefix);
    let consumer = consumer_name(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut failed_jobs = 0;
    for job in &config.jobs {
        let Some(plugin) = plugins.get(&job.plugin) else {
            tracing::error!(job = %job.name, plugin = %job.plugin, "job not started: its plugin failed to load");
            failed_jobs += 1;
            continue;
        };
        let timeout = Duration::from_millis(job.block_ms) + RESPONSE_MARGIN;
        let connect = || async {
            store::connect(url, timeout)
                .await
                .with_context(|| format!("connecting to Redis at {}", redact_url(url)))
        };
        let job_key = keys.job(&job.name, &job.stream(&config.host.prefix));
        let state: Arc<dyn StateReader> = Arc::new(RedisState::new(connect().await?, job_key));
        let prepared = prepare_handler_async(
            plugin.clone(),
            job.clone(),
            config.host.prefix.clone(),
            Some(state),
        )
        .await;
        let handler = match prepared {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(job = %job.name, "{e:#}");
                failed_jobs += 1;
                continue;
            }
        };
        let (read_conn, commit_conn) = (connect().await?, connect().await?);
        let mut stream_job = StreamJob::new(
            &keys,
            &job.name,
            &job.plugin,
            &job.stream(&config.host.prefix),
            &consumer,
        );
        stream_job.plugin_version = plugin.sha256.clone();
        stream_job.status_ttl_s = job.status_ttl_s;
        stream_job.done_ttl_s = job.done_ttl_s;
        stream_job.delayed_key = job.delayed_key(&config.host.prefix);
        let source = stream::open(read_conn, commit_conn, stream_job, job.start_from())
            .await
            .with_context(|| {
                format!(
                    "job `{}`: opening stream `{}`",
                    job.name,
                    job.stream(&config.host.prefix)
                )
            })?;
        let policy = ReadPolicy {
            batch: job.batch,
            block_ms: job.block_ms,
            claim_idle_ms: job.claim_idle_ms,
        };
        let runner = JobRunner::new(source, Box::new(handler), policy, job.delivery_policy());
        let name = job.name.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move { (name, runner.run(stop).await) });
    }
    if tasks.is_empty() && failed_jobs > 0 {
        bail!("no job could start (see the errors above)");
    }
    tracing::info!(redis = %redact_url(url), consumer, jobs = tasks.len(), "sluice ready");

    tokio::select! {
        () = shutdown => {}
        // Every job ended by itself (a handler panicked): nothing left to serve.
        () = wait_all_ended(&mut tasks) => {}
    }
    let grace = Duration::from_secs(config.host.shutdown_grace_s);
    tracing::info!(?grace, "stopping: finishing in-flight batches");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async {
        while let Some(joined) = tasks.join_next().await {
            report(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            jobs = tasks.len(),
            "grace period over: abandoning batches still in flight; they stay pending in Redis"
        );
        tasks.abort_all();
    }
    Ok(())
}

/// Resolves when every task has ended, reporting each; never resolves while one runs.
async fn wait_all_ended(tasks: &mut JoinSet<(String, anyhow::Result<crate::runner::RunnerStats>)>) {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    while let Some(joined) = tasks.join_next().await {
        report(joined);
    }
}

fn report(
    joined: Result<(String, anyhow::Result<crate::runner::RunnerStats>), tokio::task::JoinError>,
) {
    match joined {
        Ok((_, Ok(_))) => {}
        Ok((name, Err(e))) => tracing::error!(job = %name, "job ended: {e:#}"),
        Err(e) => tracing::error!("a job task panicked: {e}"),
    }
}
