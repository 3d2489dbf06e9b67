//! A timer job (`every:<period>`, `cron:<expression>`): every host running it calls [`fire`]
//! at each due time; the script appends the `tick` once per due time, whichever host comes
//! first, to the job's timer stream, read like any stream.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use super::{Conn, Keys, StoreError, scripts};
use crate::model::Schedule;

/// Most missed due times counted one by one (a cron of every second left a year alone); more
/// are reported as this many.
const MAX_MISSED: u64 = 1_000_000;

/// Most missed due times a catching-up timer delivers at once (the oldest; the rest are
/// counted in the tick's `missed`).
pub const MAX_REPLAYED: usize = 1000;

/// A timer's due times.
#[derive(Debug, Clone)]
pub enum Timer {
    /// Every this many ms, at their multiples since the epoch.
    Every(u64),
    Cron(Box<croner::Cron>),
}

impl Timer {
    pub fn new(schedule: Schedule<'_>) -> Result<Self, String> {
        Ok(match schedule {
            Schedule::Every(p) => Timer::Every((p.as_millis() as u64).max(1)),
            Schedule::Cron(expr) => Timer::Cron(Box::new(Schedule::cron(expr)?)),
        })
    }

    /// The latest due time at or before `now` (ms since the epoch), if any.
    pub fn due_at(&self, now: u64) -> Option<u64> {
        match self {
            Timer::Every(p) => Some(now - now % p),
            Timer::Cron(c) => c
                .find_previous_occurrence(&utc(now)?, true)
                .ok()
                .map(|t| t.timestamp_millis().max(0) as u64),
        }
    }

    /// The first due time after `at`, if any (a cron of a date that never comes has none).
    pub fn next_after(&self, at: u64) -> Option<u64> {
        match self {
            Timer::Every(p) => Some(at - at % p + p),
            Timer::Cron(c) => c
                .find_next_occurrence(&utc(at)?, false)
                .ok()
                .map(|t| t.timestamp_millis().max(0) as u64),
        }
    }

    /// The due times strictly between `last` and `due`, oldest first, at most `max`.
    pub fn between(&self, last: u64, due: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = last;
        while out.len() < max {
            match self.next_after(at) {
                Some(next) if next < due => {
                    out.push(next);
                    at = next;
                }
                _ => break,
            }
        }
        out
    }

    /// How many due times lie strictly between `last` and `due`.
    pub fn missed(&self, last: u64, due: u64) -> u64 {
        match self {
            Timer::Every(p) => (due.saturating_sub(last) / p).saturating_sub(1),
            Timer::Cron(c) => match utc(last) {
                Some(from) => c
                    .iter_after(from)
                    .take_while(|t| (t.timestamp_millis() as u64) < due)
                    .take(MAX_MISSED as usize)
                    .count() as u64,
                None => 0,
            },
        }
    }
}

fn utc(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// Append the tick of `due` (ms since the epoch) unless it or a later one was; true if this
/// call appended it. Missed due times since the last tick are counted here, and the tick is
/// appended only if no other host ticked meanwhile (else read again).
/// With `catch_up`, the missed due times (up to [`MAX_REPLAYED`]) are appended first, each a
/// tick of its own, and `missed` counts only those beyond.
pub async fn fire(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    (source, catch_up): (&str, bool),
    due: u64,
    timer: &Timer,
) -> Result<bool, StoreError> {
    let stream = keys.timer_stream(job);
    let hash = keys.job(job, &stream);
    loop {
        let last: Option<u64> = conn.hget(&hash, "timer_last").await?;
        let missed = last.map_or(0, |l| timer.missed(l, due));
        let replayed = match (catch_up, last) {
            (true, Some(l)) => timer.between(l, due, MAX_REPLAYED),
            _ => Vec::new(),
        };
        let mut invocation = scripts::TIMER_FIRE.prepare_invoke();
        invocation
            .key(&hash)
            .key(&stream)
            .arg(due)
            .arg(missed - replayed.len() as u64)
            .arg(source)
            .arg(last.map(|l| l.to_string()).unwrap_or_default());
        for d in &replayed {
            invocation.arg(d);
        }
        let fired: i32 = invocation.invoke_async(conn).await?;
        if fired >= 0 {
            return Ok(fired == 1);
        }
    }
}

/// How long until `at` (ms since the epoch), from now.
pub fn until(at: u64) -> Duration {
    Duration::from_millis(at.saturating_sub(crate::model::now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_of_a_period_and_of_a_cron_expression() {
        let every = Timer::new(Schedule::Every(Duration::from_secs(30))).unwrap();
        assert_eq!(every.due_at(95_000), Some(90_000));
        assert_eq!(every.next_after(90_000), Some(120_000));
        assert_eq!(every.missed(30_000, 120_000), 2);
        assert_eq!(every.missed(90_000, 120_000), 0);
        // Every five minutes.
        let cron = Timer::new(Schedule::Cron("*/5 * * * *")).unwrap();
        let t = DateTime::parse_from_rfc3339("2026-12-07T10:07:12Z")
            .unwrap()
            .timestamp_millis() as u64;
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis() as u64;
        assert_eq!(cron.due_at(t), Some(at("2026-12-07T10:05:00Z")));
        assert_eq!(
            cron.due_at(at("2026-12-07T10:05:00Z")),
            Some(at("2026-12-07T10:05:00Z"))
        );
        assert_eq!(
            cron.next_after(at("2026-12-07T10:05:00Z")),
            Some(at("2026-12-07T10:10:00Z"))
        );
        // 10:05 → 11:00: 10:10 … 10:55 went by, ten of them.
        assert_eq!(
            cron.missed(at("2026-12-07T10:05:00Z"), at("2026-12-07T11:00:00Z")),
            10
        );
        assert_eq!(
            cron.missed(at("2026-12-07T10:05:00Z"), at("2026-12-07T10:10:00Z")),
            0
        );
        // Seconds first, six fields.
        let fast = Timer::new(Schedule::Cron("*/2 * * * * *")).unwrap();
        assert_eq!(
            fast.next_after(at("2026-12-07T10:05:00Z")),
            Some(at("2026-12-07T10:05:02Z"))
        );
    }
}
