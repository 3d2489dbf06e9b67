//! The control registry: plugins and jobs kept in Redis, so that every host of a fleet runs
//! the same versions of the same jobs. Hosts are stateless: they read the registry (on a
//! notice on the control channel, and every second to catch up on missed notices) and
//! reconcile what they run with it.
//!
//! Keys: [`Keys::ctl_plugins`], [`Keys::ctl_versions`], [`Keys::ctl_blob`], [`Keys::ctl_jobs`],
//! [`Keys::ctl_runs`], [`Keys::ctl_refused`]; channel [`Keys::ctl_channel`].
//!
//! Entries are decoded leniently, as other versions of sluice write them too: fields this
//! version does not know are ignored when read and kept when an entry is rewritten (a state
//! change patches the stored JSON), so a rolling upgrade never turns a newer CLI's job into
//! a corrupt entry on an older host. An entry that does not decode at all is logged and
//! skipped.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::Notify;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::{Keys, StoreError, scripts};
use crate::model::{JobSpec, now_ms, short};

/// Versions kept per plugin (older ones are forgotten, and their bytes deleted).
const MAX_VERSIONS: isize = 50;

/// One version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    pub sha256: String,
    pub size: u64,
    /// When it was loaded, ms since the epoch.
    pub loaded_at: u64,
    /// Where the bytes came from (a path).
    pub origin: String,
    /// Who loaded it: `user@host` of the CLI, or the host that loaded a watched file.
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Stopped,
    /// A finite job that handled its whole source (and `job-finished`).
    Finished,
    /// A state a newer version of sluice wrote: this host does not run the job (it cannot
    /// know what the state asks of it), and listings show it as `unknown`.
    #[serde(other)]
    Unknown,
}

/// A job as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEntry {
    pub spec: JobSpec,
    pub state: JobState,
    /// When the state last changed, ms since the epoch.
    pub changed_at: u64,
    /// Identifies one run of the job: a counter in Redis that every `job start` raises (not
    /// `resume`); each run gets one `job-started` (and, if finite, one `job-finished`). Kept
    /// apart from the JSON ([`Keys::ctl_runs`]) so that scripts never rewrite JSON.
    #[serde(skip)]
    pub run: u64,
}

/// Why a host would not run a plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub host: String,
    pub reason: String,
    pub at: u64,
}

/// The registry at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub plugins: BTreeMap<String, PluginVersion>,
    pub jobs: BTreeMap<String, JobEntry>,
}

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

impl From<redis::RedisError> for ControlError {
    fn from(e: redis::RedisError) -> Self {
        ControlError::Store(e.into())
    }
}

type Result<T> = std::result::Result<T, ControlError>;

/// Subscribe to the control channel and wake the control loop on every notice, and after
/// each (re)subscription (what happened meanwhile is read from the registry).
pub async fn watch_notices(client: redis::Client, channel: String, wake: Arc<Notify>) {
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

/// Reads and changes the registry.
#[derive(Clone)]
pub struct Registry {
    conn: ConnectionManager,
    keys: Keys,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json)
        .map_err(|e| ControlError::Refused(format!("corrupt registry entry {what}: {e}")))
}

/// The JSON object `json` with `fields` set, every other field kept as it was.
fn patch(json: &str, fields: &[(&str, serde_json::Value)]) -> Result<String> {
    let mut value: serde_json::Value = decode("job", json)?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| ControlError::Refused("corrupt registry entry: not an object".into()))?;
    for (k, v) in fields {
        object.insert(k.to_string(), v.clone());
    }
    Ok(value.to_string())
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("registry entries serialise")
}

