//! `sluice hosts`: the hosts of the host registry, live ones (or all it remembers), with the
//! jobs each runs and the plugin version each serves.

use std::process::ExitCode;

use super::{Client, time};
use crate::model::short;
use crate::store::hosts;

pub async fn run(c: &Client, json: bool, all: bool) -> anyhow::Result<ExitCode> {
    let mut conn = c.conn().await?;
    let rows = hosts::list(&mut conn, &c.keys, all).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!(
            "no {}host (a `sluice run` host records itself every {} s)",
            if all { "" } else { "live " },
            hosts::BEAT_EVERY.as_secs()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<7} {:<10} {:<24} {:>9}  jobs",
        "host", "state", "sluice", "started", "seen"
    );
    for h in &rows {
        let r = &h.record;
        let jobs: Vec<String> = r
            .jobs
            .iter()
            .map(|(name, j)| {
                let stopping = if j.stopping { " (stopping)" } else { "" };
                format!("{name}@{}{stopping}", short(&j.version))
            })
            .collect();
        println!(
            "{:<28} {:<7} {:<10} {:<24} {:>7.1}s  {}",
            r.consumer,
            match (h.live, r.stopped) {
                (true, _) => "live",
                (false, true) => "stopped",
                (false, false) => "gone",
            },
            r.sluice,
            time(r.started_at),
            h.seen_ago_ms as f64 / 1000.0,
            if jobs.is_empty() {
                "-".to_string()
            } else {
                jobs.join(" ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
