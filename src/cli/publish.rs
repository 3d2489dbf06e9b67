//! `sluice publish`: append entries to a stream, for trying things out.

use std::process::ExitCode;

use super::{Client, parse_fields};
use crate::model::Partitions;

/// Append `count` entries of `fields` (`name=value`; `{i}` in a value is the entry's index).
/// To partitioned streams (`orders:{0..15}`): each to the partition of `key`, else entry `i`
/// to partition `i` mod N.
pub async fn publish(
    c: &Client,
    stream: &str,
    fields: &[String],
    count: u64,
    key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let fields = parse_fields(fields)?;
    let mut conn = c.conn().await?;
    let Some(partitions) = Partitions::parse(stream) else {
        if key.is_some() {
            anyhow::bail!(
                "--key picks a partition: {stream:?} names no partitions (like `orders:{{0..15}}`)"
            );
        }
        append(&mut conn, stream, &fields, (0..count).collect()).await?;
        return Ok(ExitCode::SUCCESS);
    };
    let partitions = partitions.map_err(|m| anyhow::anyhow!("{stream:?}: {m}"))?;
    match key {
        Some(key) => {
            let target = partitions.of_key(key);
            append(&mut conn, &target, &fields, (0..count).collect()).await?;
        }
        None => {
            let n = u64::from(partitions.count());
            for (p, number) in partitions.numbers().enumerate() {
                let indices: Vec<u64> = (p as u64..count).step_by(n as usize).collect();
                if !indices.is_empty() {
                    append(&mut conn, &partitions.key(number), &fields, indices).await?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Append an entry of `fields` to `stream` for each of `indices` (what `{i}` becomes), and
/// say which ids they got.
async fn append(
    conn: &mut crate::store::Conn,
    stream: &str,
    fields: &[(String, String)],
    indices: Vec<u64>,
) -> anyhow::Result<()> {
    let templated = fields.iter().any(|(_, v)| v.contains("{i}"));
    let mut first: Option<String> = None;
    let mut last = String::new();
    for chunk in indices.chunks(1000) {
        let mut pipe = redis::pipe();
        for n in chunk {
            let cmd = pipe.cmd("XADD").arg(stream).arg("*");
            for (k, v) in fields {
                if templated {
                    cmd.arg(k).arg(v.replace("{i}", &n.to_string()));
                } else {
                    cmd.arg(k).arg(v);
                }
            }
        }
        let ids: Vec<String> = pipe.query_async(conn).await?;
        if first.is_none() {
            first = ids.first().cloned();
        }
        last = ids.last().cloned().unwrap_or_default();
    }
    let count = indices.len();
    match first {
        Some(first) if count > 1 => {
            println!("published {count} entries to {stream} (ids {first} … {last})")
        }
        _ => println!("published {count} entry to {stream} (id {last})"),
    }
    Ok(())
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
