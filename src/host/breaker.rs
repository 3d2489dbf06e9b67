//! A job's circuit breaker (`[job.breaker]`): every host running the job samples the job's
//! fleet-wide counters each second; when, over the breaker's window, more than `failure_pct`
//! of the deliveries did not succeed (retried: a failure or a `retry` answer; or
//! dead-lettered), and at least `min_events` were delivered, the job is paused in the
//! registry with the reason (compare-and-set on its run: once, whichever host sees it
//! first). Every host then stops it, in-flight batches committed; `job resume` runs it again
//! with a fresh window.

use std::time::{Duration, Instant};

use crate::model::BreakerOptions;
use crate::runner::breaker::Window;
use crate::store::control::Registry;
use crate::store::{Conn, Keys};

/// How often the counters are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

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
    let span = Duration::from_secs(breaker.window_s());
    let mut window = Window::default();
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
        let bad = retried.unwrap_or(0) + dead.unwrap_or(0);
        window.record(Instant::now(), received.unwrap_or(0), bad, span);
        let Some(reason) = window.verdict(&breaker) else {
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
