//! Spec + plugin → a running job: the ONE place a job is assembled. The host, the benchmark,
//! `check-config` and `job start` all build their handlers and runners here, so the limits,
//! names and connections a job gets do not depend on who asked.
//!
//! A job on a host is two runners sharing one task: the lifecycle runner (the job's
//! lifecycle stream, [`StreamJob::lifecycle`]) and the source runner, which reads only once
//! `job-started` is handled ([`Gate`]). Both hand events to instances of the same plugin
//! version; both swap versions together.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Conn;
use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::plugins::Failure;
use crate::model::{Handler, JobSpec, StateReader, short};
use crate::runner::{HandlerSlot, JobRunner, ReadPolicy, RunnerStats};
use crate::runtime::{GuestContext, Limits, LoadedPlugin, PluginHandler};
use crate::store::lifecycle::{self, Gate};
use crate::store::state::RedisState;
use crate::store::stream::{self, Entries, StreamJob};
use crate::store::timer::Timer;
use crate::store::{Endpoint, Keys, StoreError};

/// The runtime limits of a job's plugin instances; `prefix` is the host's key prefix, whose
/// keys a plugin may not write unless `allowed_streams` names them.
pub fn limits(spec: &JobSpec, prefix: &str) -> Limits {
    Limits {
        deadline: Duration::from_millis(spec.deadline_ms),
        init_timeout: Duration::from_millis(spec.init_timeout_ms),
        memory_bytes: (spec.memory_mb as usize) << 20,
        allowed_streams: spec.allowed_streams.clone(),
        allowed_queues: spec.allowed_queues.clone(),
        reserved_prefix: format!("{prefix}:"),
        own_source: match spec.source() {
            Ok(crate::model::Source::Stream(key)) => key.to_string(),
            _ => String::new(),
        },
        ..Limits::default()
    }
}

/// A handler for `spec`, with its first instance made (so `init` has run with the job's
/// config). Calls into the plugin, so it must run on a blocking thread, never on an async
/// worker: WASI output streams block on the async runtime (see [`prepare_handler_async`]).
pub fn prepare_handler(
    plugin: Arc<LoadedPlugin>,
    spec: &JobSpec,
    prefix: &str,
    state: Option<Arc<dyn StateReader>>,
) -> anyhow::Result<PluginHandler> {
    let mut handler = PluginHandler::new(
        plugin,
        GuestContext {
            job: spec.name.as_str().into(),
            plugin: spec.plugin.as_str().into(),
            config: spec.plugin_config(),
            limits: limits(spec, prefix),
            state,
            read_dir: match spec.source() {
                Ok(crate::model::Source::Scan(root)) if spec.scan.read => Some(root.to_string()),
                _ => None,
            },
        },
    )
    .with_concurrency(spec.concurrency);
    // The failure stays inside (its kind tells a refusal from Redis trouble).
    handler.prepare().map_err(|f| {
        let message = format!("job `{}` cannot start: {}", spec.name, f.message);
        anyhow::Error::new(f).context(message)
    })?;
    Ok(handler)
}

/// [`prepare_handler`] on a blocking thread, for async callers.
pub async fn prepare_handler_async(
    plugin: Arc<LoadedPlugin>,
    spec: JobSpec,
    prefix: String,
    state: Option<Arc<dyn StateReader>>,
) -> anyhow::Result<PluginHandler> {
    tokio::task::spawn_blocking(move || prepare_handler(plugin, &spec, &prefix, state))
        .await
        .map_err(|e| anyhow::anyhow!("preparing the plugin panicked: {e}"))?
}

/// The names of a job's source stream, as the store reads and commits it. `run`: the run it
/// serves (its commits are fenced on it), None for no fence.
pub fn stream_job(keys: &Keys, spec: &JobSpec, consumer: &str, run: Option<u64>) -> StreamJob {
    let stream = keys.source_stream(spec);
    StreamJob {
        status_ttl_s: spec.status_ttl_s,
        done_ttl_s: spec.done_ttl_s,
        delayed_key: keys.delayed_of(spec),
        // A list's items reach the job's stream through its feed.
        entries: match spec.source() {
            Ok(
                crate::model::Source::List(_)
                | crate::model::Source::Channel(_)
                | crate::model::Source::Scan(_)
                | crate::model::Source::Timer(_),
            ) => Entries::Fed,
            _ => Entries::Source,
        },
        run,
        wait_replicas: spec.wait_replicas,
        wait_timeout_ms: spec.wait_timeout_ms,
        flow: spec.flow.clone(),
        aggregates: spec.aggregate.clone(),
        ..StreamJob::new(keys, &spec.name, &spec.plugin, &stream, consumer)
    }
}

