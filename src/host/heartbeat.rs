//! A host in the host registry ([`crate::store::hosts`]): every [`BEAT_EVERY`] it records
//! itself with the jobs it runs and the version each serves, and now and then removes from
//! its jobs' groups the consumers of hosts that are gone and hold nothing pending.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::store::Conn;

use super::job::RunningJob;
use crate::store::hosts::{self, BEAT_EVERY, HostJob, HostRecord, LIVE_FOR};
use crate::store::{Keys, StoreError};

/// How often a host looks for dead consumers in its jobs' groups.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What the heartbeat keeps between beats.
pub struct Beat {
    /// This host's record, jobs filled in at each beat.
    pub record: HostRecord,
    last: Option<Instant>,
    last_prune: Option<Instant>,
    /// Whether the last beat failed (logged once per outage).
    failing: bool,
}

impl Beat {
    pub fn new(consumer: &str, admin: Option<String>) -> Self {
        Beat {
            record: HostRecord {
                consumer: consumer.to_string(),
                sluice: env!("CARGO_PKG_VERSION").to_string(),
                hostname: gethostname::gethostname().to_string_lossy().into_owned(),
                pid: std::process::id(),
                started_at: crate::model::now_ms(),
                admin,
                stopped: false,
                jobs: Default::default(),
            },
            last: None,
            last_prune: None,
            failing: false,
        }
    }
}

impl Beat {
    /// Beat, if it is time (or the jobs run here changed); prune dead consumers, if it is
    /// time. Failures are logged; the next reconcile tries again.
    pub async fn tick(
        &mut self,
        conn: &mut Conn,
        keys: &Keys,
        running: &HashMap<String, RunningJob>,
        stopping: &HashSet<String>,
    ) {
        let mut jobs: BTreeMap<String, HostJob> = running
            .iter()
            .map(|(name, j)| {
                let job = HostJob {
                    version: j.sha256.clone(),
                    run: j.run,
                    stopping: false,
                };
                (name.clone(), job)
            })
            .collect();
        // A job told to stop is still run here until its runners end (they may commit a last
        // batch): listed, so that `job delete --purge` waits for it.
        for name in stopping {
            if let Some(was) = self.record.jobs.get(name) {
                let job = HostJob {
                    stopping: true,
                    ..was.clone()
                };
                jobs.insert(name.clone(), job);
            }
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= BEAT_EVERY);
        if !due && jobs == self.record.jobs {
            return;
        }
        self.record.jobs = jobs;
        if self.last.is_none() {
            self.check_name_is_ours(conn, keys).await;
        }
        match hosts::beat(conn, keys, &self.record).await {
            Ok(()) => {
                self.last = Some(Instant::now());
                self.failing = false;
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!("recording this host in the host registry failed: {e}");
                }
                return;
            }
        }
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        if let Err(e) = prune_consumers(conn, keys, running).await {
            tracing::debug!("removing dead consumers failed (tried again later): {e}");
        }
    }

    /// Before the first beat: another live process recording itself under this consumer name
    /// shares one consumer with this one in every group (a copied `[host] consumer`); nothing
    /// is lost or doubled, but the two are one in `sluice hosts`, and the takeover of a dead
    /// one's entries waits for the other to go quiet. Said at error level.
    async fn check_name_is_ours(&self, conn: &mut Conn, keys: &Keys) {
        let Ok(live) = hosts::list(conn, keys, false).await else {
            return;
        };
        let me = &self.record;
        if let Some(other) = live
            .iter()
            .map(|h| &h.record)
            .find(|r| r.consumer == me.consumer && (r.hostname != me.hostname || r.pid != me.pid))
        {
            tracing::error!(
                consumer = %me.consumer,
                other_host = %other.hostname,
                other_pid = other.pid,
                "another live host uses this consumer name: give each host its own `[host] consumer` (or leave it unset: <hostname>-<pid>)"
            );
        }
    }

    /// Take this host off the host registry (a clean stop).
    pub async fn leave(&self, conn: &mut Conn, keys: &Keys) {
        if let Err(e) = hosts::leave(conn, keys, &self.record).await {
            tracing::debug!("leaving the host registry failed (it forgets this host): {e}");
        }
    }
}

/// Remove the consumers of hosts that are not live and hold nothing pending from the groups
/// of the jobs run here (source and lifecycle stream).
async fn prune_consumers(
    conn: &mut Conn,
    keys: &Keys,
    running: &HashMap<String, RunningJob>,
) -> Result<(), StoreError> {
    let live: HashSet<String> = hosts::list(conn, keys, false)
        .await?
        .into_iter()
        .map(|h| h.record.consumer)
        .collect();
    for (name, job) in running {
        let source = keys.source_stream(&job.spec);
        let group = keys.group(name);
        // A live consumer reads at least every `block_ms`.
        let idle_over = LIVE_FOR.max(Duration::from_millis(3 * job.spec.block_ms));
        for stream in [source.clone(), keys.lifecycle(name, &source)] {
            let removed = hosts::prune_consumers(conn, &stream, &group, &live, idle_over).await?;
            for consumer in removed {
                tracing::info!(job = %name, %stream, %consumer, "removed a dead host's consumer from the group (nothing pending)");
            }
        }
    }
    Ok(())
}
