//! `sluice tail`: follow a stream — what a job emits, its dead letters (`--dlq JOB`), a
//! sluice queue (`--queue NAME`) — printing each new entry as it arrives.

use std::process::ExitCode;

use anyhow::bail;

use super::Client;
use crate::store::StoreError;

/// What to follow, and how much.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// The stream key (or use --dlq / --queue)
    #[arg(required_unless_present_any = ["dlq", "queue"])]
    pub stream: Option<String>,
    /// Follow a job's dead letters
    #[arg(long, value_name = "JOB", conflicts_with_all = ["stream", "queue"])]
    pub dlq: Option<String>,
    /// Follow a sluice queue
    #[arg(long, value_name = "NAME", conflicts_with = "stream")]
    pub queue: Option<String>,
    /// First print the last N entries already in the stream
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub last: usize,
    /// Exit after printing this many entries
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// One JSON object per entry: {"id", "fields"}
    #[arg(long)]
    pub json: bool,
}

type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

pub async fn tail(c: &Client, args: &TailArgs) -> anyhow::Result<ExitCode> {
    let mut conn = c.conn().await?;
    let stream = match (&args.stream, &args.dlq, &args.queue) {
        (Some(s), _, _) => s.clone(),
        (_, Some(job), _) => {
            let Some(source) = crate::store::dlq::source_of(&mut conn, &c.keys, job).await? else {
                bail!(
                    "no job named `{job}` in Redis (prefix `{}`): no host has run it",
                    c.prefix()
                );
            };
            c.keys.dlq(job, &source)
        }
        (_, _, Some(queue)) => c.keys.queue(queue),
        _ => bail!("give a stream, --dlq JOB or --queue NAME"),
    };
    let mut printed = 0usize;
    // Where to go on from: after the last entry now (printing the last N first).
    let newest: Entries = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(args.last.max(1))
        .query_async(&mut conn)
        .await
        .map_err(StoreError::from)?;
    let mut after = newest
        .first()
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| "0-0".into());
    if args.last > 0 {
        print(args, newest.into_iter().rev().collect(), &mut printed);
    }
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    while args.count.is_none_or(|n| printed < n) {
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&after);
        let read = xread.query_async::<Option<Vec<(String, Entries)>>>(&mut conn);
        let got = tokio::select! {
            _ = &mut ctrl_c => break,
            got = read => got.map_err(StoreError::from)?,
        };
        for (_, entries) in got.unwrap_or_default() {
            if let Some(last) = print(args, entries, &mut printed) {
                after = last;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Print entries (up to `--count` in all); the id of the last one printed.
fn print(args: &TailArgs, entries: Entries, printed: &mut usize) -> Option<String> {
    let mut last = None;
    for (id, fields) in entries {
        if args.count.is_some_and(|n| *printed >= n) {
            break;
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if args.json {
            let fields: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| (text(k), text(v).into()))
                .collect();
            println!("{}", serde_json::json!({ "id": id, "fields": fields }));
        } else {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}={}", text(k), text(v)))
                .collect();
            println!("{id} {}", fields.join(" "));
        }
        *printed += 1;
        last = Some(id);
    }
    last
}
