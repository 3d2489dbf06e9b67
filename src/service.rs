//! A host's life: load the config file's plugins → connect to Redis (or start the embedded
//! one) → register the config file's plugins and jobs in the control registry → run what the
//! registry says, reconciling on every control notice and every second → on the shutdown
//! signal, let jobs finish and commit their batches within the grace period → stop the
//! embedded Redis.
//!
//! Reconciling: a running job of the registry that this host does not run is started; one
//! whose plugin has a new current version gets it prepared off the job's path (fetched,
//! compiled, type-checked, `init` with the job's config) and handed to the runner, which
//! switches between batches; a stopped or removed job is stopped (in-flight batches commit).
//! A version that fails to prepare is refused (logged, recorded in the registry, not tried
//! again) and the job keeps its old version; the host serves everything else.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::config::{Config, JobConfig};
use crate::event::{Event, Handler, KIND_JOB_FINISHED, KIND_JOB_STARTED, Outcome, StateReader};
use crate::runner::{HandlerSlot, JobRunner, ReadPolicy, RunnerStats};
use crate::runtime::{GuestContext, LoadedPlugin, PluginHandler, Runtime, sha256_hex};
use crate::store::control::{JobEntry, JobState, PluginVersion, Registry, Snapshot, short};
use crate::store::embedded::EmbeddedRedis;
use crate::store::lifecycle::{self, Progress};
use crate::store::state::RedisState;
use crate::store::stream::StartFrom;
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
    plugins_dir: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = config.host.data_dir.clone();
    let runtime = Arc::new(Runtime::new(Some(&data_dir.join("cache")))?);
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
        Some(Ok(())) => serve(&config, &plugins, runtime, &url, plugins_dir, shutdown).await,
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

/// Where a host keeps component files fetched from the registry, by sha256.
fn blob_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("plugins")
}

async fn serve(
    config: &Config,
    plugins: &HashMap<String, Arc<LoadedPlugin>>,
    runtime: Arc<Runtime>,
    url: &str,
    plugins_dir: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let keys = Keys::new(&config.host.prefix);
    let consumer = consumer_name(config);
    let connect = store::connect(url, RESPONSE_MARGIN)
        .await
        .with_context(|| format!("connecting to Redis at {}", redact_url(url)))?;
    let mut registry = Registry::new(connect.clone(), keys.clone());
    register_config(&mut registry, config, plugins, &consumer).await;

    let wake = Arc::new(Notify::new());
    let subscriber = tokio::spawn(watch_channel(
        redis::Client::open(url)?,
        keys.ctl_channel(),
        wake.clone(),
    ));
    let watcher = match plugins_dir {
        Some(dir) => Some(
            crate::watch::PluginDir::start(
                &dir,
                registry.clone(),
                runtime.clone(),
                consumer.clone(),
            )
            .with_context(|| format!("watching {}", dir.display()))?,
        ),
        None => None,
    };
    let mut host = Host {
        runtime,
        url: url.to_string(),
        keys,
        prefix: config.host.prefix.clone(),
        consumer: consumer.clone(),
        blob_dir: blob_dir(&config.host.data_dir),
        registry,
        conn: connect,
        loaded: plugins
            .values()
            .map(|p| (p.sha256.clone(), p.clone()))
            .collect(),
        jobs: HashMap::new(),
        stopping: HashSet::new(),
        tasks: JoinSet::new(),
        task_names: HashMap::new(),
        refused: HashSet::new(),
        waiting: HashSet::new(),
    };
    tracing::info!(redis = %redact_url(url), consumer, "sluice ready");

    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = wake.notified() => host.reconcile().await,
            _ = tick.tick() => host.reconcile().await,
            Some(joined) = host.tasks.join_next_with_id() => host.ended(joined),
        }
    }
    subscriber.abort();
    drop(watcher);

    let grace = Duration::from_secs(config.host.shutdown_grace_s);
    tracing::info!(?grace, "stopping: finishing in-flight batches");
    for (_, job) in host.jobs.drain() {
        let _ = job.stop.send(true);
    }
    let tasks = &mut host.tasks;
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