impl Registry {
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Registry { conn, keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Every plugin's current version and every job. Entries that do not decode are skipped
    /// (and logged), so one bad entry cannot stop a fleet.
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        type Maps = (
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            BTreeMap<String, u64>,
        );
        let (plugins, jobs, runs): Maps = redis::pipe()
            .atomic()
            .hgetall(self.keys.ctl_plugins())
            .hgetall(self.keys.ctl_jobs())
            .hgetall(self.keys.ctl_runs())
            .query_async(&mut self.conn)
            .await?;
        let mut snapshot = Snapshot::default();
        for (name, json) in plugins {
            match decode(&format!("plugin {name}"), &json) {
                Ok(v) => {
                    snapshot.plugins.insert(name, v);
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        for (name, json) in jobs {
            match decode::<JobEntry>(&format!("job {name}"), &json) {
                Ok(mut v) => {
                    v.run = runs.get(&name).copied().unwrap_or(0);
                    snapshot.jobs.insert(name, v);
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        Ok(snapshot)
    }

    async fn notify(&mut self, what: &str) -> Result<()> {
        let _: i64 = self.conn.publish(self.keys.ctl_channel(), what).await?;
        Ok(())
    }

    /// Store `bytes` (already checked by the caller) as the current version of `name`.
    /// Loading the bytes of the current version again changes nothing (returns false).
    pub async fn load_plugin(
        &mut self,
        name: &str,
        bytes: &[u8],
        sha256: &str,
        origin: &str,
        by: &str,
    ) -> Result<(PluginVersion, bool)> {
        if let Some(current) = self.plugin(name).await?
            && current.sha256 == sha256
        {
            return Ok((current, false));
        }
        let version = PluginVersion {
            sha256: sha256.to_string(),
            size: bytes.len() as u64,
            loaded_at: now_ms(),
            origin: origin.to_string(),
            by: by.to_string(),
        };
        let _: () = self.conn.set(self.keys.ctl_blob(sha256), bytes).await?;
        self.make_current(name, &version).await?;
        Ok((version, true))
    }

    async fn make_current(&mut self, name: &str, version: &PluginVersion) -> Result<()> {
        let json = encode(version);
        let versions = self.keys.ctl_versions(name);
        let dropped: Vec<String> = self.conn.lrange(&versions, MAX_VERSIONS - 1, -1).await?;
        let _: () = redis::pipe()
            .atomic()
            .hset(self.keys.ctl_plugins(), name, &json)
            .lpush(&versions, &json)
            .ltrim(&versions, 0, MAX_VERSIONS - 1)
            .query_async(&mut self.conn)
            .await?;
        for json in dropped {
            if let Ok(v) = decode::<PluginVersion>("version", &json) {
                self.delete_blob_if_unused(&v.sha256).await?;
            }
        }
        self.notify(&format!("plugin {name}")).await
    }

    /// The current version of `name`.
    pub async fn plugin(&mut self, name: &str) -> Result<Option<PluginVersion>> {
        let json: Option<String> = self.conn.hget(self.keys.ctl_plugins(), name).await?;
        json.map(|j| decode(&format!("plugin {name}"), &j))
            .transpose()
    }

    /// The versions of `name`, newest first.
    pub async fn versions(&mut self, name: &str) -> Result<Vec<PluginVersion>> {
        let list: Vec<String> = self
            .conn
            .lrange(self.keys.ctl_versions(name), 0, -1)
            .await?;
        Ok(list
            .iter()
            .filter_map(|j| {
                decode("version", j)
                    .inspect_err(|e| tracing::error!("plugin {name}: {e}"))
                    .ok()
            })
            .collect())
    }

    /// A component's bytes.
    pub async fn blob(&mut self, sha256: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.get(self.keys.ctl_blob(sha256)).await?)
    }

    /// Make an earlier version current again: `to` (a sha256 or a unique prefix of one), or
    /// the newest version older than the current one with different bytes.
    pub async fn rollback(&mut self, name: &str, to: Option<&str>) -> Result<PluginVersion> {
        let current = self
            .plugin(name)
            .await?
            .ok_or_else(|| ControlError::Refused(format!("no plugin named `{name}`")))?;
        let versions = self.versions(name).await?;
        let target = match to {
            Some(prefix) => {
                let matching: Vec<&PluginVersion> = versions
                    .iter()
                    .filter(|v| v.sha256.starts_with(prefix))
                    .collect();
                let distinct: HashSet<&str> = matching.iter().map(|v| v.sha256.as_str()).collect();
                match distinct.len() {
                    0 => {
                        return Err(ControlError::Refused(format!(
                            "plugin `{name}` has no version {prefix}"
                        )));
                    }
                    1 => matching[0].clone(),
                    _ => {
                        return Err(ControlError::Refused(format!(
                            "{prefix} names several versions of `{name}`; give more of the sha256"
                        )));
                    }
                }
            }
            None => versions
                .iter()
                .find(|v| v.sha256 != current.sha256)
                .cloned()
                .ok_or_else(|| {
                    ControlError::Refused(format!("plugin `{name}` has no earlier version"))
                })?,
        };
        if target.sha256 == current.sha256 {
            return Err(ControlError::Refused(format!(
                "{} is already the current version of `{name}`",
                short(&target.sha256)
            )));
        }
        if self.blob(&target.sha256).await?.is_none() {
            return Err(ControlError::Refused(format!(
                "the bytes of {} are gone from Redis; load the file again",
                short(&target.sha256)
            )));
        }
        let version = PluginVersion {
            loaded_at: now_ms(),
            ..target
        };
        self.make_current(name, &version).await?;
        Ok(version)
    }

    /// Remove a plugin. Refused while a running job uses it, unless `force`, which stops
    /// those jobs first; returns the jobs stopped.
    pub async fn unload(&mut self, name: &str, force: bool) -> Result<Vec<String>> {
        if self.plugin(name).await?.is_none() {
            return Err(ControlError::Refused(format!("no plugin named `{name}`")));
        }
        let snapshot = self.snapshot().await?;
        let users: Vec<String> = snapshot
            .jobs
            .iter()
            .filter(|(_, j)| j.spec.plugin == name && j.state == JobState::Running)
            .map(|(n, _)| n.clone())
            .collect();
        if !users.is_empty() && !force {
            return Err(ControlError::Refused(format!(
                "plugin `{name}` is used by running jobs: {}; stop them first or use --force",
                users.join(", ")
            )));
        }
        for job in &users {
            self.set_job_state(job, JobState::Stopped).await?;
        }
        let versions = self.versions(name).await?;
        let _: () = redis::pipe()
            .atomic()
            .hdel(self.keys.ctl_plugins(), name)
            .del(self.keys.ctl_versions(name))
            .query_async(&mut self.conn)
            .await?;
        for v in versions {
            self.delete_blob_if_unused(&v.sha256).await?;
        }
        self.notify(&format!("plugin {name}")).await?;
        Ok(users)
    }

    async fn delete_blob_if_unused(&mut self, sha256: &str) -> Result<()> {
        let names: Vec<String> = self.conn.hkeys(self.keys.ctl_plugins()).await?;
        for name in names {
            let list: Vec<String> = self
                .conn
                .lrange(self.keys.ctl_versions(&name), 0, -1)
                .await?;
            if list.iter().any(|j| j.contains(sha256)) {
                return Ok(());
            }
        }
        let _: () = self.conn.del(self.keys.ctl_blob(sha256)).await?;
        Ok(())
    }

    /// Register a job and mark it running (a new run). A job of the same name is replaced
    /// only when it is stopped or finished; `if_absent` (jobs of a config file at start) leaves any existing job alone.
    /// Returns false when nothing was written because of `if_absent`.
    pub async fn start_job(&mut self, spec: &JobSpec, if_absent: bool) -> Result<bool> {
        let entry = JobEntry {
            spec: spec.clone(),
            state: JobState::Running,
            changed_at: now_ms(),
            run: 0,
        };
        let script = &*scripts::JOB_START;
        let written: i64 = script
            .key(self.keys.ctl_jobs())
            .key(self.keys.ctl_runs())
            .arg(&spec.name)
            .arg(encode(&entry))
            .arg(if if_absent { "1" } else { "0" })
            .invoke_async(&mut self.conn)
            .await?;
        match written {
            -1 => Err(ControlError::Refused(format!(
                "a job named `{}` is running; stop it first",
                spec.name
            ))),
            0 => Ok(false),
            _ => {
                self.notify(&format!("job {}", spec.name)).await?;
                Ok(true)
            }
        }
    }

    /// The registry entry of one job.
    pub async fn job(&mut self, name: &str) -> Result<Option<JobEntry>> {
        Ok(self.job_raw(name).await?.map(|(entry, _)| entry))
    }

    /// A job's entry, with the JSON it was read from (for compare-and-set).
    async fn job_raw(&mut self, name: &str) -> Result<Option<(JobEntry, String)>> {
        let (json, run): (Option<String>, Option<u64>) = redis::pipe()
            .atomic()
            .hget(self.keys.ctl_jobs(), name)
            .hget(self.keys.ctl_runs(), name)
            .query_async(&mut self.conn)
            .await?;
        let Some(json) = json else { return Ok(None) };
        let mut entry: JobEntry = decode(&format!("job {name}"), &json)?;
        entry.run = run.unwrap_or(0);
        Ok(Some((entry, json)))
    }

    /// Stop or resume a job (every host follows).
    pub async fn set_job_state(&mut self, name: &str, state: JobState) -> Result<JobEntry> {
        self.change_state(name, state, None).await?.ok_or_else(|| {
            ControlError::Refused(format!("job `{name}` changed meanwhile; try again"))
        })
    }

    /// Mark run `run` of a job finished, if it is still that run and running (a host's view
    /// may be a second old). None when it is not.
    pub async fn finish_job(&mut self, name: &str, run: u64) -> Result<Option<JobEntry>> {
        self.change_state(name, JobState::Finished, Some(run)).await
    }

    /// Compare-and-set the state: written only if neither the entry nor its run changed
    /// since it was read (and, with `expect_run`, only while that run is running).
    async fn change_state(
        &mut self,
        name: &str,
        state: JobState,
        expect_run: Option<u64>,
    ) -> Result<Option<JobEntry>> {
        let script = &*scripts::JOB_STATE;
        for _ in 0..5 {
            let (mut entry, json) = self
                .job_raw(name)
                .await?
                .ok_or_else(|| ControlError::Refused(format!("no job named `{name}`")))?;
            if let Some(run) = expect_run
                && (entry.run != run || entry.state != JobState::Running)
            {
                return Ok(None);
            }
            let run = entry.run;
            entry.state = state;
            entry.changed_at = now_ms();
            // Patch the JSON as it was read rather than encode `entry`: fields a newer
            // version wrote (in the entry or its spec) survive this version's state change.
            let patched = patch(
                &json,
                &[
                    ("state", serde_json::to_value(state).unwrap_or_default()),
                    ("changed_at", entry.changed_at.into()),
                ],
            )?;
            let written: i64 = script
                .key(self.keys.ctl_jobs())
                .key(self.keys.ctl_runs())
                .arg(name)
                .arg(&json)
                .arg(run.to_string())
                .arg(patched)
                .invoke_async(&mut self.conn)
                .await?;
            if written == 1 {
                self.notify(&format!("job {name}")).await?;
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Record that `host` would not run version `sha256` of `plugin`.
    pub async fn refuse(
        &mut self,
        plugin: &str,
        sha256: &str,
        host: &str,
        reason: &str,
    ) -> Result<()> {
        let refusal = Refusal {
            host: host.to_string(),
            reason: reason.to_string(),
            at: now_ms(),
        };
        let _: () = self
            .conn
            .hset(
                self.keys.ctl_refused(),
                format!("{plugin}@{sha256}"),
                encode(&refusal),
            )
            .await?;
        Ok(())
    }

    /// Refusals of versions of `plugin`: sha256 → refusal.
    pub async fn refusals(&mut self, plugin: &str) -> Result<BTreeMap<String, Refusal>> {
        Ok(self
            .all_refusals()
            .await?
            .remove(plugin)
            .unwrap_or_default())
    }

    /// Every refusal: plugin → sha256 → refusal (one read for a whole listing).
    pub async fn all_refusals(&mut self) -> Result<BTreeMap<String, BTreeMap<String, Refusal>>> {
        let all: BTreeMap<String, String> = self.conn.hgetall(self.keys.ctl_refused()).await?;
        let mut out: BTreeMap<String, BTreeMap<String, Refusal>> = BTreeMap::new();
        for (key, json) in all {
            if let Some((plugin, sha)) = key.rsplit_once('@') {
                let refusal = decode("refusal", &json)?;
                out.entry(plugin.to_string())
                    .or_default()
                    .insert(sha.to_string(), refusal);
            }
        }
        Ok(out)
    }
}
