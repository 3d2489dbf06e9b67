//! Counters over time for the dashboard (`GET /api/series`): every second, while someone
//! asked for them in the last [`KEEP_SAMPLING`], the admin server reads each job's counters
//! from Redis (fleet-wide: every host's admin server shows the whole fleet) and keeps the
//! last [`POINTS`] samples per job in memory. Nobody looking: no sampling, no Redis reads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Readiness;
use crate::store::control::Registry;

/// How many samples a job keeps (one a second: ten minutes).
const POINTS: usize = 600;
/// Sampling goes on this long after the last request for the series.
const KEEP_SAMPLING: Duration = Duration::from_secs(600);
const EVERY: Duration = Duration::from_secs(1);

/// One sample of a job's counters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// When, ms since the epoch (this host's clock).
    pub t: u64,
    pub received: u64,
    pub acked: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead: u64,
    pub lag: Option<u64>,
    pub pending: u64,
    pub scheduled: u64,
    pub dead_letters: u64,
}

#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    asked_at: Option<Instant>,
    jobs: BTreeMap<String, VecDeque<Point>>,
}

impl History {
    /// The samples of every job (only `job`'s, if given), oldest first; asking keeps the
    /// sampler going.
    pub fn series(&self, job: Option<&str>) -> BTreeMap<String, Vec<Point>> {
        let Ok(mut inner) = self.inner.lock() else {
            return BTreeMap::new();
        };
        inner.asked_at = Some(Instant::now());
        inner
            .jobs
            .iter()
            .filter(|(name, _)| job.is_none_or(|j| j == name.as_str()))
            .map(|(name, points)| (name.clone(), points.iter().cloned().collect()))
            .collect()
    }

    fn wanted(&self) -> bool {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.asked_at)
            .is_some_and(|at| at.elapsed() < KEEP_SAMPLING)
    }

    fn record(&self, points: BTreeMap<String, Point>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        // Jobs gone from the registry go from the series too.
        inner.jobs.retain(|name, _| points.contains_key(name));
        for (name, point) in points {
            let series = inner.jobs.entry(name).or_default();
            if series.len() == POINTS {
                series.pop_front();
            }
            series.push_back(point);
        }
    }

    /// Sample every second while the series is wanted, until the task is aborted.
    pub async fn sample(self: Arc<Self>, readiness: Arc<Readiness>) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.wanted() {
                continue;
            }
            let Some((mut conn, keys)) = readiness.redis() else {
                continue;
            };
            let read = async {
                let snapshot = Registry::new(conn.clone(), keys.clone()).snapshot().await?;
                let t = crate::model::now_ms();
                let mut points = BTreeMap::new();
                for name in snapshot.jobs.keys() {
                    let Some(s) = crate::store::jobs::status(&mut conn, &keys, name).await? else {
                        continue;
                    };
                    points.insert(
                        name.clone(),
                        Point {
                            t,
                            received: s.received,
                            acked: s.acked,
                            failed: s.failed,
                            retried: s.retried,
                            dead: s.dead,
                            lag: s.lag,
                            pending: s.pending,
                            scheduled: s.scheduled,
                            dead_letters: s.dead_letters,
                        },
                    );
                }
                anyhow::Ok(points)
            };
            // A Redis outage leaves a gap in the series, not a stuck sampler.
            match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(Ok(points)) => self.record(points),
                Ok(Err(e)) => tracing::debug!("dashboard series: reading counters failed: {e:#}"),
                Err(_) => tracing::debug!("dashboard series: reading counters timed out"),
            }
        }
    }
}