/// How often a host reads the whole registry, whatever the control channel said: a host that
/// missed a notice (disconnected) catches up within this time.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// The config file's plugins and jobs go into the registry at start. A plugin file becomes
/// the current version unless its bytes are already among the plugin's versions (so a
/// restart does not undo a rollback or a live load); a job is registered unless a job of
/// that name exists (the registry's definition and state win).
async fn register_config(
    registry: &mut Registry,
    config: &Config,
    plugins: &HashMap<String, Arc<LoadedPlugin>>,
    consumer: &str,
) {
    // One bad entry (or a Redis hiccup) must not keep a host from serving the rest.
    for p in &config.plugins {
        let Some(loaded) = plugins.get(&p.name) else {
            continue;
        };
        if let Err(e) = register_plugin(registry, p, loaded, consumer).await {
            tracing::error!(plugin = %p.name, "registering the config file's plugin failed: {e:#}");
        }
    }
    for job in &config.jobs {
        match registry.start_job(job, true).await {
            Ok(true) => {}
            Ok(false) => {
                if registry
                    .job(&job.name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.spec != *job)
                {
                    tracing::info!(job = %job.name, "the registry holds another definition of this job; it wins (stop the job and start it again to change it)");
                }
            }
            Err(e) => {
                tracing::error!(job = %job.name, "registering the config file's job failed: {e}")
            }
        }
    }
}

async fn register_plugin(
    registry: &mut Registry,
    p: &crate::config::PluginConfig,
    loaded: &LoadedPlugin,
    consumer: &str,
) -> anyhow::Result<()> {
    let known = registry.versions(&p.name).await?;
    if known.iter().any(|v| v.sha256 == loaded.sha256) {
        return Ok(());
    }
    let bytes = std::fs::read(&p.path)
        .with_context(|| format!("reading plugin file {}", p.path.display()))?;
    if sha256_hex(&bytes) != loaded.sha256 {
        bail!(
            "{} changed while starting; not registered",
            p.path.display()
        );
    }
    let origin = p.path.display().to_string();
    registry
        .load_plugin(&p.name, &bytes, &loaded.sha256, &origin, consumer)
        .await?;
    tracing::info!(plugin = %p.name, version = short(&loaded.sha256), "plugin registered from the config file");
    Ok(())
}

