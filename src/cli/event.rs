//! `sluice event get`: where one source entry of a job stands.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use super::Client;
use super::dlq::job_source;
use crate::store::events;

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Status of one source entry: pending, processing, retrying, done, dead
    Get {
        job: String,
        /// The entry id in the source stream
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(c: &Client, command: &EventCommand) -> anyhow::Result<ExitCode> {
    let EventCommand::Get { job, id, json } = command;
    event_get(c, job, id, *json).await
}

async fn event_get(c: &Client, job: &str, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    if let Err(m) = crate::model::check_entry_id(id) {
        bail!("{m}");
    }
    let mut conn = c.conn().await?;
    let keys = &c.keys;
    let source = job_source(c, &mut conn, job).await?;
    let Some(status) = events::get(&mut conn, keys, job, &source, id).await? else {
        bail!(
            "job `{job}` knows no event `{id}` (not in stream `{source}`, not pending, no status \
             record; an entry trimmed after it was acknowledged looks the same)"
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("event     {} (job {job}, stream {source})", status.id);
        println!("status    {}", status.status);
        if let Some(a) = status.attempts {
            println!("attempts  {a}");
        }
        if let Some(e) = &status.error {
            println!("error     {e}");
        }
        if let Some(c) = &status.consumer {
            println!("consumer  {c}");
        }
        if let Some(t) = status.retry_at {
            println!("retry at  {t} (ms since epoch)");
        }
        if let Some(p) = &status.plugin {
            println!("plugin    {p}");
        }
        if let Some(n) = &status.note {
            println!("note      {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
