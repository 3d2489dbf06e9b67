//! `sluice dlq list|replay|purge`: a job's dead letters.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use redis::aio::ConnectionManager;

use super::Client;
use crate::store::{dlq, listing};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The job's dead letters, oldest first
    List {
        job: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to the source stream as new entries
    Replay(DlqSelection),
    /// Delete dead letters
    Purge(DlqSelection),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct DlqSelection {
    job: String,
    /// A dead letter's id (repeatable)
    #[arg(long)]
    id: Vec<String>,
    /// Every dead letter of the job
    #[arg(long)]
    all: bool,
}

pub async fn run(c: &Client, command: &DlqCommand) -> anyhow::Result<ExitCode> {
    let mut conn = c.conn().await?;
    let keys = &c.keys;
    let job = match command {
        DlqCommand::List { job, .. } => job,
        DlqCommand::Replay(sel) | DlqCommand::Purge(sel) => &sel.job,
    };
    let source = job_source(c, &mut conn, job).await?;
    match command {
        DlqCommand::List { json, .. } => {
            let letters = listing::dead_letters(&mut conn, keys, job, &source).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters for job {job}");
            } else {
                for d in &letters {
                    let fields: Vec<String> =
                        d.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let fields = match d.fields_in.as_str() {
                        "inline" => fields.join(" "),
                        "source" => format!("(fields in {} at {})", d.source, d.source_id),
                        _ => "(fields deleted from the source)".to_string(),
                    };
                    println!(
                        "{}  source {} ({} deliveries, plugin {}): {}\n    {fields}",
                        d.id,
                        d.source_id,
                        d.deliveries,
                        d.plugin.get(..12).unwrap_or(&d.plugin),
                        d.error,
                    );
                }
            }
        }
        DlqCommand::Replay(sel) => {
            let ids = (!sel.all).then(|| sel.id.clone());
            let mut replayed = 0;
            for r in listing::replay(&mut conn, keys, job, &source, ids).await? {
                match r.new_id {
                    Some(new) => {
                        replayed += 1;
                        println!("{} -> {source} {new}", r.id);
                    }
                    None => println!(
                        "{}: not replayed (no such dead letter, or its fields are gone)",
                        r.id
                    ),
                }
            }
            println!("replayed {replayed} dead letters to {source}");
        }
        DlqCommand::Purge(sel) => {
            let ids: Vec<String> = match sel.all {
                true => listing::dead_letters(&mut conn, keys, job, &source)
                    .await?
                    .into_iter()
                    .map(|d| d.id)
                    .collect(),
                false => sel.id.clone(),
            };
            let mut purged = 0;
            for chunk in ids.chunks(500) {
                purged += dlq::purge(&mut conn, keys, job, &source, chunk).await?;
            }
            println!("purged {purged} dead letters of job {job}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The source stream of a job registered in Redis, or a clear error.
pub async fn job_source(
    c: &Client,
    conn: &mut ConnectionManager,
    job: &str,
) -> anyhow::Result<String> {
    match dlq::source_of(conn, &c.keys, job).await? {
        Some(source) => Ok(source),
        None => bail!(
            "no job named `{job}` in Redis (prefix `{}`): no host has run it",
            c.prefix()
        ),
    }
}