/// Subscribe to the control channel and wake the control loop on every notice, and after
/// each (re)subscription (what happened meanwhile is read from the registry).
async fn watch_channel(client: redis::Client, channel: String, wake: Arc<Notify>) {
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await
            && pubsub.subscribe(&channel).await.is_ok()
        {
            wake.notify_one();
            let mut messages = pubsub.on_message();
            while messages.next().await.is_some() {
                wake.notify_one();
            }
            tracing::debug!("control channel subscription lost; resubscribing");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A job this host runs.
struct RunningJob {
    spec: JobConfig,
    /// The run of the job (see [`JobEntry::run`]).
    run: u64,
    /// Where the lifecycle runner takes a new handler.
    life_swap: HandlerSlot,
    /// The plugin version its handler runs (or was last sent).
    sha256: String,
    stop: watch::Sender<bool>,
    swap: HandlerSlot,
    state: Arc<dyn StateReader>,
}

type JobResult = (String, anyhow::Result<RunnerStats>);

/// What a host runs, reconciled with the registry.
struct Host {
    runtime: Arc<Runtime>,
    url: String,
    keys: Keys,
    prefix: String,
    consumer: String,
    blob_dir: PathBuf,
    registry: Registry,
    /// For lifecycle scripts in the jobs' slots.
    conn: redis::aio::ConnectionManager,
    /// Compiled plugin versions by sha256.
    loaded: HashMap<String, Arc<LoadedPlugin>>,
    jobs: HashMap<String, RunningJob>,
    /// Jobs told to stop whose runner has not ended yet (not restarted until it has).
    stopping: HashSet<String>,
    tasks: JoinSet<JobResult>,
    /// The job each task runs.
    task_names: HashMap<tokio::task::Id, String>,
    /// (job, run, sha256) this host refused: not tried again for that run of the job (a new
    /// run, e.g. with another config, tries again).
    refused: HashSet<(String, u64, String)>,
    /// Jobs waiting for a plugin that is not in the registry (logged once).
    waiting: HashSet<String>,
}

impl Host {
    /// Make what this host runs match the registry.
    async fn reconcile(&mut self) {
        let snapshot = match self.registry.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reading the control registry failed: {e}");
                return;
            }
        };
        // Stop what is stopped, removed, or redefined.
        let to_stop: Vec<String> = self
            .jobs
            .iter()
            .filter(|(name, running)| match snapshot.jobs.get(*name) {
                Some(entry) => {
                    entry.state != JobState::Running
                        || entry.spec != running.spec
                        || entry.run != running.run
                }
                None => true,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in to_stop {
            if let Some(job) = self.jobs.remove(&name) {
                tracing::info!(job = %name, "stopping job (registry)");
                let _ = job.stop.send(true);
                self.stopping.insert(name);
            }
        }
        for (name, entry) in &snapshot.jobs {
            if entry.state != JobState::Running || self.stopping.contains(name) {
                continue;
            }
            let Some(version) = snapshot.plugins.get(&entry.spec.plugin) else {
                if self.waiting.insert(name.clone()) {
                    tracing::error!(job = %name, plugin = %entry.spec.plugin, "job waits for its plugin: no plugin of that name is loaded");
                }
                continue;
            };
            self.waiting.remove(name);
            if self
                .refused
                .contains(&(name.clone(), entry.run, version.sha256.clone()))
            {
                continue;
            }
            let current = self.jobs.get(name).map(|j| j.sha256.clone());
            if current.as_deref() == Some(version.sha256.as_str()) {
                continue;
            }
            let outcome = match current {
                None => self.start(name, entry, version).await,
                Some(old) => self.swap(name, version, &old).await,
            };
            if let Err(Failure::Refused(reason)) = outcome {
                let old = self.jobs.get(name).map(|j| short(&j.sha256).to_string());
                tracing::error!(
                    job = %name,
                    plugin = %entry.spec.plugin,
                    version = short(&version.sha256),
                    serving = old.as_deref().unwrap_or("nothing"),
                    "plugin version refused: {reason}"
                );
                self.refused
                    .insert((name.clone(), entry.run, version.sha256.clone()));
                let host = self.consumer.clone();
                if let Err(e) = self
                    .registry
                    .refuse(&entry.spec.plugin, &version.sha256, &host, &reason)
                    .await
                {
                    tracing::warn!("recording the refusal failed: {e}");
                }
            } else if let Err(Failure::Transient(e)) = outcome {
                tracing::warn!(job = %name, "will try again: {e:#}");
            }
        }
        self.check_finite(&snapshot).await;
        // Keep compiled versions that are current or in use.
        let keep: HashSet<&String> = snapshot
            .plugins
            .values()
            .map(|v| &v.sha256)
            .chain(self.jobs.values().map(|j| &j.sha256))
            .collect();
        self.loaded.retain(|sha, _| keep.contains(sha));
    }

    /// Finite jobs run here whose source is drained get `job-finished` (once, fleet-wide);
    /// once it is handled, the job is marked finished and every host stops it.
    async fn check_finite(&mut self, snapshot: &Snapshot) {
        let finite: Vec<(String, u64, String, Option<String>)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.spec.finite)
            .map(|(n, j)| {
                let source = j.spec.stream(&self.prefix);
                (n.clone(), j.run, source, j.spec.delayed_key(&self.prefix))
            })
            .collect();
        for (name, run, source, delayed) in finite {
            let progress = lifecycle::check_finished(
                &mut self.conn,
                &self.keys,
                &name,
                &source,
                delayed.as_deref(),
                run,
            )
            .await;
            let done = match progress {
                Ok(Progress::Working) => false,
                Ok(Progress::FinishIssued) => {
                    tracing::info!(job = %name, "source drained: job-finished issued");
                    false
                }
                Ok(Progress::FinishedBefore) => {
                    lifecycle::drained(&mut self.conn, &self.keys, &name, &source)
                        .await
                        .unwrap_or(false)
                }
                Err(e) => {
                    tracing::warn!(job = %name, "checking whether the job finished failed: {e}");
                    false
                }
            };
            let still_running = snapshot
                .jobs
                .get(&name)
                .is_some_and(|e| e.state == JobState::Running && e.run == run);
            if done && still_running {
                match self.registry.finish_job(&name, run).await {
                    Ok(Some(_)) => tracing::info!(job = %name, run, "job finished"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(job = %name, "marking the job finished failed: {e}"),
                }
            }
        }
    }

    /// A plugin version, compiled: from memory, else from the file cache, else from Redis.
    async fn plugin(
        &mut self,
        name: &str,
        version: &PluginVersion,
    ) -> Result<Arc<LoadedPlugin>, Failure> {
        if let Some(p) = self.loaded.get(&version.sha256) {
            return Ok(p.clone());
        }
        let sha = version.sha256.clone();
        let path = self.blob_dir.join(format!("{sha}.wasm"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) if sha256_hex(&bytes) == sha => bytes,
            _ => {
                let bytes = self
                    .registry
                    .blob(&sha)
                    .await
                    .map_err(|e| Failure::Transient(e.into()))?
                    // A version unloaded or replaced meanwhile: look again at the next reconcile.
                    .ok_or_else(|| {
                        Failure::Transient(anyhow::anyhow!("its bytes are missing from Redis"))
                    })?;
                if sha256_hex(&bytes) != sha {
                    return Err(Failure::Refused(
                        "its bytes in Redis do not match its sha256".into(),
                    ));
                }
                let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
                let written = std::fs::create_dir_all(&self.blob_dir)
                    .and_then(|()| std::fs::write(&tmp, &bytes))
                    .and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    tracing::warn!("caching {} failed: {e}", path.display());
                }
                bytes
            }
        };
        let runtime = self.runtime.clone();
        let (name, origin) = (
            name.to_string(),
            format!("{} ({})", version.origin, short(&sha)),
        );
        let loaded =
            tokio::task::spawn_blocking(move || runtime.load_bytes(&name, &origin, &bytes))
                .await
                .map_err(|e| Failure::Transient(anyhow::anyhow!("loading panicked: {e}")))?
                .map_err(|e| Failure::Refused(e.to_string()))?;
        self.loaded.insert(sha, loaded.clone());
        Ok(loaded)
    }

    async fn start(
        &mut self,
        name: &str,
        entry: &JobEntry,
        version: &PluginVersion,
    ) -> Result<(), Failure> {
        let job = &entry.spec;
        let plugin = self.plugin(&job.plugin, version).await?;
        let timeout = Duration::from_millis(job.block_ms) + RESPONSE_MARGIN;
        let url = self.url.clone();
        let connect = || async {
            store::connect(&url, timeout)
                .await
                .with_context(|| format!("connecting to Redis at {}", redact_url(&url)))
                .map_err(Failure::Transient)
        };
        let stream_key = job.stream(&self.prefix);
        let job_key = self.keys.job(&job.name, &stream_key);
        let state: Arc<dyn StateReader> = Arc::new(RedisState::new(connect().await?, job_key));
        let handler = prepare_handler_async(
            plugin.clone(),
            job.clone(),
            self.prefix.clone(),
            Some(state.clone()),
        )
        .await
        .map_err(|e| Failure::Refused(format!("{e:#}")))?;
        let life_handler = LifecycleHandler::new(
            prepare_handler_async(
                plugin.clone(),
                job.clone(),
                self.prefix.clone(),
                Some(state.clone()),
            )
            .await
            .map_err(|e| Failure::Refused(format!("{e:#}")))?,
            &stream_key,
        );
        let transient = |e: StoreError| Failure::Transient(anyhow::anyhow!("job `{name}`: {e}"));
        if lifecycle::begin(&mut self.conn, &self.keys, name, &stream_key, entry.run)
            .await
            .map_err(transient)?
        {
            tracing::info!(job = %name, run = entry.run, "job-started issued");
        }
        let mut life_job = lifecycle::stream_job(
            &self.keys,
            &job.name,
            &job.plugin,
            &stream_key,
            &self.consumer,
        );
        life_job.status_ttl_s = job.status_ttl_s;
        life_job.done_ttl_s = job.done_ttl_s;
        let life_source = stream::open(
            connect().await?,
            connect().await?,
            life_job,
            StartFrom::Beginning,
        )
        .await
        .map_err(transient)?;
        let (read_conn, commit_conn) = (connect().await?, connect().await?);
        let mut stream_job = StreamJob::new(
            &self.keys,
            &job.name,
            &job.plugin,
            &stream_key,
            &self.consumer,
        );
        stream_job.status_ttl_s = job.status_ttl_s;
        stream_job.done_ttl_s = job.done_ttl_s;
        stream_job.delayed_key = job.delayed_key(&self.prefix);
        stream_job.run = Some(entry.run);
        let source = stream::open(read_conn, commit_conn, stream_job, job.start_from())
            .await
            .with_context(|| format!("job `{}`: opening stream `{stream_key}`", job.name))
            .map_err(Failure::Transient)?;
        let policy = ReadPolicy {
            batch: job.batch,
            block_ms: job.block_ms,
            claim_idle_ms: job.claim_idle_ms,
        };
        let runner = JobRunner::new(source, Box::new(handler), policy, job.delivery_policy());
        let life_runner = JobRunner::new(
            life_source,
            Box::new(life_handler),
            policy,
            job.delivery_policy(),
        );
        let (swap, life_swap) = (runner.swapper(), life_runner.swapper());
        let (stop, stop_rx) = watch::channel(false);
        let task_name = name.to_string();
        let gate = (
            connect().await?,
            self.keys.clone(),
            name.to_string(),
            stream_key.clone(),
        );
        let task = self
            .tasks
            .spawn(run_job(runner, life_runner, gate, stop_rx, task_name));
        self.task_names.insert(task.id(), name.to_string());
        tracing::info!(job = %name, plugin = %job.plugin, version = short(&plugin.sha256), "job started");
        self.jobs.insert(
            name.to_string(),
            RunningJob {
                spec: job.clone(),
                run: entry.run,
                life_swap,
                sha256: plugin.sha256.clone(),
                stop,
                swap,
                state,
            },
        );
        Ok(())
    }

    /// Prepare the new version for the job (compile, type-check, `init` with the job's
    /// config), then hand it to the runner, which switches between batches.
    async fn swap(
        &mut self,
        name: &str,
        version: &PluginVersion,
        old: &str,
    ) -> Result<(), Failure> {
        let Some(job) = self.jobs.get(name) else {
            return Ok(());
        };
        let (spec, state) = (job.spec.clone(), job.state.clone());
        let plugin = self.plugin(&spec.plugin, version).await?;
        let prepare = || {
            prepare_handler_async(
                plugin.clone(),
                spec.clone(),
                self.prefix.clone(),
                Some(state.clone()),
            )
        };
        let refused = |e: anyhow::Error| Failure::Refused(format!("{e:#}"));
        let handler = prepare().await.map_err(refused)?;
        let life_handler = LifecycleHandler::new(
            prepare().await.map_err(refused)?,
            &spec.stream(&self.prefix),
        );
        let Some(job) = self.jobs.get_mut(name) else {
            return Ok(());
        };
        job.swap.put(Box::new(handler));
        job.life_swap.put(Box::new(life_handler));
        job.sha256 = version.sha256.clone();
        tracing::info!(job = %name, from = short(old), to = short(&version.sha256), "new plugin version ready; switching at the next batch");
        Ok(())
    }

    /// A job's runners ended: stopped on request, or one of them failed (its handler
    /// panicked); a failed job is started again at the next reconcile.
    fn ended(&mut self, joined: Result<(tokio::task::Id, JobResult), tokio::task::JoinError>) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        if let Some(name) = self.task_names.remove(&id) {
            self.stopping.remove(&name);
            // Not asked to stop: it failed, and is no longer running here.
            self.jobs.remove(&name);
        }
        report(joined.map(|(_, r)| r));
    }
}

