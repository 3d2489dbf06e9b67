//! `sluice publish`: append entries to a stream, for trying things out.

use std::process::ExitCode;

use super::{Client, parse_fields};

/// Append `count` entries of `fields` (`name=value`; `{i}` in a value is the entry's index).
pub async fn publish(
    c: &Client,
    stream: &str,
    fields: &[String],
    count: u64,
) -> anyhow::Result<ExitCode> {
    let fields = parse_fields(fields)?;
    let fields = &fields;
    let mut conn = c.conn().await?;
    let templated = fields.iter().any(|(_, v)| v.contains("{i}"));
    let mut first: Option<String> = None;
    let mut last = String::new();
    let mut i = 0;
    while i < count {
        let chunk = (count - i).min(1000);
        let mut pipe = redis::pipe();
        for n in i..i + chunk {
            let cmd = pipe.cmd("XADD").arg(stream).arg("*");
            for (k, v) in fields {
                if templated {
                    cmd.arg(k).arg(v.replace("{i}", &n.to_string()));
                } else {
                    cmd.arg(k).arg(v);
                }
            }
        }
        let ids: Vec<String> = pipe.query_async(&mut conn).await?;
        if first.is_none() {
            first = ids.first().cloned();
        }
        last = ids.last().cloned().unwrap_or_default();
        i += chunk;
    }
    match first {
        Some(first) if count > 1 => {
            println!("published {count} entries to {stream} (ids {first} … {last})")
        }
        _ => println!("published {count} entry to {stream} (id {last})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Put a task on sluice queue `queue` (what a job with source `queue:NAME` reads, and what a
/// plugin's `enqueue` writes): now, or after `delay_ms` (Redis's clock). `payload` `-` reads
/// it from stdin.
pub async fn enqueue(
    c: &Client,
    queue: &str,
    payload: &str,
    delay_ms: Option<u32>,
) -> anyhow::Result<ExitCode> {
    crate::model::check_name(queue).map_err(|m| anyhow::anyhow!("queue name {queue:?}: {m}"))?;
    let payload: Vec<u8> = if payload == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        bytes
    } else {
        payload.as_bytes().to_vec()
    };
    let stream = c.keys.queue(queue);
    let mut conn = c.conn().await?;
    match delay_ms {
        None | Some(0) => {
            let id: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(&payload)
                .query_async(&mut conn)
                .await?;
            println!("enqueued to queue {queue} (id {id})");
        }
        Some(delay) => {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
            let due = secs * 1000 + micros / 1000 + u64::from(delay);
            // A delayed task is `<origin>\n<payload>` → due ms; the origin keeps equal
            // payloads apart (see the key table).
            let mut member = format!(
                "cli/{}/{}-{}\n",
                super::who(),
                crate::model::now_ms(),
                std::process::id()
            )
            .into_bytes();
            member.extend_from_slice(&payload);
            let _: u64 = redis::cmd("ZADD")
                .arg(crate::store::Keys::delayed(&stream))
                .arg(due)
                .arg(member)
                .query_async(&mut conn)
                .await?;
            println!(
                "enqueued to queue {queue}, due in {delay} ms (at {})",
                super::time(due)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
