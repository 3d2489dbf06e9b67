//! `sluice dlq list|replay|purge`: a job's dead letters.

use std::process::ExitCode;

use crate::store::Conn;
use anyhow::bail;
use clap::Subcommand;

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
    /// Move dead letters back to the source stream as new entries (a lifecycle event's, to
    /// the job's lifecycle stream); exit 1 unless every one asked for was replayed
    Replay(DlqSelection),
    /// Delete dead letters
    Purge(DlqSelection),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct DlqSelection {
    job: String,
    /// A dead letter's id, or the source id it holds (what `dlq list` and `event get`
    /// show; repeatable)
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
            check_ids(&sel.id)?;
            let ids = (!sel.all).then(|| sel.id.clone());
            let results = listing::replay(&mut conn, keys, job, &source, ids).await?;
            let mut replayed = 0;
            for r in &results {
                match (&r.id, &r.new_id) {
                    (Some(id), Some(new)) => {
                        replayed += 1;
                        let via = if *id == r.asked {
                            String::new()
                        } else {
                            format!(" (dead letter {id})")
                        };
                        println!("{}{via} -> {new}", r.asked);
                    }
                    (Some(id), None) => {
                        eprintln!("{id}: not replayed (its fields are gone from the source)")
                    }
                    (None, _) => eprintln!(
                        "{}: not replayed: no dead letter of job {job} has that id or source id",
                        r.asked
                    ),
                }
            }
            if sel.all && results.is_empty() {
                println!("no dead letters for job {job}");
                return Ok(ExitCode::SUCCESS);
            }
            // A dead letter named twice (by its id and its source id, say) is replayed once.
            let distinct = |only_replayed: bool| {
                results
                    .iter()
                    .filter(|r| !only_replayed || r.new_id.is_some())
                    .map(|r| r.id.as_ref().unwrap_or(&r.asked))
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            };
            println!(
                "replayed {} of {} dead letters to {source}",
                distinct(true),
                distinct(false)
            );
            // Exit 1 unless everything asked for was replayed.
            if replayed < results.len() {
                return Ok(ExitCode::from(1));
            }
        }
        DlqCommand::Purge(sel) => {
            check_ids(&sel.id)?;
            let ids = (!sel.all).then(|| sel.id.clone());
            let (named, purged) = listing::purge(&mut conn, keys, job, &source, ids).await?;
            for (asked, _) in named.iter().filter(|(_, id)| id.is_none()) {
                eprintln!("{asked}: no dead letter of job {job} has that id or source id");
            }
            println!("purged {purged} dead letters of job {job}");
            if !sel.all && (purged as usize) < named.len() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every id must look like a stream entry id.
fn check_ids(ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        crate::model::check_entry_id(id).map_err(|m| anyhow::anyhow!("--id: {m}"))?;
    }
    Ok(())
}

/// The source stream of a job registered in Redis, or a clear error.
pub async fn job_source(c: &Client, conn: &mut Conn, job: &str) -> anyhow::Result<String> {
    match dlq::source_of(conn, &c.keys, job).await? {
        Some(source) => Ok(source),
        None => bail!(
            "no job named `{job}` in Redis (prefix `{}`): no host has run it",
            c.prefix()
        ),
    }
}