/// One job on this host: its lifecycle runner, and its source runner once `job-started` is
/// handled (by any host). Ends when the host stops the job, or when either runner fails (the
/// other is stopped then, committing what it holds).
async fn run_job(
    runner: JobRunner,
    life_runner: JobRunner,
    gate: Gate,
    mut stop: watch::Receiver<bool>,
    name: String,
) -> JobResult {
    let (life_stop, life_stop_rx) = watch::channel(false);
    let (source_stop, source_stop_rx) = watch::channel(false);
    let mut life = tokio::spawn(life_runner.run(life_stop_rx));
    let mut source = tokio::spawn(async move {
        if wait_for_lifecycle(gate, source_stop_rx.clone()).await {
            runner.run(source_stop_rx).await
        } else {
            Ok(Default::default())
        }
    });
    let flat = |r: Result<anyhow::Result<RunnerStats>, tokio::task::JoinError>| {
        r.map_err(|e| anyhow::anyhow!("a runner panicked: {e}"))
            .and_then(|r| r)
    };
    let stop_both = || {
        let _ = life_stop.send(true);
        let _ = source_stop.send(true);
    };
    let result = tokio::select! {
        () = async { drop(stop.wait_for(|s| *s).await) } => {
            stop_both();
            let r = flat((&mut source).await);
            let _ = (&mut life).await;
            r
        }
        r = &mut source => {
            stop_both();
            let _ = (&mut life).await;
            flat(r)
        }
        r = &mut life => {
            stop_both();
            let _ = (&mut source).await;
            flat(r).and_then(|_| Err(anyhow::anyhow!("the lifecycle runner ended")))
        }
    };
    (name, result)
}

