//! The host registry: each running host records itself (consumer name, sluice version, when it
//! started, the jobs it runs and the plugin version each serves) and beats every
//! [`BEAT_EVERY`]; one unseen for [`LIVE_FOR`] is not live, one unseen for [`FORGET_AFTER`] is
//! forgotten. Times are Redis's clock. And consumers of dead hosts leave the groups once
//! they hold nothing pending ([`prune_consumers`]).
//!
//! Keys: [`Keys::ctl_hosts`], [`Keys::ctl_hosts_seen`]; the groups of the jobs a host runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

use super::{Keys, StoreError, scripts};

/// How often a host beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// A host unseen this long is not live.
pub const LIVE_FOR: Duration = Duration::from_secs(10);
/// A host unseen this long is forgotten (until then, `sluice hosts --all` lists it).
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// What a host says of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Its consumer name in every group.
    pub consumer: String,
    /// The version of sluice it runs.
    pub sluice: String,
    pub hostname: String,
    pub pid: u32,
    /// When it started, ms since the epoch (its clock).
    pub started_at: u64,
    /// Where its admin server listens, if it has one.
    #[serde(default)]
    pub admin: Option<String>,
    /// It stopped cleanly (then it is not live, and `--all` lists it as stopped).
    #[serde(default)]
    pub stopped: bool,
    /// The jobs it runs.
    #[serde(default)]
    pub jobs: BTreeMap<String, HostJob>,
}

/// A job as one host runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostJob {
    /// sha256 of the plugin version it serves.
    pub version: String,
    /// The run of the job it serves.
    pub run: u64,
    /// Told to stop, and finishing its batches in flight (it may still commit).
    #[serde(default)]
    pub stopping: bool,
}

/// A host as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRow {
    #[serde(flatten)]
    pub record: HostRecord,
    /// When it last beat, ms since the epoch (Redis's clock).
    pub seen_at: u64,
    /// How long ago that was, in ms.
    pub seen_ago_ms: u64,
    /// Seen within [`LIVE_FOR`].
    pub live: bool,
}

/// Record this host's heartbeat; hosts unseen for [`FORGET_AFTER`] are forgotten.
pub async fn beat<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    record: &HostRecord,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(record).expect("host records serialise");
    let _: u64 = scripts::HEARTBEAT
        .key(keys.ctl_hosts())
        .key(keys.ctl_hosts_seen())
        .arg(&record.consumer)
        .arg(json)
        .arg(FORGET_AFTER.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Take this host off the live list (a clean stop): its record stays, marked stopped, for
/// `--all`, until forgotten like any other.
pub async fn leave<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    record: &HostRecord,
) -> Result<(), StoreError> {
    let stopped = HostRecord {
        stopped: true,
        jobs: Default::default(),
        ..record.clone()
    };
    beat(conn, keys, &stopped).await
}

/// Every host the registry knows, most recently seen first; with `all` false, the live ones.
/// A record that does not decode is skipped.
pub async fn list<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    all: bool,
) -> Result<Vec<HostRow>, StoreError> {
    // Scores as they come (text in RESP2, doubles in RESP3): one written by hand (`-5`,
    // `1.5`) costs only its own host.
    type Read = (
        (u64, u64),
        HashMap<String, String>,
        Vec<(String, redis::Value)>,
    );
    let ((secs, micros), records, seen): Read = redis::pipe()
        .cmd("TIME")
        .hgetall(keys.ctl_hosts())
        .zrevrange_withscores(keys.ctl_hosts_seen(), 0, -1)
        .query_async(conn)
        .await?;
    let now = secs * 1000 + micros / 1000;
    let mut rows = Vec::new();
    for (consumer, seen_at) in seen {
        let Some(seen_at) = time_of(&seen_at) else {
            warn_once(format!(
                "host registry: {consumer:?} was last seen at {seen_at:?}, not a time; skipped"
            ));
            continue;
        };
        let Some(json) = records.get(&consumer) else {
            continue;
        };
        let record = match serde_json::from_str::<HostRecord>(json) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "host registry: the record of {consumer:?} does not decode ({e}); skipped"
                );
                continue;
            }
        };
        let seen_ago_ms = now.saturating_sub(seen_at);
        let live = !record.stopped && seen_ago_ms <= LIVE_FOR.as_millis() as u64;
        if live || all {
            rows.push(HostRow {
                record,
                seen_at,
                seen_ago_ms,
                live,
            });
        }
    }
    Ok(rows)
}

/// A last-seen score as ms since the epoch, if it is one.
fn time_of(score: &redis::Value) -> Option<u64> {
    match score {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        redis::Value::Double(f) if *f >= 0.0 && f.fract() == 0.0 => Some(*f as u64),
        _ => None,
    }
}

/// Log a bad host record once per process (listings are read again and again).
fn warn_once(message: String) {
    static SEEN: std::sync::LazyLock<std::sync::Mutex<HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    let first = SEEN
        .lock()
        .map(|mut seen| seen.len() < 1000 && seen.insert(message.clone()))
        .unwrap_or(true);
    if first {
        tracing::warn!("{message}");
    }
}

/// The live hosts running each job (or finishing its batches after a stop): job →
/// [(consumer, plugin version)].
pub fn runners(hosts: &[HostRow]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for h in hosts.iter().filter(|h| h.live) {
        for (job, j) in &h.record.jobs {
            out.entry(job.clone())
                .or_default()
                .push((h.record.consumer.clone(), j.version.clone()));
        }
    }
    out
}

/// Remove from `group` of `stream` the consumers that are not `live`, hold no pending entry,
/// and were idle longer than `idle_over` (a live host's consumer reads every `block_ms`, so a
/// host of an older version that does not beat is not removed either). Nothing is lost: a
/// consumer with nothing pending holds nothing, and one that reads again is created again. Returns the consumers removed.
pub async fn prune_consumers<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    live: &HashSet<String>,
    idle_over: Duration,
) -> Result<Vec<String>, StoreError> {
    let consumers: Vec<HashMap<String, redis::Value>> = match redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
    {
        Ok(c) => c,
        // No such stream or group (yet, or any more): nothing to prune.
        Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.into()),
    };
    let mut removed = Vec::new();
    for c in consumers {
        let text = |k: &str| {
            c.get(k)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        };
        let int = |k: &str| {
            c.get(k)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
        };
        let (Some(name), Some(pending), Some(idle)) = (text("name"), int("pending"), int("idle"))
        else {
            continue;
        };
        if pending > 0 || live.contains(&name) || idle <= idle_over.as_millis() as u64 {
            continue;
        }
        // Nothing can give it entries now: only its own reads do (a takeover claims entries
        // to the host taking them over), and its host is not live.
        let _: u64 = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(stream)
            .arg(group)
            .arg(&name)
            .query_async(conn)
            .await?;
        removed.push(name);
    }
    Ok(removed)
}
