//! `sluice run`: a host's life, in order (read [`run`] top to bottom):
//! compile the config file's plugins → find Redis (or start the embedded one) and wait for it
//! → register the config file's plugins and jobs → follow the control channel and the plugin
//! directory → reconcile with the registry on every notice and every second, until the
//! shutdown signal → let jobs finish and commit their batches within the grace period →
//! stop the embedded Redis.
//!
//! The rooms: [`register`] (what a host registers at start), [`plan`] (the pure reconcile
//! decision), [`reconcile`] (carrying it out), [`plugins`] (compiled versions: memory, compile
//! cache, registry), [`job`] (spec + plugin → running job, the one place a job is
//! assembled), [`retention`] (trimming sources), [`heartbeat`] (the host registry),
//! [`watch`] (`--plugins DIR`), [`admin`] (the admin HTTP server).

pub mod admin;
pub mod breaker;
pub mod heartbeat;
pub mod job;
pub mod plan;
pub mod plugins;
pub mod reconcile;
pub mod register;
pub mod retention;
pub mod scan;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use self::job::Assembly;
use self::plugins::Plugins;
use self::reconcile::{Host, report};
use crate::config::Config;
use crate::runtime::Runtime;
use crate::store::control::{Registry, watch_notices};
use crate::store::embedded::EmbeddedRedis;
use crate::store::{Endpoint, Keys};

/// How often a host reads the whole registry, whatever the control channel said: a host that
/// missed a notice (disconnected) catches up within this time.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// The consumer name of this process: `[host] consumer`, else `<hostname>-<pid>`.
pub fn consumer_name(config: &Config) -> String {
    config.host.consumer.clone().unwrap_or_else(|| {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        format!("{host}-{}", std::process::id())
    })
}

/// Where a host's plugins and jobs come from besides the registry.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// The file the config came from, read again on SIGHUP (None: no file).
    pub config: Option<PathBuf>,
    /// `--plugins DIR` / `[plugins] dir`: loaded and watched.
    pub plugins_dir: Option<PathBuf>,
}

