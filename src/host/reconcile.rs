//! What a host runs, made to match the registry: read a snapshot, decide with the pure
//! [`plan`](super::plan::plan), carry the plan out. A job of the registry that this host does
//! not run is started; one whose plugin has a new current version gets it prepared off the
//! job's path and handed to its runners, which switch between batches; a stopped, removed or
//! redefined job is stopped (in-flight batches commit). A version that fails to prepare is
//! refused (logged, recorded in the registry, not tried again for that run) and the job keeps
//! its old version; the host serves everything else.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio::task::JoinSet;

use super::job::{Assembly, JobResult, RunningJob};
use super::plan::{Running, plan};
use super::plugins::{Failure, Plugins};
use crate::model::short;
use crate::store::control::{JobState, Registry, Snapshot};
use crate::store::lifecycle::{self, Progress};

/// What a host runs, reconciled with the registry.
pub struct Host {
    pub assembly: Assembly,
    pub registry: Registry,
    /// For lifecycle scripts in the jobs' slots.
    pub conn: redis::aio::ConnectionManager,
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
}

impl Host {
    /// Make what this host runs match the registry.
    pub async fn reconcile(&mut self) {
        let snapshot = match self.registry.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reading the control registry failed: {e}");
                return;
            }
        };
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
        for (name, sha) in plan.start.into_iter().chain(swaps) {
            let outcome = self.run_current(&snapshot, &name).await;
            self.failed(&snapshot, &name, &sha, outcome).await;
        }
        self.check_finite(&snapshot).await;
        // Keep compiled versions that are current or in use.
        let keep: HashSet<&String> = snapshot
            .plugins
            .values()
            .map(|v| &v.sha256)
            .chain(self.jobs.values().map(|j| &j.sha256))
            .collect();
        self.plugins.retain(&keep);
    }

    /// Run job `name` on its plugin's current version: start it, or (running) switch it.
    async fn run_current(&mut self, snapshot: &Snapshot, name: &str) -> Result<(), Failure> {
        let entry = &snapshot.jobs[name];
        let version = &snapshot.plugins[&entry.spec.plugin];
        let plugin = self
            .plugins
            .get(&mut self.registry, &entry.spec.plugin, version)
            .await?;
        if let Some(job) = self.jobs.get_mut(name) {
            return self.assembly.swap(job, plugin).await;
        }
        let (job, task) = self
            .assembly
            .start(&entry.spec, entry.run, plugin, &mut self.tasks)
            .await?;
        self.task_names.insert(task, name.to_string());
        self.jobs.insert(name.to_string(), job);
        Ok(())
    }

    /// Log a failed start or swap; a refusal is recorded (here and in the registry).
    async fn failed(
        &mut self,
        snapshot: &Snapshot,
        name: &str,
        sha: &str,
        outcome: Result<(), Failure>,
    ) {
        let entry = &snapshot.jobs[name];
        match outcome {
            Ok(()) => {}
            Err(Failure::Refused(reason)) => {
                let old = self.jobs.get(name).map(|j| short(&j.sha256).to_string());
                tracing::error!(
                    job = %name,
                    plugin = %entry.spec.plugin,
                    version = short(sha),
                    serving = old.as_deref().unwrap_or("nothing"),
                    "plugin version refused: {reason}"
                );
                self.refused
                    .insert((name.to_string(), entry.run, sha.to_string()));
                let host = self.assembly.consumer.clone();
                if let Err(e) = self
                    .registry
                    .refuse(&entry.spec.plugin, sha, &host, &reason)
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
                (n.clone(), j.run, source, keys.delayed_of(&j.spec))
            })
            .collect();
        for (name, run, source, delayed) in finite {
            let progress = lifecycle::check_finished(
                &mut self.conn,
                keys,
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