fn read_policy(spec: &JobSpec) -> ReadPolicy {
    ReadPolicy {
        batch: spec.batch,
        block_ms: spec.block_ms,
        claim_idle_ms: spec.claim_idle_ms,
    }
}

/// Where and as whom jobs run: one per host (or benchmark).
#[derive(Clone)]
pub struct Assembly {
    pub redis: Endpoint,
    pub keys: Keys,
    /// The key prefix (`keys`' own), for the plugin's limits.
    pub prefix: String,
    /// This host's consumer name in every job's group.
    pub consumer: String,
    /// The turns of each priority group on this host.
    pub gates: crate::runner::priority::Gates,
}

/// A job started on this host.
pub struct RunningJob {
    pub spec: JobSpec,
    /// The run it serves.
    pub run: u64,
    /// The plugin version both runners use.
    pub sha256: String,
    /// Send true to stop both runners (they commit what they hold first).
    pub stop: watch::Sender<bool>,
    /// Where new handlers go, for the source, the lifecycle and the fired runner.
    swap: Vec<HandlerSlot>,
    /// Job-state reads of both runners' handlers.
    state: Arc<dyn StateReader>,
}

/// What a job's task returns: its name, and how its runners ended.
pub type JobResult = (String, anyhow::Result<RunnerStats>);

/// A plugin version made ready for a job, off the reconcile loop ([`Assembly::prepare`]):
/// an instance for each of the job's runners, `init` run on both.
pub struct Ready {
    pub plugin: Arc<LoadedPlugin>,
    /// The source's, the lifecycle stream's, and (with aggregates) the fired stream's.
    handlers: Vec<Box<dyn Handler>>,
    /// Where both handlers read job state.
    state: Arc<dyn StateReader>,
}

/// Redis trouble while assembling job `name`: tried again at the next reconcile.
fn transient(name: &str) -> impl Fn(anyhow::Error) -> Failure + Copy + '_ {
    move |e| Failure::Transient(e.context(format!("job `{name}`")))
}

impl Assembly {
    /// A reconnecting connection for one of `spec`'s blocking readers or committers.
    async fn connect(&self, spec: &JobSpec) -> anyhow::Result<Conn> {
        self.redis
            .connect(Duration::from_millis(spec.block_ms))
            .await
            .with_context(|| format!("connecting to Redis at {}", self.redis))
    }

    /// Where `spec`'s plugin reads its job state (its own connection; reads block on it from
    /// the plugin's thread).
    pub async fn state(&self, spec: &JobSpec) -> anyhow::Result<Arc<dyn StateReader>> {
        let job_key = self.keys.job(&spec.name, &self.keys.source_stream(spec));
        Ok(Arc::new(RedisState::new(
            self.connect(spec).await?,
            job_key,
        )))
    }

    /// A runner of `spec`'s source stream, fenced on `run`, handing events to `handler`.
    pub async fn source_runner(
        &self,
        spec: &JobSpec,
        run: Option<u64>,
        handler: Box<dyn Handler>,
    ) -> anyhow::Result<JobRunner> {
        let job = stream_job(&self.keys, spec, &self.consumer, run);
        let (read, commit) = (self.connect(spec).await?, self.connect(spec).await?);
        let source = stream::open(read, commit, job, spec.start).await?;
        let mut runner = JobRunner::new(source, handler, read_policy(spec), spec.delivery_policy());
        if let Some(b) = spec.breaker.clone().filter(|b| b.failure_pct.is_some()) {
            runner = runner.with_breaker(b);
        }
        Ok(match &spec.priority_group {
            Some(group) => runner.with_priority(crate::runner::priority::Priority {
                gate: self.gates.of(group),
                weight: spec.weight,
            }),
            None => runner,
        })
    }

