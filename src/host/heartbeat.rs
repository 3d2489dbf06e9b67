//! A host in the host registry ([`crate::store::hosts`]): every [`BEAT_EVERY`] it records
//! itself with the jobs it runs and the version each serves, and now and then removes from
//! its jobs' groups the consumers of hosts that are gone and hold nothing pending.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::reconcile::Host;
use crate::store::hosts::{self, BEAT_EVERY, HostJob, HostRecord, LIVE_FOR};

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
                jobs: Default::default(),
            },
            last: None,
            last_prune: None,
            failing: false,
        }
    }
}

impl Host {
    /// Beat, if it is time (or the jobs run here changed); prune dead consumers, if it is
    /// time. Failures are logged; the next reconcile tries again.
    pub async fn heartbeat(&mut self) {
        let jobs = self
            .jobs
            .iter()
            .map(|(name, j)| {
                let job = HostJob {
                    version: j.sha256.clone(),
                    run: j.run,
                };
                (name.clone(), job)
            })
            .collect();
        let due = self.beat.last.is_none_or(|t| t.elapsed() >= BEAT_EVERY);
        if !due && jobs == self.beat.record.jobs {
            return;
        }
        self.beat.record.jobs = jobs;
        match hosts::beat(&mut self.conn, &self.assembly.keys, &self.beat.record).await {
            Ok(()) => {
                self.beat.last = Some(Instant::now());
                self.beat.failing = false;
            }
            Err(e) => {
                if !std::mem::replace(&mut self.beat.failing, true) {
                    tracing::warn!("recording this host in the host registry failed: {e}");
                }
                return;
            }
        }
        if self
            .beat
            .last_prune
            .is_some_and(|t| t.elapsed() < PRUNE_EVERY)
        {
            return;
        }
        self.beat.last_prune = Some(Instant::now());
        if let Err(e) = self.prune_consumers().await {
            tracing::debug!("removing dead consumers failed (tried again later): {e}");
        }
    }

    /// Remove the consumers of hosts that are not live and hold nothing pending from the
    /// groups of the jobs run here (source and lifecycle stream).
    async fn prune_consumers(&mut self) -> Result<(), crate::store::StoreError> {
        let keys = &self.assembly.keys;
        let live: HashSet<String> = hosts::list(&mut self.conn, keys, false)
            .await?
            .into_iter()
            .map(|h| h.record.consumer)
            .collect();
        for (name, job) in &self.jobs {
            let source = keys.source_stream(&job.spec);
            let group = keys.group(name);
            // A live consumer reads at least every `block_ms`.
            let idle_over = LIVE_FOR.max(Duration::from_millis(3 * job.spec.block_ms));
            for stream in [source.clone(), keys.lifecycle(name, &source)] {
                let removed =
                    hosts::prune_consumers(&mut self.conn, &stream, &group, &live, idle_over)
                        .await?;
                for consumer in removed {
                    tracing::info!(job = %name, %stream, %consumer, "removed a dead host's consumer from the group (nothing pending)");
                }
            }
        }
        Ok(())
    }

    /// Take this host off the host registry (a clean stop).
    pub async fn leave(&mut self) {
        let consumer = self.beat.record.consumer.clone();
        if let Err(e) = hosts::leave(&mut self.conn, &self.assembly.keys, &consumer).await {
            tracing::debug!("leaving the host registry failed (it forgets this host): {e}");
        }
    }
}
