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