    /// A runner of one of `spec`'s own streams besides its source (its lifecycle stream, its
    /// fired stream), read from the beginning, fenced on `run` like the source: a host that
    /// has not yet seen a restart of the job cannot handle the new run's entries with the old
    /// run's spec.
    async fn side_runner(
        &self,
        spec: &JobSpec,
        run: u64,
        job: StreamJob,
        handler: Box<dyn Handler>,
    ) -> Result<JobRunner, Failure> {
        let transient = transient(&spec.name);
        let job = StreamJob {
            run: Some(run),
            status_ttl_s: spec.status_ttl_s,
            done_ttl_s: spec.done_ttl_s,
            wait_replicas: spec.wait_replicas,
            wait_timeout_ms: spec.wait_timeout_ms,
            ..job
        };
        let (read, commit) = (
            self.connect(spec).await.map_err(transient)?,
            self.connect(spec).await.map_err(transient)?,
        );
        let opened = stream::open(read, commit, job, crate::model::Start::Beginning)
            .await
            .map_err(|e| transient(e.into()))?;
        Ok(JobRunner::new(
            opened,
            handler,
            read_policy(spec),
            spec.delivery_policy(),
        ))
    }

    /// Make `plugin` ready for `spec`: both runners' instances, `init` run on each (within
    /// the job's `init_timeout_ms`), reading job state through `state` (a running job's), else
    /// through a new connection. Slow plugins only slow this: the host runs it as a task of
    /// its own, off the reconcile loop.
    pub async fn prepare(
        &self,
        spec: &JobSpec,
        plugin: Arc<LoadedPlugin>,
        state: Option<Arc<dyn StateReader>>,
    ) -> Result<Ready, Failure> {
        let state = match state {
            Some(state) => state,
            None => self.state(spec).await.map_err(transient(&spec.name))?,
        };
        let handlers = self.handlers(spec, &plugin, &state).await?;
        Ok(Ready {
            plugin,
            handlers,
            state,
        })
    }