/// Run the host until `shutdown` completes. `redis_url` overrides the config's.
pub async fn run(
    config: Config,
    files: Files,
    redis_url: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = config.host.data_dir.clone();
    // SIGHUP's default is to end the process: caught from the start (compiling, waiting for
    // Redis), acted on once the host serves.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let runtime = Arc::new(Runtime::new(Some(&data_dir.join("cache")))?);
    // A plugin file that does not load is reported; the host serves the rest.
    let (plugins, errors) = register::load_plugins(&runtime, &config);
    for e in &errors {
        tracing::error!("{e:#}");
    }

    // The admin server answers from the start: /live at once, /ready once the registry is read.
    let readiness = Arc::new(admin::Readiness::default());
    let admin = match &config.admin.listen {
        Some(addr) => {
            let options = admin::Options {
                token: config.admin.token()?,
                ingest: admin::allow_lists(&config.ingest)?,
                prefix: config.host.prefix.clone(),
                allowed_hosts: config.admin.allowed_hosts.clone(),
            };
            Some(admin::start(addr.parse()?, readiness.clone(), options).await?)
        }
        None if !config.ingest.is_empty() => anyhow::bail!(
            "[[ingest]] is served by the admin server: set [admin] listen (or --admin ADDR)"
        ),
        None => None,
    };
    let (redis, embedded) = match config.redis.resolve(redis_url)? {
        Some(url) => (Endpoint::new(&url, &config.redis.connection())?, None),
        None => {
            let embedded =
                EmbeddedRedis::start(&data_dir, config.redis.embedded_appendfsync).await?;
            let local = config.redis.local_connection();
            (Endpoint::new(&embedded.url(), &local)?, Some(embedded))
        }
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let ready = tokio::select! {
        ready = redis.wait_until_up() => Some(ready),
        () = &mut shutdown => None,
    };
    let mut embedded = embedded;
    let result = match ready {
        Some(Ok(())) => {
            let start = Start {
                files,
                plugins,
                runtime,
                readiness,
                hangup,
            };
            let serving = serve(&config, &redis, start, shutdown);
            match embedded.as_mut() {
                // The embedded Redis is started again whenever it dies; connections follow.
                Some(e) => tokio::select! {
                    result = serving => result,
                    () = e.supervise() => Ok(()),
                },
                None => serving.await,
            }
        }
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    if let Some(embedded) = embedded {
        embedded.stop().await;
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    result
}

/// What a host starts serving with, made before Redis was reached.
struct Start {
    files: Files,
    /// The config file's plugins, compiled.
    plugins: HashMap<String, Arc<crate::runtime::LoadedPlugin>>,
    runtime: Arc<Runtime>,
    readiness: Arc<admin::Readiness>,
    /// SIGHUP, caught since the process started.
    hangup: tokio::signal::unix::Signal,
}

async fn serve(
    config: &Config,
    redis: &Endpoint,
    start: Start,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Start {
        files,
        plugins,
        runtime,
        readiness,
        mut hangup,
    } = start;
    let keys = Keys::new(&config.host.prefix);
    let consumer = consumer_name(config);
    let conn = redis
        .connect(Duration::ZERO)
        .await
        .with_context(|| format!("connecting to Redis at {redis}"))?;
    readiness.attach(conn.clone(), keys.clone(), redis.clone());
    let mut registry = Registry::new(conn.clone(), keys.clone());
    register::register_config(&mut registry, config, &plugins, &consumer).await;

    let wake = Arc::new(Notify::new());
    let subscriber = tokio::spawn(watch_notices(
        redis.clone(),
        keys.ctl_channel(),
        wake.clone(),
    ));
    let watcher = match files.plugins_dir {
        Some(dir) => Some(
            watch::PluginDir::start(&dir, registry.clone(), runtime.clone(), consumer.clone())
                .with_context(|| format!("watching {}", dir.display()))?,
        ),
        None => None,
    };
    let mut host = Host {
        assembly: Assembly {
            redis: redis.clone(),
            keys,
            prefix: config.host.prefix.clone(),
            consumer: consumer.clone(),
            gates: Default::default(),
        },
        registry,
        conn,
        config_plugins: plugins.clone(),
        config: config.clone(),
        epoch: None,
        plugins: Plugins::new(runtime.clone(), plugins.into_values()),
        jobs: HashMap::new(),
        stopping: HashSet::new(),
        tasks: JoinSet::new(),
        task_names: HashMap::new(),
        refused: HashSet::new(),
        max_connections: config.redis.max_connections,
        capped: HashSet::new(),
        waiting: HashSet::new(),
        preparing: JoinSet::new(),
        prep_ids: HashMap::new(),
        ready: HashMap::new(),
        readiness,
        beat: heartbeat::Beat::new(&consumer, config.admin.listen.clone()),
    };
    tracing::info!(%redis, consumer, "sluice ready");
    // Under systemd (`Type=notify`): started. A no-op elsewhere.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut shutdown = std::pin::pin!(shutdown);
    let mut reloads = JoinSet::new();
    // A reload of the config file at `path`, as a task of its own.
    let reload = |path: &PathBuf, registry: &Registry| {
        register::reload_owned(
            path.clone(),
            config.clone(),
            runtime.clone(),
            registry.clone(),
            consumer.clone(),
        )
    };
    // A SIGHUP during a reload: one more reload once it is done (the file may have changed).
    let mut reload_again = false;
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // One step of the host's work; the shutdown signal is heard during it too (a step
        // waits only on Redis, bounded by its timeouts, but SIGTERM should not wait for that).
        let step = async {
            tokio::select! {
                () = wake.notified() => host.reconcile().await,
                _ = tick.tick() => host.reconcile().await,
                Some(joined) = host.tasks.join_next_with_id() => host.ended(joined),
                Some(joined) = host.preparing.join_next_with_id() => {
                    if host.prepared(joined).await {
                        host.reconcile().await;
                    }
                }
                Some(()) = hangup.recv() => match &files.config {
                    // Compiling may take a while: off the loop, one reload at a time.
                    Some(path) if reloads.is_empty() => {
                        tracing::info!(path = %path.display(), "SIGHUP: reloading the config file");
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                        reloads.spawn(reload(path, &host.registry));
                    }
                    Some(_) => {
                        tracing::info!("SIGHUP: a reload is under way; reloading again after it");
                        reload_again = true;
                    }
                    None => tracing::warn!("SIGHUP: no config file to reload"),
                },
                Some(_) = reloads.join_next() => {
                    match (&files.config, std::mem::take(&mut reload_again)) {
                        (Some(path), true) => {
                            reloads.spawn(reload(path, &host.registry));
                        }
                        _ => {
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                        }
                    }
                    host.reconcile().await
                }
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = step => {}
        }
    }
    // Versions still being prepared are dropped (an `init` under way ends at its timeout).
    host.preparing.abort_all();
    subscriber.abort();
    drop(watcher);

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
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
    // Off the host registry at once (else it is listed as live for a few seconds more).
    let leave = host.beat.leave(&mut host.conn, &host.assembly.keys);
    let _ = tokio::time::timeout(Duration::from_secs(1), leave).await;
    Ok(())
}
