//! A timer job (`every:<period>`): every host running it calls [`fire`] at each due time (the
//! multiples of the period since the epoch); the script appends the `tick` once per due
//! time, whichever host comes first, to the job's timer stream, read like any stream.

use std::time::Duration;

use super::{Conn, Keys, StoreError, scripts};

/// Append the tick of `due` (ms since the epoch) unless it or a later one was; true if this
/// call appended it.
pub async fn fire(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    source: &str,
    due: u64,
    period: Duration,
) -> Result<bool, StoreError> {
    let stream = keys.timer_stream(job);
    let fired: u32 = scripts::TIMER_FIRE
        .key(keys.job(job, &stream))
        .key(&stream)
        .arg(due)
        .arg(period.as_millis() as u64)
        .arg(source)
        .invoke_async(conn)
        .await?;
    Ok(fired == 1)
}

/// The latest due time at or before `now` (ms since the epoch) of a timer of `period`.
pub fn due_at(now: u64, period: Duration) -> u64 {
    let p = period.as_millis().max(1) as u64;
    now - now % p
}
