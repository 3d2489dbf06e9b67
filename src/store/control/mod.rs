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
//!
//! [`plugins`]: versions, bytes, rollback, unload; [`jobs`]: job entries and their state.
mod jobs;
mod plugins;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Conn;
use futures_util::StreamExt as _;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Keys, StoreError};
use crate::model::{JobSpec, check_name, now_ms};

/// Versions kept per plugin (older ones are forgotten, and their bytes deleted).
pub(super) const MAX_VERSIONS: isize = 50;

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
    /// Paused by its circuit breaker (`[job.breaker]`): not run until `job resume`; the
    /// entry's `reason` says why.
    Paused,
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
    /// When the spec last changed (`job update`, or an edited config file), ms since the
    /// epoch; None: as started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
    /// The digest of the definition a config file last gave this job ([`spec_digest`]): a
    /// host registering its config file applies the file's definition only when it differs
    /// from this one (the file was edited), so a `job update` wins until the file changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_spec: Option<String>,
    /// Why the job is paused (its breaker tripped); None in any other state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// The registry's epoch ([`Keys::ctl_epoch`]); None: never marked, or lost.
    pub epoch: Option<String>,
}

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
    /// An entry in Redis that does not decode (written by hand, or damaged).
    #[error("{0}")]
    Corrupt(String),
}

impl From<redis::RedisError> for ControlError {
    fn from(e: redis::RedisError) -> Self {
        ControlError::Store(e.into())
    }
}

pub(super) type Result<T> = std::result::Result<T, ControlError>;

/// Subscribe to the control channel and wake the control loop on every notice, and after
/// each (re)subscription (what happened meanwhile is read from the registry). On a cluster,
/// one node's subscription hears every message (Redis Cluster broadcasts them): a node that
/// cannot be reached is left for the next seed.
pub async fn watch_notices(redis: crate::store::Endpoint, channel: String, wake: Arc<Notify>) {
    let mut attempt = 0usize;
    loop {
        let client = redis.client(attempt);
        attempt = attempt.wrapping_add(1);
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

/// A plugin version as the registry holds it, if it makes sense: a valid name, a sha256 of
/// 64 hex digits.
fn checked_version(name: &str, v: PluginVersion) -> Result<PluginVersion> {
    let bad =
        |why: String| ControlError::Refused(format!("bad registry entry plugin {name}: {why}"));
    check_name(name).map_err(|m| bad(format!("name {m}")))?;
    if v.sha256.len() != 64 || !v.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("sha256 {:?} is not 64 hex digits", v.sha256)));
    }
    Ok(v)
}

/// A job as the registry holds it, if its spec would pass `job start` and names itself.
fn checked_job(name: &str, e: JobEntry) -> Result<JobEntry> {
    let bad = |why: String| ControlError::Refused(format!("bad registry entry job {name}: {why}"));
    if e.spec.name != name {
        return Err(bad(format!("its spec is named {:?}", e.spec.name)));
    }
    e.spec
        .validate()
        .map_err(|(field, message)| bad(format!("{field}: {message}")))?;
    Ok(e)
}

/// Reads and changes the registry.
#[derive(Clone)]
pub struct Registry {
    pub(super) conn: Conn,
    pub(super) keys: Keys,
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json)
        .map_err(|e| ControlError::Corrupt(format!("corrupt registry entry {what}: {e}")))
}

/// The JSON object `json` with `fields` set, every other field kept as it was.
pub(super) fn patch(json: &str, fields: &[(&str, serde_json::Value)]) -> Result<String> {
    let mut value: serde_json::Value = decode("job", json)?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| ControlError::Corrupt("corrupt registry entry: not an object".into()))?;
    for (k, v) in fields {
        match v {
            serde_json::Value::Null => object.remove(*k),
            v => object.insert(k.to_string(), v.clone()),
        };
    }
    Ok(value.to_string())
}

/// A digest of a job's definition: sha256 of its JSON, hex.
pub fn spec_digest(spec: &JobSpec) -> String {
    crate::model::sha256_hex(encode(spec).as_bytes())
}

pub(super) fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("registry entries serialise")
}

