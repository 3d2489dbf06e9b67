//! `retention = "acked"`: each running job with it trims its source stream now and then
//! (the store's `retention.lua` decides what goes; one host at a time).

use std::time::Duration;

use crate::store::Conn;

use crate::model::JobSpec;
use crate::store::Keys;
use crate::store::control::{JobState, Registry};
use crate::store::retention::{self, Trim};

/// The consumer groups of the jobs registered on `stream` (but finished ones): retention
/// waits until each exists, so a job that has not run yet finds its backlog.
async fn registered_groups(
    reg: &mut Registry,
    keys: &Keys,
    stream: &str,
) -> anyhow::Result<Vec<String>> {
    let snapshot = reg.snapshot().await?;
    Ok(snapshot
        .jobs
        .iter()
        .filter(|(_, e)| e.state != JobState::Finished && keys.source_stream(&e.spec) == stream)
        .map(|(name, _)| keys.group(name))
        .collect())
}

/// `retention = "acked"`: trim the job's source stream every `retention_every_ms` (when no
/// other host did), and once more at `stop` (a finite job that finished in less than
/// `retention_every_ms` leaves nothing acknowledged behind). With `own`, `stream` is instead
/// one only the job reads (its fired stream): trimmed of what the job's group acknowledged.
pub async fn keep_trimmed(
    mut conn: Conn,
    keys: Keys,
    spec: JobSpec,
    holder: String,
    own: Option<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let stream = own.clone().unwrap_or_else(|| keys.source_stream(&spec));
    let every = Duration::from_millis(spec.retention_every_ms);
    let keep = Duration::from_secs(spec.retention_keep_s);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut reg = Registry::new(conn.clone(), keys.clone());
    let mut last = false;
    while !last {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => last = true,
        }
        let pass = async {
            let groups = match own {
                Some(_) => vec![keys.group(&spec.name)],
                None => registered_groups(&mut reg, &keys, &stream).await?,
            };
            let every = (!last).then_some(every);
            let trim = retention::trim(&mut conn, &keys, &stream, &holder, every, keep, &groups);
            anyhow::Ok(trim.await?)
        };
        match pass.await {
            Ok(trim) => {
                failing = false;
                match trim {
                    Trim::Trimmed { trimmed, kept_from } if trimmed > 0 => {
                        tracing::debug!(job = %spec.name, %stream, trimmed, %kept_from, "trimmed acknowledged entries");
                        crate::metrics::trimmed(&spec.name, trimmed);
                    }
                    Trim::Skipped(why) => {
                        tracing::debug!(job = %spec.name, %stream, "retention: not trimmed: {why}")
                    }
                    _ => {}
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(job = %spec.name, %stream, "retention: trimming failed (tried again): {e}");
            }
            Err(_) => {}
        }
    }
}