    /// Start run `run` of `spec` with `ready` as a task of `tasks`: issue `job-started`
    /// (once per run, fleet-wide), then run the lifecycle runner and, behind its gate, the
    /// source runner.
    pub async fn start(
        &self,
        spec: &JobSpec,
        run: u64,
        ready: Ready,
        tasks: &mut JoinSet<JobResult>,
    ) -> Result<(RunningJob, tokio::task::Id), Failure> {
        let name = spec.name.as_str();
        let transient = transient(name);
        let store = |e: StoreError| transient(e.into());
        let source = self.keys.source_stream(spec);
        let Ready {
            plugin,
            handlers,
            state,
        } = ready;
        let mut handlers = handlers.into_iter();
        let (Some(handler), Some(life_handler)) = (handlers.next(), handlers.next()) else {
            return Err(Failure::Refused("no handlers were made for the job".into()));
        };
        let fired_handler = handlers.next();
        let mut conn = self.connect(spec).await.map_err(transient)?;
        if lifecycle::begin(&mut conn, &self.keys, name, &source, run)
            .await
            .map_err(store)?
        {
            tracing::info!(job = %name, run, "job-started issued");
        }
        // A scan's first pass of the run begins with the run (before any host could see its
        // empty walk as a finished one).
        let scan = super::scan::scan_job(&self.keys, spec, &self.consumer);
        if let Some(scan) = &scan {
            super::scan::tick(&mut conn, scan, spec, run).await;
        }
        // Fenced on the run like the source: a host that has not yet seen a restart of the
        // job cannot handle the new run's `job-started` with the old run's spec.
        let life = StreamJob::lifecycle(&self.keys, name, &spec.plugin, &source, &self.consumer);
        let life_runner = self.side_runner(spec, run, life, life_handler).await?;
        let runner = self
            .source_runner(spec, Some(run), handler)
            .await
            .with_context(|| format!("opening stream `{source}`"))
            .map_err(transient)?;
        // With aggregates: the runner of their fired stream (`threshold-reached`), started
        // with the source's, behind the same gate.
        let fired_runner = match fired_handler {
            Some(h) if !spec.aggregate.is_empty() => {
                let fired =
                    StreamJob::fired(&self.keys, name, &spec.plugin, &source, &self.consumer);
                Some(self.side_runner(spec, run, fired, h).await?)
            }
            _ => None,
        };
        let mut swap = vec![runner.swapper(), life_runner.swapper()];
        swap.extend(fired_runner.as_ref().map(JobRunner::swapper));
        let (stop, stop_rx) = watch::channel(false);
        // Tasks that run beside the runners, ended at the job's stop.
        let mut beside = Vec::new();
        // The fired stream of its aggregates is the job's own: trimmed once handled.
        let fired = (!spec.aggregate.is_empty())
            .then(|| crate::store::aggregate::fired_stream(&self.keys.job(name, &source)));
        let trimmed = spec.trims_source().then_some(None).into_iter();
        for own in trimmed.chain(fired.map(Some)) {
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(super::retention::keep_trimmed(
                conn.clone(),
                self.keys.clone(),
                spec.clone(),
                self.consumer.clone(),
                own,
                stop_rx,
            ));
            beside.push(Beside::stopped(stop, task, Duration::from_secs(2)));
        }
        // A list source's feed: moves the list's items into the job's list stream, after
        // the source runner made the group its lag is measured on. Its own connection: it
        // blocks waiting for items.
        if let Ok(crate::model::Source::List(key)) = spec.source() {
            let feed = crate::store::list::Feed {
                job: name.to_string(),
                list: key.to_string(),
                stream: source.clone(),
                group: self.keys.group(name),
                pop: spec.list_pop,
                batch: spec.batch,
                max_lag: (spec.batch * 10).max(LIST_MAX_LAG),
            };
            let own = self
                .redis
                .connect(Duration::from_secs(1))
                .await
                .map_err(|e| transient(e.into()))?;
            beside.push(Beside::aborted(tokio::spawn(
                crate::store::list::keep_pulling(own, feed),
            )));
        }
        // A scan's walker: every host running the job walks; its own connection for the
        // blocking reads of walk tasks.
        if let Some(scan) = scan {
            let read = self
                .redis
                .connect(Duration::from_secs(1))
                .await
                .map_err(|e| transient(e.into()))?;
            beside.push(Beside::aborted(tokio::spawn(super::scan::keep_walking(
                conn.clone(),
                read,
                scan,
                spec.clone(),
                run,
            ))));
        }
        // Aggregates' timers: every host running the job fires windows whose time is up.
        for agg in &spec.aggregate {
            beside.push(Beside::aborted(tokio::spawn(keep_firing(
                conn.clone(),
                name.to_string(),
                self.keys.job(name, &source),
                agg.clone(),
            ))));
        }
        // The breaker: every host running the job watches its fleet-wide counters.
        if let Some(breaker) = spec.breaker.clone().filter(|b| b.failure_pct.is_some()) {
            beside.push(Beside::aborted(tokio::spawn(
                super::breaker::keep_watching(
                    conn.clone(),
                    self.keys.clone(),
                    name.to_string(),
                    self.keys.job(name, &source),
                    run,
                    breaker,
                ),
            )));
        }
        // A timer's ticker: every host running the job calls at each due time; the tick is
        // appended once.
        if let Ok(crate::model::Source::Timer(schedule)) = spec.source() {
            let timer = Timer::new(schedule).map_err(Failure::Refused)?;
            beside.push(Beside::aborted(tokio::spawn(keep_ticking(
                conn.clone(),
                self.keys.clone(),
                spec.name.clone(),
                (spec.source.clone(), spec.catch_up),
                timer,
            ))));
        }
        // A channel's subscriber (on one host of the fleet at a time): lets its lease go at
        // the job's stop, so that another host subscribes at once.
        if let Ok(crate::model::Source::Channel(channel)) = spec.source() {
            let bridge = crate::store::channel::Bridge {
                job: name.to_string(),
                channel: channel.to_string(),
                pattern: crate::store::channel::is_pattern(channel),
                stream: source.clone(),
                lease: self.keys.channel_lease(name),
                consumer: self.consumer.clone(),
            };
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(crate::store::channel::keep_bridging(
                self.redis.clone(),
                conn.clone(),
                bridge,
                stop_rx,
            ));
            beside.push(Beside::stopped(stop, task, Duration::from_secs(2)));
        }
        // On a cluster, effects aimed at other slots wait in the job's outbox: forwarded
        // while the job runs here (by one forwarder of the fleet at a time), drained at its
        // stop. Its own connection: it waits for new entries with a blocking read.
        if conn.is_cluster() {
            let (stop, stop_rx) = watch::channel(false);
            let outbox = crate::store::forward::Outbox {
                job: name.to_string(),
                source: source.clone(),
                keys: self.keys.clone(),
                holder: crate::store::forward::Outbox::token(&self.consumer),
                wait_replicas: spec.wait_replicas,
                wait_timeout_ms: spec.wait_timeout_ms,
            };
            let own = self
                .redis
                .connect(Duration::from_secs(1))
                .await
                .map_err(|e| transient(e.into()))?;
            let task = tokio::spawn(crate::store::forward::keep_forwarding(
                own,
                outbox,
                stop_rx,
                FORWARD_DRAIN,
            ));
            beside.push(Beside::stopped(
                stop,
                task,
                FORWARD_DRAIN + Duration::from_secs(1),
            ));
        }
        let gate = Gate {
            conn,
            keys: self.keys.clone(),
            job: name.to_string(),
            source,
        };
        let task = tasks.spawn(run_job(
            runner,
            fired_runner,
            life_runner,
            gate,
            stop_rx,
            name.to_string(),
            beside,
        ));
        tracing::info!(job = %name, plugin = %spec.plugin, version = short(&plugin.sha256), "job started");
        let job = RunningJob {
            spec: spec.clone(),
            run,
            sha256: plugin.sha256.clone(),
            stop,
            swap,
            state,
        };
        Ok((job, task.id()))
    }

