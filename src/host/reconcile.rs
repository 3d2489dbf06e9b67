//! What a host runs, made to match the registry: read a snapshot, decide with the pure
//! [`plan`](super::plan::plan), carry the plan out. A job of the registry that this host does
//! not run is started; one whose plugin has a new current version gets it prepared off the
//! job's path and handed to its runners, which switch between batches; a stopped, removed or
//! redefined job is stopped (in-flight batches commit). A version that fails to prepare is
//! refused (logged, recorded in the registry, not tried again for that run) and the job keeps
//! its old version; the host serves everything else.
//!
//! Preparing a version (fetching and compiling it, instantiating it and running `init` for
//! the job) runs as a task of its own, never on the reconcile loop: a plugin whose `init`
//! hangs costs its job the init timeout, and the host goes on following the registry for
//! every other job meanwhile. A finished preparation is applied by the next reconcile, if the
//! registry still wants it.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio::task::JoinSet;

use std::sync::Arc;

use super::admin::Readiness;
use super::job::{Assembly, JobResult, Ready, RunningJob};
use super::plan::{Running, plan};
use super::plugins::{self, Failure, Plugins};
use crate::model::short;
use crate::store::control::{JobState, Registry, Snapshot};
use crate::store::lifecycle::{self, Progress};

/// What a host runs, reconciled with the registry.
pub struct Host {
    pub assembly: Assembly,
    pub registry: Registry,
    /// For lifecycle scripts in the jobs' slots.
    pub conn: crate::store::Conn,
    pub plugins: Plugins,
    pub jobs: HashMap<String, RunningJob>,
    /// Jobs told to stop whose runner has not ended yet (not restarted until it has).
    pub stopping: HashSet<String>,
    pub tasks: JoinSet<JobResult>,
    /// The job each task runs.
    pub task_names: HashMap<tokio::task::Id, String>,
    /// (job, run, sha256) this host refused: not tried again for that run of the job (a new
    /// run, e.g. with another config, tries again).
    pub refused: HashSet<(String, u64, String)>,
    /// Jobs waiting for a plugin that is not in the registry (logged once per wait).
    pub waiting: HashSet<String>,
    /// Preparations under way ([`Prepared`]), off the reconcile loop.
    pub preparing: JoinSet<Prepared>,
    /// What each preparation task prepares.
    pub prep_ids: HashMap<tokio::task::Id, Target>,
    /// Finished preparations waiting for the next reconcile to apply them.
    pub ready: HashMap<Target, Ready>,
    /// What `/ready` reports.
    pub readiness: Arc<Readiness>,
    /// The registry's epoch this host last saw (None: none yet).
    pub epoch: Option<String>,
    /// The config file and its compiled plugins, registered again if the registry is lost.
    pub config: crate::config::Config,
    pub config_plugins: HashMap<String, Arc<crate::runtime::LoadedPlugin>>,
    /// `[redis] max_connections` (0: no bound).
    pub max_connections: usize,
    /// Jobs not started here for want of connections (logged once).
    pub capped: HashSet<String>,
    /// This host's record in the host registry.
    pub beat: super::heartbeat::Beat,
}

/// Connections a host holds besides its jobs': the control connection and the pub/sub one.
pub const HOST_CONNECTIONS: usize = 2;
/// The most connections one running job holds: reader and committer of its source, of its
/// lifecycle stream and of its aggregates' fired stream, job state, the lifecycle gate (also
/// used for retention), and a list job's feed and a Redis Cluster job's outbox forwarder.
pub const JOB_CONNECTIONS: usize = 10;

/// A version of a job's plugin for one run of the job: what a preparation is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub job: String,
    pub run: u64,
    pub sha256: String,
    /// The plugin's name, for refusals.
    pub plugin: String,
}

/// A finished preparation.
pub struct Prepared {
    pub target: Target,
    pub result: Result<Ready, Failure>,
}

