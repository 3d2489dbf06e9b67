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
/// Samples further apart than this are not one series (a sweep or two missed on a slow
/// Redis still are).
const GAP: Duration = Duration::from_secs(15);

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
    /// Why the last sweep failed, while sweeps fail.
    failing: Option<String>,
}

/// What `GET /api/series` answers.
#[derive(Debug, Serialize)]
pub struct Series {
    pub every_ms: u64,
    /// This host's clock now, ms since the epoch (points' `t` are on it).
    pub now: u64,
    /// Why sampling fails now (Redis slow or away), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
    pub jobs: BTreeMap<String, Vec<Point>>,
}

impl History {
    /// The last `points` samples (at most [`POINTS`]) of every job (only `job`'s, if
    /// given), oldest first; asking keeps the sampler going.
    pub fn series(&self, job: Option<&str>, points: usize) -> Series {
        let now = crate::model::now_ms();
        let mut answer = Series {
            every_ms: EVERY.as_millis() as u64,
            now,
            failing: None,
            jobs: BTreeMap::new(),
        };
        let Ok(mut inner) = self.inner.lock() else {
            return answer;
        };
        inner.asked_at = Some(Instant::now());
        answer.failing = inner.failing.clone();
        answer.jobs = inner
            .jobs
            .iter()
            .filter(|(name, _)| job.is_none_or(|j| j == name.as_str()))
            .map(|(name, series)| {
                let skip = series.len().saturating_sub(points);
                (name.clone(), series.iter().skip(skip).cloned().collect())
            })
            .collect();
        answer
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
        inner.failing = None;
        // Jobs gone from the registry go from the series too.
        inner.jobs.retain(|name, _| points.contains_key(name));
        for (name, point) in points {
            let series = inner.jobs.entry(name).or_default();
            // A series is one unbroken run of samples: after a pause (nobody looked, or Redis
            // was away) it starts again, so rates and charts never bridge a gap.
            if series
                .back()
                .is_some_and(|last| point.t.saturating_sub(last.t) > GAP.as_millis() as u64)
            {
                series.clear();
            }
            if series.len() == POINTS {
                series.pop_front();
            }
            series.push_back(point);
        }
    }

    fn failed(&self, why: String) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.failing.is_none() {
                tracing::warn!("dashboard series: reading the jobs' counters failed: {why}");
            }
            inner.failing = Some(why);
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
            let Some((conn, keys)) = readiness.redis() else {
                continue;
            };
            let read = async {
                let snapshot = Registry::new(conn.clone(), keys.clone()).snapshot().await?;
                let t = crate::model::now_ms();
                let names: Vec<String> = snapshot.jobs.into_keys().collect();
                let read = crate::store::jobs::statuses(&conn, &keys, names.clone()).await?;
                let mut points = BTreeMap::new();
                for (name, s) in names.into_iter().zip(read) {
                    let Some(s) = s else { continue };
                    points.insert(
                        name,
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
            match tokio::time::timeout(Duration::from_secs(3), read).await {
                Ok(Ok(points)) => self.record(points),
                Ok(Err(e)) => self.failed(format!("{e:#}")),
                Err(_) => self.failed("Redis did not answer within 3 s".into()),
            }
        }
    }
}