    /// One handler for each runner of `spec`, `init` run on both.
    async fn handlers(
        &self,
        spec: &JobSpec,
        plugin: &Arc<LoadedPlugin>,
        state: &Arc<dyn StateReader>,
    ) -> Result<Vec<Box<dyn Handler>>, Failure> {
        let prepare = |spec: JobSpec| {
            prepare_handler_async(
                plugin.clone(),
                spec,
                self.prefix.clone(),
                Some(state.clone()),
            )
        };
        // The job's concurrency is for its source; lifecycle events come one or two a run.
        let lifecycle = JobSpec {
            concurrency: 1,
            ..spec.clone()
        };
        // A version `init` refuses is refused for the run; one whose `init` met Redis
        // trouble (a state read failed) is tried again.
        let refused = |e: anyhow::Error| match e.downcast_ref::<crate::model::Failure>() {
            Some(f) if f.kind != crate::model::FailureKind::Init => Failure::Transient(e),
            _ => Failure::Refused(e.to_string()),
        };
        // All at once: a slow `init` costs its timeout once, not twice. Threshold events
        // come one per window: one instance for them.
        let fired = (!spec.aggregate.is_empty()).then(|| lifecycle.clone());
        let (source, life, fired) =
            tokio::join!(prepare(spec.clone()), prepare(lifecycle), async {
                match fired {
                    Some(spec) => Some(prepare(spec).await),
                    None => None,
                }
            });
        let mut handlers: Vec<Box<dyn Handler>> = vec![
            Box::new(source.map_err(refused)?),
            Box::new(life.map_err(refused)?),
        ];
        if let Some(fired) = fired {
            handlers.push(Box::new(fired.map_err(refused)?));
        }
        Ok(handlers)
    }

    /// The state reader of a running job, for preparing a new version for it.
    pub fn state_of(job: &RunningJob) -> Arc<dyn StateReader> {
        job.state.clone()
    }

    /// Hand a version made ready for a running job to both its runners, which switch
    /// between batches.
    pub fn swap(&self, job: &mut RunningJob, ready: Ready) {
        for (slot, handler) in job.swap.iter().zip(ready.handlers) {
            slot.put(handler);
        }
        tracing::info!(job = %job.spec.name, from = short(&job.sha256), to = short(&ready.plugin.sha256), "new plugin version ready; switching at the next batch");
        job.sha256 = ready.plugin.sha256.clone();
        crate::metrics::swap(&job.spec.name);
    }
}

