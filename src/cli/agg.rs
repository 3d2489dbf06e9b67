//! `sluice agg list|status|reset`: a job's aggregates (`[[job.aggregate]]`), their open
//! windows, and dropping windows by hand.

use std::process::ExitCode;

use clap::Subcommand;

use super::Client;
use crate::store::aggregate::AggStatus;
use crate::store::listing;

#[derive(Debug, Subcommand)]
pub enum AggCommand {
    /// Each aggregate of the job: its threshold, open windows and thresholds reached
    List {
        job: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// One aggregate's open windows, most recent first
    Status {
        job: String,
        name: String,
        /// Most windows shown
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Drop an aggregate's windows without firing them (all, or the one of --key)
    Reset {
        job: String,
        name: String,
        /// The window of this `key_by` value only
        #[arg(long)]
        key: Option<String>,
    },
}

pub async fn run(c: &Client, command: &AggCommand) -> anyhow::Result<ExitCode> {
    let mut reg = c.registry().await?;
    let mut conn = c.conn().await?;
    match command {
        AggCommand::List { job, json } => {
            let aggs = listing::aggregates(&mut reg, &mut conn, &c.keys, job, None, 0).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&aggs)?);
            } else if aggs.is_empty() {
                println!("job {job} has no aggregates");
            } else {
                println!(
                    "{:<20} {:<16} {:<30} {:>8} {:>10}",
                    "aggregate", "key_by", "threshold", "open", "fired"
                );
                for a in &aggs {
                    println!(
                        "{:<20} {:<16} {:<30} {:>8} {:>10}",
                        a.name,
                        a.key_by.as_deref().unwrap_or("-"),
                        threshold(a),
                        a.open,
                        a.fired
                    );
                }
            }
        }
        AggCommand::Status {
            job,
            name,
            limit,
            json,
        } => {
            let aggs =
                listing::aggregates(&mut reg, &mut conn, &c.keys, job, Some(name), *limit).await?;
            let a = &aggs[0];
            if *json {
                println!("{}", serde_json::to_string_pretty(a)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("aggregate {}  ({})", a.name, threshold(a));
            println!("open      {}", a.open);
            println!("fired     {}", a.fired);
            for w in &a.windows {
                let due = w
                    .due
                    .map(|d| format!("  due {}", time(d)))
                    .unwrap_or_default();
                println!(
                    "  {:<24} count {:<8} first {}  last {}{due}",
                    if w.key.is_empty() { "-" } else { &w.key },
                    w.count,
                    time(w.first),
                    time(w.last)
                );
            }
        }
        AggCommand::Reset { job, name, key } => {
            let dropped = listing::reset_aggregate(
                &mut reg,
                &mut conn,
                &c.keys,
                job,
                name,
                key.as_deref().map(str::as_bytes),
            )
            .await?;
            println!("aggregate {name} of job {job}: {dropped} open window(s) dropped");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `count 100 or 60 s (tumbling)`.
fn threshold(a: &AggStatus) -> String {
    let mut parts = Vec::new();
    if let Some(n) = a.count {
        parts.push(format!("count {n}"));
    }
    if let Some(s) = a.within_s {
        parts.push(format!("{s} s"));
    }
    let kind = if a.sliding { "sliding" } else { "tumbling" };
    format!(
        "{} ({kind})",
        parts.join(if a.sliding { " within " } else { " or " })
    )
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