impl Host {
    /// Make what this host runs match the registry.
    pub async fn reconcile(&mut self) {
        let mut snapshot = match self.registry.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reading the control registry failed: {e}");
                self.readiness.failed(e.to_string());
                return;
            }
        };
        if snapshot.epoch != self.epoch {
            match self.epoch.take() {
                // Gone or replaced: Redis lost its data (a restart without persistence, a
                // failover to an empty replica, FLUSHALL). This host's config file is
                // registered again (as if absent, so hosts doing it together agree).
                Some(seen) => {
                    tracing::error!(was = %seen, now = ?snapshot.epoch, "the control registry in Redis was lost or replaced (did Redis lose its data?): registering this host's config file again; plugins loaded only with `plugin load` must be loaded again");
                    // Every job here starts afresh (its group, its keys, its run were lost
                    // with the rest): stopped now, started again from the new registry once
                    // its runners have ended.
                    for (name, job) in self.jobs.drain() {
                        let _ = job.stop.send(true);
                        self.stopping.insert(name);
                    }
                    let consumer = self.assembly.consumer.clone();
                    super::register::register_config(
                        &mut self.registry,
                        &self.config,
                        &self.config_plugins,
                        &consumer,
                    )
                    .await;
                    match self.registry.snapshot().await {
                        Ok(s) => snapshot = s,
                        Err(e) => {
                            self.readiness.failed(e.to_string());
                            return;
                        }
                    }
                }
                // A registry no host marked yet (an older one, or a failed mark at start).
                None if snapshot.epoch.is_none() => {
                    if let Ok(epoch) = self.registry.mark_epoch(&self.assembly.consumer).await {
                        snapshot.epoch = epoch;
                    }
                }
                None => {}
            }
            self.epoch = snapshot.epoch.clone();
        }
        let running: BTreeMap<&str, Running<'_>> = self
            .jobs
            .iter()
            .map(|(name, j)| {
                let view = Running {
                    spec: &j.spec,
                    run: j.run,
                    sha256: &j.sha256,
                };
                (name.as_str(), view)
            })
            .collect();
        let plan = plan(&snapshot, &running, &self.stopping, &self.refused);
        for name in plan.stop {
            if let Some(job) = self.jobs.remove(&name) {
                tracing::info!(job = %name, "stopping job (registry)");
                let _ = job.stop.send(true);
                self.stopping.insert(name);
            }
        }
        for name in &plan.waiting {
            if self.waiting.insert(name.clone()) {
                let plugin = &snapshot.jobs[name].spec.plugin;
                tracing::error!(job = %name, %plugin, "job waits for its plugin: no plugin of that name is loaded");
            }
        }
        self.waiting.retain(|name| plan.waiting.contains(name));
        let swaps = plan.swap.into_iter().map(|(name, sha, _)| (name, sha));
        let mut wanted = HashSet::new();
        for (name, sha) in plan.start.into_iter().chain(swaps) {
            let entry = &snapshot.jobs[&name];
            let target = Target {
                job: name.clone(),
                run: entry.run,
                sha256: sha,
                plugin: entry.spec.plugin.clone(),
            };
            wanted.insert(target.clone());
            match self.ready.remove(&target) {
                Some(ready) => {
                    let outcome = self.run_ready(&snapshot, &name, ready).await;
                    self.failed(&target, outcome).await;
                }
                None if self.prep_ids.values().any(|t| *t == target) => {}
                None if !self.jobs.contains_key(&name) && !self.connections_allow_one_more() => {
                    if self.capped.insert(name.clone()) {
                        tracing::error!(job = %name, max = self.max_connections, "job not started here: it would take this host past [redis] max_connections");
                    }
                }
                None => self.spawn_prepare(&snapshot, target),
            }
        }
        self.capped
            .retain(|name| !self.jobs.contains_key(name) && wanted.iter().any(|t| &t.job == name));
        // Ready for something the registry no longer wants: dropped.
        self.ready.retain(|t, _| wanted.contains(t));
        self.check_finite(&snapshot).await;
        // Keep compiled versions that are current or in use.
        let keep: HashSet<&String> = snapshot
            .plugins
            .values()
            .map(|v| &v.sha256)
            .chain(self.jobs.values().map(|j| &j.sha256))
            .collect();
        self.plugins.retain(&keep);
        self.readiness.read(
            self.not_running(&snapshot),
            self.jobs.keys().cloned().collect(),
        );
        crate::metrics::jobs_running(self.jobs.len());
        let keys = &self.assembly.keys;
        self.beat
            .tick(&mut self.conn, keys, &self.jobs, &self.stopping)
            .await;
    }

    /// The jobs the registry wants running that this host does not run, each with why.
    /// Whether one more job fits in `[redis] max_connections` (0: no bound): a host holds
    /// [`HOST_CONNECTIONS`], and [`JOB_CONNECTIONS`] per job it runs, stops or prepares.
    fn connections_allow_one_more(&self) -> bool {
        if self.max_connections == 0 {
            return true;
        }
        let preparing_new = self
            .prep_ids
            .values()
            .filter(|t| !self.jobs.contains_key(&t.job))
            .count();
        let jobs = self.jobs.len() + self.stopping.len() + preparing_new + 1;
        HOST_CONNECTIONS + JOB_CONNECTIONS * jobs <= self.max_connections
    }

    fn not_running(&self, snapshot: &Snapshot) -> Vec<String> {
        let mut why = Vec::new();
        for (name, entry) in &snapshot.jobs {
            if entry.state != JobState::Running || self.jobs.contains_key(name) {
                continue;
            }
            let plugin = &entry.spec.plugin;
            if self.capped.contains(name) {
                why.push(format!(
                    "job {name}: not started here: it would take this host past [redis] \
                     max_connections ({})",
                    self.max_connections
                ));
                continue;
            }
            let reason = match snapshot.plugins.get(plugin) {
                None => format!("job {name}: waits for plugin {plugin}, which is not loaded"),
                Some(v)
                    if self
                        .refused
                        .contains(&(name.clone(), entry.run, v.sha256.clone())) =>
                {
                    format!(
                        "job {name}: this host refused version {} of plugin {plugin}",
                        short(&v.sha256)
                    )
                }
                Some(v) => format!(
                    "job {name}: starting (preparing version {} of plugin {plugin})",
                    short(&v.sha256)
                ),
            };
            why.push(reason);
        }
        why
    }

    /// Prepare `target` as a task of its own: fetch and compile the version unless this host
    /// has it, then make the job's instances (running `init`).
    fn spawn_prepare(&mut self, snapshot: &Snapshot, target: Target) {
        let entry = &snapshot.jobs[&target.job];
        let version = snapshot.plugins[&entry.spec.plugin].clone();
        let known = self.plugins.known(&target.sha256, &target.plugin);
        let state = self.jobs.get(&target.job).map(Assembly::state_of);
        let assembly = self.assembly.clone();
        let runtime = self.plugins.runtime().clone();
        let mut registry = self.registry.clone();
        let spec = entry.spec.clone();
        let t = target.clone();
        let task = self.preparing.spawn(async move {
            let result = async {
                let plugin = match known {
                    Some(plugin) => plugin,
                    None => plugins::fetch(&runtime, &mut registry, &spec.plugin, &version).await?,
                };
                assembly.prepare(&spec, plugin, state).await
            }
            .await;
            Prepared { target: t, result }
        });
        self.prep_ids.insert(task.id(), target);
    }

    /// A preparation ended: keep what is ready for the next reconcile, record a refusal.
    /// True when something is ready (the caller reconciles at once; after a failure, the
    /// next tick tries again, so Redis trouble is not retried in a tight loop).
    pub async fn prepared(
        &mut self,
        joined: Result<(tokio::task::Id, Prepared), tokio::task::JoinError>,
    ) -> bool {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let Some(target) = self.prep_ids.remove(&id) else {
            return false;
        };
        match joined {
            Ok((
                _,
                Prepared {
                    result: Ok(ready), ..
                },
            )) => {
                self.plugins.insert(ready.plugin.clone());
                self.ready.insert(target, ready);
                true
            }
            Ok((_, Prepared { result: Err(e), .. })) => {
                self.failed(&target, Err(e)).await;
                false
            }
            Err(e) => {
                tracing::error!(job = %target.job, "preparing a plugin version panicked: {e}");
                false
            }
        }
    }

    /// Run job `name` with a version made ready for it: start it, or (running) switch it.
    async fn run_ready(
        &mut self,
        snapshot: &Snapshot,
        name: &str,
        ready: Ready,
    ) -> Result<(), Failure> {
        if let Some(job) = self.jobs.get_mut(name) {
            self.assembly.swap(job, ready);
            return Ok(());
        }
        let entry = &snapshot.jobs[name];
        let (job, task) = self
            .assembly
            .start(&entry.spec, entry.run, ready, &mut self.tasks)
            .await?;
        self.task_names.insert(task, name.to_string());
        self.jobs.insert(name.to_string(), job);
        Ok(())
    }

    /// Log a failed preparation, start or swap; a refusal is recorded (here and in the
    /// registry).
    async fn failed(&mut self, target: &Target, outcome: Result<(), Failure>) {
        let name = &target.job;
        let sha = &target.sha256;
        match outcome {
            Ok(()) => {}
            Err(Failure::Refused(reason)) => {
                let old = self.jobs.get(name).map(|j| short(&j.sha256).to_string());
                tracing::error!(
                    job = %name,
                    plugin = %target.plugin,
                    version = short(sha),
                    serving = old.as_deref().unwrap_or("nothing"),
                    "plugin version refused: {reason}"
                );
                self.refused.insert((name.clone(), target.run, sha.clone()));
                crate::metrics::refusal(&target.plugin);
                let host = self.assembly.consumer.clone();
                if let Err(e) = self
                    .registry
                    .refuse(&target.plugin, sha, &host, &reason)
                    .await
                {
                    tracing::warn!("recording the refusal failed: {e}");
                }
            }
            Err(Failure::Transient(e)) => tracing::warn!(job = %name, "will try again: {e:#}"),
        }
    }

    /// Finite jobs run here whose source is drained get `job-finished` (once, fleet-wide);
    /// once it is handled, the job is marked finished and every host stops it.
    async fn check_finite(&mut self, snapshot: &Snapshot) {
        let keys = &self.assembly.keys;
        let finite: Vec<(String, u64, String, Option<String>)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.spec.finite)
            .map(|(n, j)| {
                let source = keys.source_stream(&j.spec);
                (n.clone(), j.run, source, keys.upstream_of(&j.spec))
            })
            .collect();
        for (name, run, source, upstream) in finite {
            let progress = lifecycle::check_finished(
                &mut self.conn,
                keys,
                &name,
                &source,
                upstream.as_deref(),
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
                    lifecycle::drained(&mut self.conn, keys, &name, &source)
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
                    Ok(true) => tracing::info!(job = %name, run, "job finished"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(job = %name, "marking the job finished failed: {e}"),
                }
            }
        }
    }

    /// A job's runners ended: stopped on request, or one of them failed (its handler
    /// panicked); a failed job is started again at the next reconcile.
    pub fn ended(&mut self, joined: Result<(tokio::task::Id, JobResult), tokio::task::JoinError>) {
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

/// Log how a job's task ended.
pub fn report(joined: Result<JobResult, tokio::task::JoinError>) {
    match joined {
        Ok((name, Ok(_))) => tracing::info!(job = %name, "job ended"),
        Ok((name, Err(e))) => tracing::error!(job = %name, "job ended: {e:#}"),
        Err(e) => tracing::error!("a job task panicked: {e}"),
    }
}