/// One job on this host: its lifecycle runner, and its source runner (with its fired
/// stream's, if it has aggregates) once `job-started` is handled (by any host). Ends when the
/// host stops the job, or when a runner fails (the others are stopped then, committing what
/// they hold).
async fn run_job(
    runner: JobRunner,
    fired_runner: Option<JobRunner>,
    life_runner: JobRunner,
    gate: Gate,
    mut stop: watch::Receiver<bool>,
    name: String,
    beside: Vec<Beside>,
) -> JobResult {
    let (life_stop, life_stop_rx) = watch::channel(false);
    let (source_stop, source_stop_rx) = watch::channel(false);
    let mut life = tokio::spawn(life_runner.run(life_stop_rx));
    let mut source = tokio::spawn(async move {
        if !gate.wait(source_stop_rx.clone()).await {
            return Ok(Default::default());
        }
        match fired_runner {
            None => runner.run(source_stop_rx).await,
            // The source's stats are the job's; either failing fails the job.
            Some(fired) => {
                let (source, fired) = tokio::join!(
                    runner.run(source_stop_rx.clone()),
                    fired.run(source_stop_rx)
                );
                fired.and(source)
            }
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
    // Those with a stop signal finish what they do (the outbox's forwarder forwards what
    // the last batches put there, a subscriber lets its lease go), within their grace; the
    // rest, and those past it, are aborted (their leases lapse; another host goes on).
    for side in &beside {
        if let Some(stop) = &side.stop {
            let _ = stop.send(true);
        }
    }
    for mut side in beside {
        if side.stop.is_none()
            || tokio::time::timeout(side.grace, &mut side.task)
                .await
                .is_err()
        {
            side.task.abort();
        }
    }
    (name, result)
}

/// Call a timer job's due times until aborted with the job: at each multiple of `period`
/// (and once at the start, which records where the job starts).
async fn keep_ticking(
    mut conn: Conn,
    keys: Keys,
    job: String,
    (source, catch_up): (String, bool),
    timer: Timer,
) {
    use crate::store::timer;
    let mut failing = false;
    loop {
        let now = crate::model::now_ms();
        let Some(due) = timer.due_at(now).or_else(|| timer.next_after(now)) else {
            tracing::warn!(job = %job, "the timer has no due time left: it ticks no more");
            return;
        };
        if due <= now {
            match timer::fire(&mut conn, &keys, &job, (&source, catch_up), due, &timer).await {
                Ok(_) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(job = %job, "appending the timer's tick failed (tried again at the next one): {e}");
                }
                Err(_) => {}
            }
        }
        // Until the next due time (a little after, so the clock has passed it), but look
        // again within a second while Redis fails, and at least once a day.
        let wait = timer
            .next_after(due)
            .map_or(Duration::from_secs(86_400), |next| timer::until(next + 5));
        tokio::time::sleep(if failing {
            wait.min(Duration::from_secs(1))
        } else {
            wait.min(Duration::from_secs(86_400))
        })
        .await;
    }
}

/// Fire an aggregate's windows whose time is up (and drop idle ones) until aborted with the
/// job: a tenth of its `within_s` apart (100 ms to 1 s).
async fn keep_firing(mut conn: Conn, job: String, job_key: String, agg: crate::model::Aggregate) {
    let every = Duration::from_millis((agg.within_s.unwrap_or(10) * 100).clamp(100, 1000));
    let mut failing = false;
    loop {
        match crate::store::aggregate::tick(&mut conn, &job_key, &agg).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(job = %job, aggregate = %agg.name, "firing the aggregate's due windows failed (tried again): {e}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

/// A task of a job's beside its runners: trimming, a list's feed, a channel's subscriber,
/// the outbox's forwarder.
struct Beside {
    task: tokio::task::JoinHandle<()>,
    /// Its stop signal, if it has something to finish; else it is aborted.
    stop: Option<watch::Sender<bool>>,
    /// How long it may take to finish once stopped.
    grace: Duration,
}

impl Beside {
    fn aborted(task: tokio::task::JoinHandle<()>) -> Self {
        Beside {
            task,
            stop: None,
            grace: Duration::ZERO,
        }
    }

    fn stopped(
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
        grace: Duration,
    ) -> Self {
        Beside {
            task,
            stop: Some(stop),
            grace,
        }
    }
}

/// A list job's feed moves items while its group has fewer than this many entries
/// undelivered (or 10 batches, if more): the rest of a backlog waits in the list, where
/// producers and their tools see it.
const LIST_MAX_LAG: usize = 1000;

/// How long a stopping job's forwarder goes on forwarding what its outbox holds.
const FORWARD_DRAIN: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_plugin_gets_its_limits_and_may_not_write_sluices_keys() {
        let j = JobSpec::new("echo-events", "stream:events", "echo");
        assert_eq!(limits(&j, "sluice").memory_bytes, 64 << 20);
        assert_eq!(limits(&j, "sluice").reserved_prefix, "sluice:");
        assert_eq!(limits(&j, "sluice").deadline, Duration::from_millis(1000));
    }

    #[test]
    fn a_queue_jobs_stream_moves_its_delayed_tasks_in() {
        let keys = Keys::new("sluice");
        let mut j = JobSpec::new("mailer", "queue:mail", "echo");
        j.done_ttl_s = 5;
        let s = stream_job(&keys, &j, "host-1", Some(3));
        assert_eq!(s.stream, "sluice:queue:{mail}");
        assert_eq!(
            s.delayed_key.as_deref(),
            Some("sluice:queue:{mail}:delayed")
        );
        assert_eq!((s.done_ttl_s, s.run), (5, Some(3)));
        assert_eq!(s.consumer, "host-1");
    }
}
