//! A job's circuit breaker (`[job.breaker]`): every host running the job samples the job's
//! fleet-wide counters each second; when, over the breaker's window, more than `failure_pct`
//! of the deliveries did not succeed (retried: a failure or a `retry` answer; or
//! dead-lettered), and at least `min_events` were delivered, the job is paused in the
//! registry with the reason (compare-and-set on its run: once, whichever host sees it
//! first). Every host then stops it, in-flight batches committed; `job resume` runs it again
//! with a fresh window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::BreakerOptions;
use crate::store::control::Registry;
use crate::store::{Conn, Keys};

/// How often the counters are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The counters of a job at one moment: deliveries, and those that did not succeed.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    received: u64,
    bad: u64,
}

/// Why the breaker trips over the samples, if it does: the newest against the oldest within
/// the window.
fn verdict(samples: &VecDeque<Sample>, b: &BreakerOptions) -> Option<String> {
    let pct = u64::from(b.failure_pct?);
    let (first, last) = (samples.front()?, samples.back()?);
    let received = last.received.saturating_sub(first.received);
    let bad = last.bad.saturating_sub(first.bad);
    (received >= b.min_events() && bad * 100 > pct * received).then(|| {
        format!(
            "breaker: {bad} of {received} deliveries failed or were dead-lettered in {} s \
             (over {pct}%)",
            last.at.duration_since(first.at).as_secs().max(1)
        )
    })
}

/// Watch run `run` of job `job` (its hash `job_key`) until the task is aborted (the job
/// stops here) or the breaker trips.
pub async fn keep_watching(
    mut conn: Conn,
    keys: Keys,
    job: String,
    job_key: String,
    run: u64,
    breaker: BreakerOptions,
) {
    let window = Duration::from_secs(breaker.window_s());
    let mut samples: VecDeque<Sample> = VecDeque::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now(), SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let counts: redis::RedisResult<(Option<u64>, Option<u64>, Option<u64>)> =
            redis::cmd("HMGET")
                .arg(&job_key)
                .arg(&["received", "retried", "dead"])
                .query_async(&mut conn)
                .await;
        let Ok((received, retried, dead)) = counts else {
            continue;
        };
        let at = Instant::now();
        samples.push_back(Sample {
            at,
            received: received.unwrap_or(0),
            bad: retried.unwrap_or(0) + dead.unwrap_or(0),
        });
        while samples
            .front()
            .is_some_and(|s| at.duration_since(s.at) > window)
        {
            samples.pop_front();
        }
        let Some(reason) = verdict(&samples, &breaker) else {
            continue;
        };
        let mut registry = Registry::new(conn.clone(), keys.clone());
        match registry.pause_job(&job, run, &reason).await {
            Ok(true) => {
                crate::metrics::breaker_trip(&job);
                tracing::warn!(job = %job, run, "job paused by its breaker (`sluice job resume {job}` runs it again): {reason}");
                return;
            }
            // Another host paused it first, or the job changed: this host follows the registry.
            Ok(false) => return,
            Err(e) => tracing::warn!(job = %job, "pausing the job failed (tried again): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_over_the_share_and_only_with_enough_deliveries() {
        let b = BreakerOptions {
            failure_pct: Some(50),
            window_s: Some(10),
            min_events: Some(20),
        };
        let t = Instant::now();
        let sample = |s: u64, received, bad| Sample {
            at: t + Duration::from_secs(s),
            received,
            bad,
        };
        let mut samples = VecDeque::from([sample(0, 100, 10), sample(5, 130, 30)]);
        assert!(verdict(&samples, &b).is_some(), "20 of 30 failed");
        samples[1] = sample(5, 115, 20);
        assert!(verdict(&samples, &b).is_none(), "15 delivered: too few");
        samples[1] = sample(5, 140, 30);
        assert!(verdict(&samples, &b).is_none(), "20 of 40: not over half");
        let off = BreakerOptions::default();
        assert!(
            verdict(
                &VecDeque::from([sample(0, 0, 0), sample(1, 100, 100)]),
                &off
            )
            .is_none()
        );
    }
}