/// What the source runner waits on: a connection and the job's keys.
type Gate = (redis::aio::ConnectionManager, Keys, String, String);

/// Poll until the job's lifecycle stream is drained (`job-started` handled); false if the job
/// was stopped meanwhile.
async fn wait_for_lifecycle(
    (mut conn, keys, job, source): Gate,
    mut stop: watch::Receiver<bool>,
) -> bool {
    loop {
        match lifecycle::drained(&mut conn, &keys, &job, &source).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => tracing::debug!(job, "waiting for job-started: {e}"),
        }
        if *stop.borrow() {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), stop.changed()).await;
    }
}

/// Hands lifecycle entries (`{kind, run}`) to the plugin as events of that kind, from the
/// job's source.
struct LifecycleHandler {
    inner: PluginHandler,
    source: String,
}

impl LifecycleHandler {
    fn new(inner: PluginHandler, source: &str) -> Self {
        LifecycleHandler {
            inner,
            source: source.to_string(),
        }
    }
}

impl Handler for LifecycleHandler {
    fn handle_batch(&mut self, events: &[Event]) -> Vec<Outcome> {
        let events: Vec<Event> = events
            .iter()
            .map(|e| {
                let finished = e
                    .fields
                    .iter()
                    .any(|(k, v)| k == "kind" && v == KIND_JOB_FINISHED.as_bytes());
                Event {
                    kind: if finished {
                        KIND_JOB_FINISHED
                    } else {
                        KIND_JOB_STARTED
                    },
                    source: self.source.clone(),
                    ..e.clone()
                }
            })
            .collect();
        self.inner.handle_batch(&events)
    }

    fn reads_state(&self) -> bool {
        self.inner.reads_state()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }
}

/// Why a job could not start or switch versions.
enum Failure {
    /// The version is unusable for this job (does not load, `init` refuses): recorded, not
    /// tried again.
    Refused(String),
    /// Redis trouble: tried again at the next reconcile.
    Transient(anyhow::Error),
}

fn report(joined: Result<JobResult, tokio::task::JoinError>) {
    match joined {
        Ok((name, Ok(_))) => tracing::info!(job = %name, "job ended"),
        Ok((name, Err(e))) => tracing::error!(job = %name, "job ended: {e:#}"),
        Err(e) => tracing::error!("a job task panicked: {e}"),
    }
}