impl Registry {
    pub fn new(conn: Conn, keys: Keys) -> Self {
        Registry { conn, keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Every plugin's current version and every job. Entries that do not decode are skipped
    /// (and logged), so one bad entry cannot stop a fleet.
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        // Raw bytes, decoded entry by entry: one value that is not text (or a run that is not
        // a number) must cost only its own entry, not the whole registry.
        type Raw = Vec<(Vec<u8>, Vec<u8>)>;
        let (plugins, jobs, runs, epoch): (Raw, Raw, Raw, Option<Vec<u8>>) = redis::pipe()
            .atomic()
            .hgetall(self.keys.ctl_plugins())
            .hgetall(self.keys.ctl_jobs())
            .hgetall(self.keys.ctl_runs())
            .get(self.keys.ctl_epoch())
            .query_async(&mut self.conn)
            .await?;
        let plugins = text_entries("plugin", plugins);
        let jobs = text_entries("job", jobs);
        let runs: BTreeMap<String, u64> = text_entries("run", runs)
            .into_iter()
            .filter_map(|(name, run)| match run.parse() {
                Ok(run) => Some((name, run)),
                Err(_) => {
                    tracing::error!(
                        "registry: the run of job {name:?} is not a number ({run:?}); skipped"
                    );
                    None
                }
            })
            .collect();
        let mut snapshot = Snapshot {
            epoch: epoch.map(|e| String::from_utf8_lossy(&e).into_owned()),
            ..Snapshot::default()
        };
        // What Redis holds is untrusted: an entry that does not decode, or does not make sense
        // (a sha256 that is not one, a job spec that would not pass `job start`), is logged and
        // left out, never run and never fatal.
        for (name, json) in plugins {
            let version = decode::<PluginVersion>(&format!("plugin {name}"), &json)
                .and_then(|v| checked_version(&name, v));
            match version {
                Ok(v) => {
                    snapshot.plugins.insert(name, v);
                }
                Err(e) => bad_entry(e.to_string()),
            }
        }
        for (name, json) in jobs {
            let entry = decode::<JobEntry>(&format!("job {name}"), &json)
                .and_then(|e| checked_job(&name, e));
            match entry {
                Ok(mut v) => {
                    v.run = runs.get(&name).copied().unwrap_or(0);
                    snapshot.jobs.insert(name, v);
                }
                Err(e) => bad_entry(e.to_string()),
            }
        }
        Ok(snapshot)
    }

    /// Give the registry an epoch if it has none (`<holder>@<ms>`); the epoch it has now.
    pub async fn mark_epoch(&mut self, holder: &str) -> Result<Option<String>> {
        let mark = format!("{holder}@{}", now_ms());
        let (_, epoch): (Option<String>, Option<String>) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.keys.ctl_epoch())
            .arg(mark)
            .arg("NX")
            .get(self.keys.ctl_epoch())
            .query_async(&mut self.conn)
            .await?;
        Ok(epoch)
    }

    pub(super) async fn notify(&mut self, what: &str) -> Result<()> {
        let _: i64 = self.conn.publish(self.keys.ctl_channel(), what).await?;
        Ok(())
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

/// Log a bad registry entry: at error level the first time this process sees it, then at
/// debug level (the registry is read every second; the entry stays until someone fixes it).
fn bad_entry(message: String) {
    static SEEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    let first = SEEN
        .lock()
        .map(|mut seen| seen.len() < 10_000 && seen.insert(message.clone()))
        .unwrap_or(true);
    if first {
        tracing::error!("{message}");
    } else {
        tracing::debug!("{message}");
    }
}

/// The entries of a registry hash whose name and value are text; the others are logged and
/// skipped.
fn text_entries(what: &str, raw: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(String, String)> {
    raw.into_iter()
        .filter_map(
            |(name, value)| match (String::from_utf8(name), String::from_utf8(value)) {
                (Ok(name), Ok(value)) => Some((name, value)),
                (Ok(name), Err(_)) => {
                    tracing::error!(
                        "registry: {what} {name:?} holds a value that is not text; skipped"
                    );
                    None
                }
                (Err(e), _) => {
                    let name = String::from_utf8_lossy(e.as_bytes());
                    bad_entry(format!(
                        "registry: a {what} named {name:?} is not text; skipped"
                    ));
                    None
                }
            },
        )
        .collect()
}
